"""Decoding images into samples: modes, sizes, normalisation, and refusing bad images."""

import base64
import io
import re
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ptserve.errors import ImageTooLarge, InvalidImage, ModelLoadError, Overloaded
from ptserve.image_budget import BYTES_PER_PIXEL, ImageBudget, default_pixels, memory_bytes
from ptserve.images import ImageSpec, decode_base64, image_spec, to_batch, to_sample
from ptserve.settings import Settings
from ptserve.signature import Signature, TensorSpec
from tests.images import encoded, large_png, png_header_only


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
    # past Pillow's own limit, which Pillow checks first: still ptserve's message
    (png_header_only(50000, 50000), ImageTooLarge, "x: the image has over 25000000 pixels; at most 25000000 are accepted (the max_image_pixels setting)"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "error", "message"), BAD)
def test_bad_images_are_refused_with_a_clear_message(
    data: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
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


# The budget of decoded pixels in flight


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # then refused
def test_an_image_over_pillows_own_limit_gets_ptserves_limit_and_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    spec = spec_for((3, 8, 8), max_image_pixels=10 * Image.MAX_IMAGE_PIXELS)
    assert spec.max_pixels == Image.MAX_IMAGE_PIXELS  # Pillow's check no longer comes first
    # over ptserve's limit, under twice Pillow's (which Pillow would refuse in its own words)
    with pytest.raises(ImageTooLarge, match="30000x30000 = 900000000 pixels; at most"):
        to_sample(png_header_only(30000, 30000), spec, "x")


def test_each_service_gets_its_own_budget() -> None:
    one, two = spec_for((3, 8, 8)), spec_for((3, 8, 8))
    assert one.budget is not two.budget
    assert one.budget.pixels >= one.max_pixels
    assert spec_for((3, 8, 8), image_budget_pixels=1234).budget.pixels == 1234


def test_the_default_budget_is_a_share_of_memory_per_worker() -> None:
    share = memory_bytes() // 4 // BYTES_PER_PIXEL
    assert default_pixels(1, 1) == share
    assert default_pixels(4, 1) == share // 4
    assert default_pixels(4, 10**15) == 10**15  # never below one largest image


def test_a_full_budget_refuses_with_503_and_retry_after() -> None:
    budget = ImageBudget(100, wait_s=0)
    with budget.admit(80, "files[0]"), pytest.raises(Overloaded) as err, budget.admit(30, "y"):
        pass
    assert err.value.status_code == 503
    assert err.value.headers == {"Retry-After": "1"}
    assert "y: the server is decoding" in err.value.message
    assert budget.in_flight == 0
    with budget.admit(100, "files[2]"):  # the whole budget, once free
        assert budget.in_flight == 100


def test_a_request_waits_for_room_and_then_decodes() -> None:
    budget = ImageBudget(100, wait_s=600)  # a hang guard: the release below comes first
    admitted = threading.Event()

    def second() -> None:
        with budget.admit(60, "files[1]"):
            admitted.set()

    with budget.admit(60, "files[0]"):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not admitted.is_set()  # it cannot be admitted while the first is held
    waiter.join(timeout=600)
    assert admitted.is_set()
    assert budget.in_flight == 0


def test_an_image_larger_than_the_budget_is_decoded_alone() -> None:
    budget = ImageBudget(10, wait_s=0)
    with budget.admit(50, "x"):
        assert budget.in_flight == 50
        with pytest.raises(Overloaded), budget.admit(1, "y"):
            pass


def test_a_sample_holds_the_budget_only_while_it_decodes() -> None:
    spec = spec_for((3, 8, 8), image_budget_pixels=10**6)
    sample = to_sample(large_png(500, 400), spec, "x")
    assert sample.shape == (3, 8, 8)
    np.testing.assert_allclose(sample[:, 0, 0], [200 / 255, 30 / 255, 60 / 255], atol=1e-6)
    assert spec.budget.in_flight == 0
