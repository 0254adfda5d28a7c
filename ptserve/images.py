"""Images in, model-ready samples out: decode with Pillow, refuse bombs, resize, crop, normalise.

An image model is one whose single input has a fixed per-sample shape of 1 or 3 channels by
height by width (``image_layout`` says whether channels come first or last). Decoding is CPU
work: callers run it off the event loop, per request, before batching. Each image is admitted
against the service's ``ImageBudget`` from its header, before it is decoded, and holds its
share until it has been scaled down to the input's size.
"""

import base64
import binascii
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ptserve.errors import ImageTooLarge, InvalidImage, ModelLoadError, ServeError, one_line
from ptserve.image_budget import ImageBudget, default_pixels
from ptserve.settings import Settings
from ptserve.signature import Signature, numpy_dtype

log = logging.getLogger("ptserve")
# Only the common formats: each decoder Pillow may pick is attack surface.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ORIENTATION = 0x0112  # the EXIF tag exif_transpose reads


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes one sample of the model's image input."""

    mode: str
    height: int
    width: int
    layout: str
    dtype: str
    resize: int | None
    mean: np.ndarray[Any, Any]
    std: np.ndarray[Any, Any]
    max_pixels: int
    budget: ImageBudget

    def describe(self) -> dict[str, Any]:
        """The image settings, for ``GET /models/{name}`` and the try-it page."""
        return {
            "mode": self.mode,
            "size": [self.height, self.width],
            "layout": self.layout,
            "resize": self.resize,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "max_pixels": self.max_pixels,
            "budget_pixels": self.budget.pixels,
        }


def image_spec(signature: Signature, settings: Settings) -> ImageSpec | None:
    """The image preprocessing for ``signature``, or None when the model does not take images.

    Raises ModelLoadError when the image settings contradict the input's shape.
    """
    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 3:
        return None
    spec = signature.inputs[0]
    if settings.image_layout == "CHW":
        channels, height, width = spec.shape
    else:
        height, width, channels = spec.shape
    if channels not in (1, 3) or height <= 0 or width <= 0:
        return None
    mode = settings.image_mode or ("RGB" if channels == 3 else "L")
    if (mode == "RGB") != (channels == 3):
        raise ModelLoadError(
            f"image_mode {mode} has {3 if mode == 'RGB' else 1} channels, but the input "
            f"'{spec.name}' has {channels} ({settings.image_layout} {list(spec.shape)})"
        )
    stats = {}
    for name, values in (("image_mean", settings.image_mean), ("image_std", settings.image_std)):
        if len(values) not in (1, channels):
            raise ModelLoadError(f"{name}: give 1 or {channels} values, got {len(values)}")
        stats[name] = np.asarray(values, dtype=np.float32)
    return ImageSpec(
        mode, height, width, settings.image_layout, spec.dtype, settings.image_resize,
        stats["image_mean"], stats["image_std"], settings.max_image_pixels,
        image_budget(settings),
    )  # fmt: skip


def image_budget(settings: Settings) -> ImageBudget:
    """A new budget of decoded pixels in flight (``image_budget_pixels``, or the default
    sized from the machine's memory); a request waits for room up to its queue deadline."""
    pixels = settings.image_budget_pixels or default_pixels(
        settings.workers, settings.max_image_pixels
    )
    # Pillow refuses images over twice its own MAX_IMAGE_PIXELS in Image.open, before
    # ptserve's check, with its own wording: let ptserve's limit be the one that applies.
    if Image.MAX_IMAGE_PIXELS is not None and settings.max_image_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    log.info("images: at most %d decoded pixels in flight", pixels)
    return ImageBudget(pixels, settings.timeout_ms / 1000)


def decode_base64(text: str, where: str) -> bytes:
    """The bytes of a base64 string (a ``data:image/...;base64,`` URL prefix is allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{where}: not valid base64") from None


def to_sample(data: bytes, spec: ImageSpec, where: str) -> np.ndarray[Any, Any]:
    """One encoded image -> one sample of the input's shape and dtype; 4xx when it is bad,
    503 when decoding it would exceed the budget for longer than the request may wait."""
    opened = _opened(data, spec.max_pixels, where)
    with spec.budget.admit(opened.width * opened.height, where):
        try:
            return _to_array(_fit(_decoded(opened, spec.mode, where, upright=True), spec), spec)
        finally:
            opened.close()  # frees the full-size pixels now, while they are still admitted


def open_image(
    data: bytes, mode: str, max_pixels: int, where: str, upright: bool = True
) -> Image.Image:
    """Decode one image into ``mode`` ("RGB" or "L"), turned upright by its EXIF orientation
    unless ``upright`` is False; 4xx when it is empty, not an image, truncated or too large.

    Not admitted against a budget: the caller holds the full-size image.
    """
    return _decoded(_opened(data, max_pixels, where), mode, where, upright)


def _opened(data: bytes, max_pixels: int, where: str) -> Image.Image:
    """The image with its header read and its size checked; nothing decoded yet."""
    if not data:
        raise InvalidImage(f"{where}: the image is empty")
    try:
        opened = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # only past Pillow's own limit, far above ours
        raise _too_large(where, None, max_pixels) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{where}: not an image, or not one of {', '.join(FORMATS)}") from None
    except Exception as exc:  # Pillow's header parsers raise many kinds for corrupt data
        raise InvalidImage(f"{where}: cannot decode the image ({one_line(exc)})") from None
    width, height = opened.size
    if width * height > max_pixels:
        raise _too_large(where, (width, height), max_pixels)
    return opened


def _decoded(opened: Image.Image, mode: str, where: str, upright: bool) -> Image.Image:
    """Decode an opened image into ``mode``, copying it only when it must change."""
    try:
        opened.load()  # truncated data raises here (LOAD_TRUNCATED_IMAGES stays False)
        image = opened
        if upright and opened.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(opened)
        return image if image.mode == mode else image.convert(mode)
    except ServeError:
        raise
    except Exception as exc:  # Pillow's decoders raise many kinds for corrupt data
        raise InvalidImage(f"{where}: cannot decode the image ({one_line(exc)})") from None


def to_batch(images: Sequence[bytes], spec: ImageSpec, where: str) -> np.ndarray[Any, Any]:
    """Several encoded images -> one batched array (``where[i]`` names a bad one)."""
    return np.stack([to_sample(data, spec, f"{where}[{i}]") for i, data in enumerate(images)])


def _too_large(where: str, size: tuple[int, int] | None, limit: int) -> ImageTooLarge:
    stated = f"is {size[0]}x{size[1]} = {size[0] * size[1]}" if size else f"has over {limit}"
    return ImageTooLarge(
        f"{where}: the image {stated} pixels; at most {limit} are accepted (the "
        "max_image_pixels setting)"
    )


def _fit(image: Image.Image, spec: ImageSpec) -> Image.Image:
    if spec.resize is None:
        return image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    scale = spec.resize / min(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - spec.width) // 2, (height - spec.height) // 2
    return image.crop((left, top, left + spec.width, top + spec.height))


def _to_array(image: Image.Image, spec: ImageSpec) -> np.ndarray[Any, Any]:
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    dtype = numpy_dtype(spec.dtype)
    if dtype.kind == "f":
        pixels = (pixels.astype(np.float32) / 255.0 - spec.mean) / spec.std
    if spec.layout == "CHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=dtype)
