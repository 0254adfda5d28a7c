"""Decoding images into samples: modes, sizes, normalisation, and refusing bad images."""

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ptserve.errors import ImageTooLarge, InvalidImage, ModelLoadError
from ptserve.images import ImageSpec, decode_base64, image_spec, to_batch, to_sample
from ptserve.settings import Settings
from ptserve.signature import Signature, TensorSpec
from tests.images import encoded, png_header_only


def spec_for(shape: tuple[int, ...], dtype: str = "float32", **settings: Any) -> ImageSpec:
    signature = Signature((TensorSpec("x", dtype, shape),))
    made = image_spec(signature, Settings(**settings))
    assert made is not None
    return made


def test_rgb_image_becomes_a_chw_sample_scaled_to_0_1() -> None:
    sample = to_sample(encoded((255, 0, 51), size=(20, 10)), spec_for((3, 8, 8)), "x")
    assert sample.shape == (3, 8, 8)
    assert sample.dtype == np.float32
    np.testing.assert_allclose(sample[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_mean_std_layout_and_grey_mode() -> None:
    spec = spec_for((4, 4, 1), image_layout="HWC", image_mean=[0.5], image_std=[0.25])
    sample = to_sample(encoded((255, 255, 255), fmt="JPEG"), spec, "x")
    assert spec.mode == "L"
    assert sample.shape == (4, 4, 1)
    np.testing.assert_allclose(sample, 2.0, atol=0.02)


def test_uint8_input_keeps_raw_pixels() -> None:
    sample = to_sample(encoded((10, 20, 30)), spec_for((3, 2, 2), dtype="uint8"), "x")
    assert sample.dtype == np.uint8
    assert sample[:, 0, 0].tolist() == [10, 20, 30]


def test_resize_then_centre_crop() -> None:
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))  # a white middle third
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    sample = to_sample(buffer.getvalue(), spec_for((1, 10, 10), image_resize=10), "x")
    assert sample.min() == 1.0  # the crop kept only the white middle
    squashed = to_sample(buffer.getvalue(), spec_for((1, 10, 10)), "x")
    assert squashed.min() == 0.0  # without image_resize the whole width is squeezed in


def test_batch_of_images() -> None:
    batch = to_batch([encoded(), encoded((0, 255, 0))], spec_for((3, 4, 4)), "files")
    assert batch.shape == (2, 3, 4, 4)
    assert batch[1, 1].mean() == 1.0


BAD = [
    (b"hello, not an image", InvalidImage, "x: not an image"),
    (b"", InvalidImage, "x: the image is empty"),
    (encoded(size=(64, 64))[:-40], InvalidImage, "x: cannot decode the image"),
    (encoded(size=(300, 300), fmt="JPEG")[:200], InvalidImage, "x: cannot decode the image"),
    (png_header_only(6000, 5000), ImageTooLarge, "6000x5000 = 30000000 pixels; at most 25000000"),
    (png_header_only(50000, 50000), ImageTooLarge, "decompression bomb"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "error", "message"), BAD)
def test_bad_images_are_refused_with_a_clear_message(
    data: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        to_sample(data, spec_for((3, 8, 8)), "x")


def test_pixel_limit_is_a_setting() -> None:
    with pytest.raises(ImageTooLarge, match="12x10 = 120 pixels; at most 100"):
        to_sample(encoded(), spec_for((3, 8, 8), max_image_pixels=100), "x")


def test_base64_with_or_without_a_data_url() -> None:
    png = encoded()
    assert decode_base64(base64.b64encode(png).decode(), "x") == png
    assert decode_base64("data:image/png;base64," + base64.b64encode(png).decode(), "x") == png
    with pytest.raises(InvalidImage, match=r"instances\[0\].image: not valid base64"):
        decode_base64("not base64!", "instances[0].image")


@pytest.mark.parametrize("shape", [(64,), (2, 8, 8), (3, -1, 8), (1, 8)])
def test_models_that_take_no_images(shape: tuple[int, ...]) -> None:
    signature = Signature((TensorSpec("x", "float32", shape),))
    assert image_spec(signature, Settings()) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image_mode": "L"}, "image_mode L has 1 channels, but the input 'x' has 3"),
        ({"image_mean": [0.1, 0.2]}, "image_mean: give 1 or 3 values, got 2"),
    ],
)
def test_image_settings_that_contradict_the_input(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        spec_for((3, 8, 8), **settings)
