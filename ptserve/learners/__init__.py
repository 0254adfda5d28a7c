"""Serve trusted fastai Learners (``learn.export()`` loaded by fastai's ``load_learner`` under
``--trust-pickle``): tabular rows or images in, what ``learn.predict`` gives out, batched.
(Converted folders, ``ptserve/convert/``, serve the same requests and answers without fastai.)

The Learner's own pieces do the work: ``learn.dls.test_dl`` turns a request's instances into
model inputs with the training-time transforms (the preprocess hook, off the event loop),
``learn.model`` runs in ptserve's batcher like any model, and ``learn.loss_func``'s
``activation`` and ``decodes`` turn its outputs into probabilities and a class (the postprocess
hook). fastai is imported only when a fastai export is loaded.
"""

from typing import Any

import torch

from ptserve.errors import ModelLoadError
from ptserve.hooks import Arrays, Hooks
from ptserve.learners.answers import learner_answers
from ptserve.learners.tabular import TabularLearner
from ptserve.learners.vision import VisionLearner
from ptserve.settings import Settings
from ptserve.signature import Signature


def learner_parts(
    learn: Any, source: str, settings: Settings
) -> tuple[torch.nn.Module, Signature, Hooks]:
    """The model, its signature and its hooks for a Learner; ModelLoadError for a kind of
    Learner ptserve does not serve."""
    view: TabularLearner | VisionLearner | None = TabularLearner.of(learn)
    kind = "tabular"
    if view is None:
        view, kind = VisionLearner.of(learn, settings.max_image_pixels), "vision"
    if view is None:
        raise ModelLoadError(
            f"{source}: a fastai {type(learn).__name__} with {type(learn.dls).__name__}; "
            "ptserve serves fastai tabular and vision learners"
        )
    outputs = LearnerOutputs(learn)
    hooks = Hooks(
        f"fastai {kind} learner", view.preprocess, outputs.postprocess, view.example,
        files=kind == "vision",
    )  # fmt: skip
    return learn.model, view.signature, hooks


class LearnerOutputs:
    """Decodes a Learner's model outputs as ``learn.predict`` does."""

    def __init__(self, learn: Any) -> None:
        self.loss = learn.loss_func
        vocab = getattr(learn.dls, "vocab", None)
        self.vocab = [str(v) for v in vocab] if vocab is not None else None

    def postprocess(self, outputs: Arrays) -> list[Any]:
        """The model's outputs -> ``{"label", "probabilities"}`` per sample (classifiers),
        ``{"labels", "probabilities"}`` (multi-label), or ``{"prediction": [...]}``."""
        raw = torch.from_numpy(outputs[0])
        probs = getattr(self.loss, "activation", lambda x: x)(raw)
        decoded = getattr(self.loss, "decodes", lambda x: x)(probs)
        return learner_answers(self.vocab, probs.numpy(), decoded.numpy())
