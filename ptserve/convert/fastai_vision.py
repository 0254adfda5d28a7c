"""A fastai vision Learner's preprocessing as plain data, and images to check the conversion on
(in the conversion's child process: fastai is loaded here).

What ``learn.predict`` does to an image is the validation DataLoader's pipelines (test sets use
the validation split): item transforms, then batch transforms. Each transform that runs there
must be one this module can describe as data, or one that is the identity there; anything
else fails the conversion, named.
"""

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ptserve.convert import ConversionError
from ptserve.convert.manifest import Normalize, Resize, VisionPreprocessing, type_name

VALIDATION = 1
# Image sizes and modes to check a conversion on: square, wide, tall, tiny, odd; every mode a
# request may upload, converted to the learner's.
SAMPLE_IMAGES = [
    ((32, 32), "RGB"), ((48, 32), "RGB"), ((32, 48), "L"), ((57, 23), "RGBA"), ((23, 57), "RGB"),
    ((64, 64), "P"), ((20, 20), "RGB"), ((100, 37), "L"), ((37, 100), "RGB"), ((7, 5), "RGB"),
    ((128, 96), "RGB"), ((33, 33), "LA"),
]  # fmt: skip


def vision_preprocessing(learn: Any) -> VisionPreprocessing:
    """The validation pipelines of ``learn`` as data; ConversionError naming a transform it
    cannot represent."""
    from ptserve.learners.vision import image_kind

    kind = image_kind(learn)
    if kind is None:
        raise ConversionError("a fastai Learner whose inputs are neither tabular rows nor images")
    _, mode = kind
    loader = learn.dls.valid
    resize = _item_resize(loader)
    for transform in _in_validation(loader.before_batch.fs):
        raise ConversionError(f"the batch transform {type_name(transform)} is not supported")
    divide, normalize = _batch_steps(loader, resize, 3 if mode == "RGB" else 1)
    return VisionPreprocessing.model_validate(
        {"kind": "vision", "mode": mode, "resize": resize, "divide": divide, "normalize": normalize}
    )


def _item_resize(loader: Any) -> Resize:
    resize = None
    for transform in _in_validation(loader.after_item.fs):
        name = type_name(transform)
        if name == "fastai.vision.augment.Resize" and resize is None:
            width, height = transform.size
            resize = Resize.model_validate(
                {
                    "height": int(height),
                    "width": int(width),
                    "method": str(transform.method),
                    "pad_mode": str(transform.pad_mode),
                    "resample": Image.Resampling(transform.mode).name.lower(),
                }
            )
        elif name != "fastai.data.transforms.ToTensor":
            raise ConversionError(
                f"the item transform {name} is not supported (supported: Resize, ToTensor)"
            )
    if resize is None:
        raise ConversionError(
            "the learner has no Resize item transform: ptserve convert needs a fixed image size"
        )
    return resize


def _batch_steps(loader: Any, resize: Resize, channels: int) -> tuple[float, Normalize | None]:
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU

    size = (resize.height, resize.width)
    divide, normalize = None, None
    for transform in loader.after_batch.fs:
        name = type_name(transform)
        if isinstance(transform, AffineCoordTfm):  # in validation: the identity matrix
            if _size(transform.size, size) != size:
                raise ConversionError(f"the batch transform {name} resizes to {transform.size}")
        elif isinstance(transform, RandomResizedCropGPU):
            if _validation_crop(transform, size) != (size, size):
                raise ConversionError(
                    f"the batch transform {name} crops or resizes in validation "
                    f"(valid_scale {transform.valid_scale}, size {transform.size})"
                )
        elif transform.split_idx == 0:  # training only (lighting and such)
            continue
        elif name == "fastai.data.transforms.IntToFloatTensor" and divide is None:
            divide = float(transform.div)
        elif name == "fastai.data.transforms.Normalize" and divide is not None:
            normalize = _normalize(transform, channels)
        else:
            raise ConversionError(
                f"the batch transform {name} is not supported (supported: IntToFloatTensor, "
                "Normalize, and aug_transforms' training-only augmentations)"
            )
    if divide is None:
        raise ConversionError("the learner has no IntToFloatTensor batch transform")
    return divide, normalize


def _size(size: Any, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _validation_crop(
    transform: Any, size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The crop ``RandomResizedCropGPU`` takes of an image of ``size`` in validation, and the
    size it resizes that crop to (its own ``before_call``, for the validation split)."""
    h, w = size
    low, high = transform.ratio
    if w / h < low:
        crop = (int(w / low), w)
    elif w / h > high:
        crop = (h, int(h * high))
    else:
        crop = (h, w)
    scaled = (int(crop[0] * transform.valid_scale), int(crop[1] * transform.valid_scale))
    return scaled, _size(transform.size, size)


def _normalize(transform: Any, channels: int) -> Normalize:
    if transform.mean is None or transform.std is None or tuple(transform.axes) != (0, 2, 3):
        raise ConversionError("a Normalize batch transform without per-channel statistics")
    stats = []
    for values in (transform.mean, transform.std):
        flat = [float(v) for v in np.asarray(values.cpu(), dtype=np.float64).reshape(-1)]
        if len(flat) not in (1, channels):
            raise ConversionError(
                f"a Normalize batch transform with {len(flat)} values for {channels} channel(s)"
            )
        stats.append(flat * (channels // len(flat)))
    return Normalize(means=stats[0], stds=stats[1])


def _in_validation(transforms: Any) -> list[Any]:
    return [t for t in transforms if getattr(t, "split_idx", None) in (None, VALIDATION)]


def sample_images(folder: Path) -> list[str]:
    """PNGs to check the conversion on (an export keeps no training images), written to
    ``folder``: noise over gradients, in several sizes and modes; their file names."""
    rng = np.random.default_rng(0)
    names = []
    for i, ((width, height), mode) in enumerate(SAMPLE_IMAGES):
        ramp = np.linspace(0, 255, width)[np.newaxis, :, np.newaxis]
        pixels = np.clip(ramp + rng.normal(0, 60, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB").convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        names.append(f"{i}.png")
        (folder / names[-1]).write_bytes(buffer.getvalue())
    return names
