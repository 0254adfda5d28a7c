"""A fastai vision Learner: encoded images in, the learner's own transforms applied.

Images are decoded by ptserve's guarded decoder (``ptserve.images``: common formats only, the
pixel limit checked before decoding, truncated files refused), converted to the mode of the
learner's image type (``PILImage``: RGB, ``PILImageBW``: L), and put through the validation
DataLoader's own steps (item transforms such as Resize, collation, batch transforms such as
IntToFloatTensor and Normalize), as ``learn.predict``'s ``test_dl`` does, without building a
DataLoader per request (a third of the cost for one image).
"""

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ptserve.errors import ModelLoadError
from ptserve.hooks import Arrays
from ptserve.learners.requests import grey_image, read_image
from ptserve.signature import Signature, spec_from_tensor

# Two probe sizes: a dimension that differs between them depends on the request's image.
PROBE_SIZES = ((64, 48), (40, 72))


@dataclass
class VisionLearner:
    """Decodes images for a vision Learner and turns them into its model's input batch."""

    learn: Any
    max_pixels: int
    image_type: type = field(init=False)
    mode: str = field(init=False)
    x_tfms: Any = field(init=False)
    signature: Signature = field(init=False)
    lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    @classmethod
    def of(cls, learn: Any, max_pixels: int) -> "VisionLearner | None":
        """The vision view of ``learn``, or None when its inputs are not images."""
        kind = image_kind(learn)
        if kind is None:
            return None
        from fastai.data.core import test_set

        vision = cls(learn, max_pixels)
        vision.image_type, vision.mode = kind
        # the input pipeline test_dl applies to images of that type (reading and creating skipped)
        test = test_set(learn.dls.valid_ds, [vision._blank((2, 2))])
        (tfms,) = test.tls
        vision.x_tfms = tfms.tfms
        # and, as iterating test_dl does (TfmdDL.before_iter), the DataLoader's pipelines in the
        # test set's split: augmentations meant for training stay off
        for name in ("after_item", "before_batch", "after_batch"):
            getattr(learn.dls.valid, name).split_idx = test.split_idx
        vision.signature = vision.probe()
        return vision

    def probe(self) -> Signature:
        """The model input for images of two sizes; dims that differ are variable (-1)."""
        batches = [self.batch([self._blank(size)]) for size in PROBE_SIZES]
        shapes = [b.shape[1:] for b in batches]
        variable = frozenset(i + 1 for i, (a, b) in enumerate(zip(*shapes, strict=True)) if a != b)
        spec = spec_from_tensor("image", torch.from_numpy(batches[0]), variable)
        return Signature((spec,), source="fastai vision learner", example=(batches[0][0],))

    @property
    def example(self) -> dict[str, str]:
        """A mid-grey PNG of the learner's input size (64x64 when the size varies)."""
        height, width = (d if d > 0 else 64 for d in self.signature.inputs[0].shape[-2:])
        return grey_image(self.mode, height, width)

    def preprocess(self, instances: list[Any]) -> Arrays:
        """Uploaded files (bytes) or ``{"image": "<base64>"}`` objects -> the model's batch."""
        images = [self._image(x, i) for i, x in enumerate(instances)]
        return [self.batch(images)]

    def batch(self, images: list[Any]) -> np.ndarray[Any, Any]:
        """Images of the learner's type -> its model input: what iterating ``test_dl(images)``
        does, item by item then for the batch, with the validation DataLoader's pipelines."""
        loader = self.learn.dls.valid
        with self.lock:  # fastai's transforms keep per-call state: one caller at a time
            items = [loader.after_item((self.x_tfms(image),)) for image in images]
            (batch,) = loader.after_batch(loader.create_batch(loader.before_batch(items)))[:1]
        return np.ascontiguousarray(torch.as_tensor(batch).detach().cpu().numpy())

    def _image(self, instance: Any, index: int) -> Any:
        return self.image_type(read_image(instance, index, self.mode, self.max_pixels))

    def _blank(self, size: tuple[int, int]) -> Any:
        return self.image_type(Image.new(self.mode, size))


def image_kind(learn: Any) -> tuple[type, str] | None:
    """The image type a learner's input pipeline creates, and its mode: what ``test_dl`` makes
    of a decoded image (after the steps that read a path or a column); None when its inputs are
    not images."""
    datasets = getattr(learn.dls, "valid_ds", None)
    if not hasattr(datasets, "tls"):  # tabular learners keep a TabularPandas
        return None
    from fastai.data.core import test_set

    blank = Image.new("RGB", (2, 2))
    try:
        (inputs,) = test_set(datasets, [blank]).tls
        created = inputs.tfms(blank)
    except Exception:  # not an image pipeline (or several inputs)
        return None
    if not isinstance(created, Image.Image):
        return None
    mode = getattr(type(created), "_open_args", {}).get("mode", created.mode)
    if mode not in ("RGB", "L"):
        raise ModelLoadError(f"a fastai vision learner with {mode} images is not supported")
    return type(created), mode
