"""A converted learner's decoding, in numpy: what its loss function's ``activation`` and
``decodes`` do in ``learn.predict``, from the manifest's plain data."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from ptserve.convert.manifest import Decoding
from ptserve.hooks import Arrays
from ptserve.learners.answers import learner_answers
from ptserve.postprocess import activate


@dataclass(frozen=True)
class LearnerDecoding:
    """Model outputs -> the answers ``learn.predict`` gives."""

    spec: Decoding

    def probabilities(self, outputs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The loss function's activation of a batch of outputs."""
        return activate(outputs.astype(np.float32, copy=False), self.spec.activation)

    def postprocess(self, outputs: Arrays) -> list[Any]:
        """``{"label", "probabilities"}``, ``{"labels", "probabilities"}`` (multi-label) or
        ``{"prediction": [...]}`` per sample."""
        probs = self.probabilities(outputs[0])
        if self.spec.decode == "argmax":
            decoded = probs.argmax(axis=-1)
        elif self.spec.decode == "threshold":
            decoded = probs > self.spec.threshold
        else:
            decoded = probs
        return learner_answers(self.spec.vocab, probs, decoded)
