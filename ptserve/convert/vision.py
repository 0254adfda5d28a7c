"""A converted vision learner's preprocessing, in Pillow and numpy: what fastai's validation
pipeline does to an image (``Resize``, ``ToTensor``, ``IntToFloatTensor``, ``Normalize``), from
the manifest's plain data."""

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ptserve.convert.manifest import Resize, VisionPreprocessing
from ptserve.hooks import Arrays
from ptserve.learners.requests import grey_image, read_image

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
NUMPY_PAD = {"zeros": "constant", "border": "edge", "reflection": "reflect"}


@dataclass
class VisionImages:
    """Uploaded files or ``{"image": "<base64>"}`` instances -> the model's image batch."""

    spec: VisionPreprocessing
    max_pixels: int

    @property
    def example(self) -> dict[str, str]:
        """A mid-grey PNG of the learner's input size."""
        return grey_image(self.spec.mode, self.spec.resize.height, self.spec.resize.width)

    def preprocess(self, instances: list[Any]) -> Arrays:
        """Decode, resize, scale and normalise each image; 4xx naming a bad one."""
        images = [
            read_image(x, i, self.spec.mode, self.max_pixels) for i, x in enumerate(instances)
        ]
        return [np.stack([self.sample(image) for image in images])]

    def sample(self, image: Image.Image) -> np.ndarray[Any, Any]:
        """One decoded image -> one ``[C, H, W]`` float32 sample."""
        pixels = np.asarray(resize(image, self.spec.resize))
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis]
        sample = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(self.spec.divide)
        norm = self.spec.normalize
        if norm is not None:
            mean = np.asarray(norm.means, dtype=np.float32).reshape(-1, 1, 1)
            std = np.asarray(norm.stds, dtype=np.float32).reshape(-1, 1, 1)
            sample = (sample - mean) / std
        return np.ascontiguousarray(sample, dtype=np.float32)


def resize(image: Image.Image, spec: Resize) -> Image.Image:
    """fastai's ``Resize`` in the validation set: squish to the size, or crop (``crop``) or pad
    (``pad``) the centre to the size's aspect ratio first, then resize."""
    width, height = image.size
    size = (spec.width, spec.height)
    resample = RESAMPLE[spec.resample]
    if spec.method == "squish":
        return image.resize(size, resample)
    # the largest (crop) or smallest (pad) region of the size's aspect ratio, centred
    ratio_w, ratio_h = width / spec.width, height / spec.height
    scale = ratio_w if (ratio_w < ratio_h) == (spec.method == "crop") else ratio_h
    region = (int(scale * spec.width), int(scale * spec.height))
    top_left = (int(0.5 * (width - region[0])), int(0.5 * (height - region[1])))
    return _crop_pad(image, region, top_left, spec.pad_mode).resize(size, resample)


def _crop_pad(
    image: Image.Image, region: tuple[int, int], top_left: tuple[int, int], pad_mode: str
) -> Image.Image:
    """fastai's ``_do_crop_pad`` on a PIL image: crop what lies inside, pad what lies outside
    (torchvision's ``pad``: numpy's constant, edge or reflect)."""
    size = image.size
    ends = [t + r for t, r in zip(top_left, region, strict=True)]
    if any(t >= 0 for t in top_left) or any(e <= s for e, s in zip(ends, size, strict=True)):
        left, top = (max(t, 0) for t in top_left)
        image = image.crop((left, top, min(ends[0], size[0]), min(ends[1], size[1])))
    if any(t < 0 for t in top_left) or any(e >= s for e, s in zip(ends, size, strict=True)):
        before = [max(-t, 0) for t in top_left]
        after = [max(r - s + t, 0) for r, s, t in zip(region, size, top_left, strict=True)]
        pixels = np.asarray(image)
        widths = [(before[1], after[1]), (before[0], after[0])] + [(0, 0)] * (pixels.ndim - 2)
        image = Image.fromarray(np.pad(pixels, widths, mode=NUMPY_PAD[pad_mode]), image.mode)  # type: ignore[call-overload]
    return image
