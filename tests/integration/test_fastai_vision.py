"""Trusted fastai vision exports (``--trust-pickle``) over HTTP: batched predictions equal
``learn.predict`` image by image, for uploaded files and base64 JSON, RGB and greyscale
learners; bad images get a clear 4xx; without the trust flag, an export carrying a payload is
refused before anything in it runs."""

import base64
import io
import os
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from ptserve.errors import ModelLoadError
from ptserve.loading import load_model
from ptserve.settings import Settings
from tests.conftest import NEEDS_FASTAI, NEEDS_TORCHVISION, serving
from tests.fastai_learners import VisionExport
from tests.images import png_header_only

pytest.importorskip("fastai", reason=NEEDS_FASTAI)
pytest.importorskip("torchvision", reason=NEEDS_TORCHVISION)

pytestmark = pytest.mark.anyio
TRUST = {"trust_pickle": True}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_files(images: list[Path]) -> dict[str, Any]:
    """Every image as its own ``file`` part of one multipart request."""
    return {"files": [("file", (p.name, p.read_bytes(), "image/png")) for p in images]}


def as_json(images: list[Path]) -> dict[str, Any]:
    """Every image as a base64 instance of one JSON request."""
    return {"json": {"instances": [{"image": b64(p.read_bytes())} for p in images]}}


def assert_equal_to_learn_predict(export: VisionExport, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    vocab = [str(v) for v in export.learn.dls.vocab]
    assert len(predictions) == len(export.images)
    for path, prediction in zip(export.images, predictions, strict=True):
        with export.learn.no_bar():
            _, index, probs = export.learn.predict(path)
        assert prediction["label"] == vocab[int(index)], path
        assert list(prediction["probabilities"]) == vocab
        assert list(prediction["probabilities"].values()) == pytest.approx(
            probs.tolist(), abs=1e-5
        ), path


@pytest.mark.parametrize("send", [as_files, as_json], ids=["multipart", "base64-json"])
async def test_batched_predictions_equal_learn_predict(
    rgb: VisionExport, send: Callable[[list[Path]], dict[str, Any]]
) -> None:
    assert len(rgb.images) == 8
    async with serving(rgb.path, **TRUST) as client:
        response = await client.post("/predict", **send(rgb.images))
        meta = (await client.get("/models/export")).json()
    assert_equal_to_learn_predict(rgb, response)
    assert (meta["format"], meta["handler"]) == ("fastai", "fastai vision learner")
    assert meta["signature"]["inputs"][0]["shape"] == [3, 32, 32]


async def test_more_images_than_the_learners_batch_size_get_a_prediction_each(
    rgb: VisionExport,
) -> None:
    count = rgb.learn.dls.valid.bs + len(rgb.images)
    images = [rgb.images[i % len(rgb.images)] for i in range(count)]
    async with serving(rgb.path, **TRUST) as client:
        response = await client.post("/predict", **as_json(images))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == count
    with rgb.learn.no_bar():
        _, index, _ = rgb.learn.predict(images[-1])
    assert predictions[-1]["label"] == str(rgb.learn.dls.vocab[int(index)])


async def test_a_grey_learner_with_a_lambda_labeller_serves(grey: VisionExport) -> None:
    async with serving(grey.path, **TRUST) as client:
        files = await client.post("/predict", **as_files(grey.images))
        instances = await client.post("/predict", **as_json(grey.images))
        meta = (await client.get("/models/export")).json()
    assert_equal_to_learn_predict(grey, files)
    assert_equal_to_learn_predict(grey, instances)
    assert (meta["format"], meta["handler"]) == ("fastai", "fastai vision learner")
    assert meta["signature"]["inputs"][0]["shape"] == [1, 28, 28]


def real(png: bytes) -> dict[str, Any]:
    return {"files": {"file": ("a.png", png, "image/png")}}


BOMB = png_header_only(200, 200)  # 40,000 pixels; the servers below accept at most 10,000
BAD_REQUESTS: list[tuple[str, Callable[[bytes], dict[str, Any]], int, str, str]] = [
    ("not-an-image", lambda png: {"files": {"file": ("a.png", b"hello")}}, 422, "invalid_image", "files[0]: not an image"),
    ("truncated", lambda png: {"files": [("f", ("a.png", png)), ("f", ("b.png", png[: len(png) // 2]))]}, 422, "invalid_image", "files[1]: cannot decode the image"),
    ("empty", lambda png: {"files": {"file": ("a.png", b"")}}, 422, "invalid_image", "files[0]: the image is empty"),
    ("bomb", lambda png: {"files": {"file": ("a.png", BOMB)}}, 413, "image_too_large", "files[0]: the image is 200x200 = 40000 pixels; at most 10000"),
    ("bomb-base64", lambda png: {"json": {"instances": [{"image": b64(BOMB)}]}}, 413, "image_too_large", "instances[0].image: the image is 200x200"),
    ("invalid-base64", lambda png: {"json": {"instances": [{"image": b64(png)}, {"image": "%%%"}]}}, 422, "invalid_image", "instances[1].image: not valid base64"),
    ("base64-not-an-image", lambda png: {"json": {"instances": [{"image": b64(b"hello")}]}}, 422, "invalid_image", "instances[0].image: not an image"),
    ("base64-truncated", lambda png: {"json": {"instances": [{"image": b64(png[: len(png) // 2])}]}}, 422, "invalid_image", "instances[0].image: cannot decode the image"),
    ("numbers", lambda png: {"json": {"instances": [{"image": b64(png)}, [0.5, 0.25, 1.0]]}}, 422, "invalid_input", 'instances[1]: expected {"image": "<base64>"}'),
    ("other-key", lambda png: {"json": {"instances": [{"picture": b64(png)}]}}, 422, "invalid_input", 'instances[0]: expected {"image": "<base64>"}'),
    ("extra-key", lambda png: {"json": {"instances": [{"image": b64(png), "size": 32}]}}, 422, "invalid_input", 'instances[0]: expected {"image": "<base64>"}'),
    ("image-not-a-string", lambda png: {"json": {"instances": [{"image": 7}]}}, 422, "invalid_input", "instances[0].image: expected a base64 string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "status", "code", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_images_get_a_clear_4xx_and_the_server_keeps_serving(
    rgb: VisionExport,
    build: Callable[[bytes], dict[str, Any]],
    status: int,
    code: str,
    message: str,
) -> None:
    png = rgb.images[0].read_bytes()
    async with serving(rgb.path, max_image_pixels=10_000, **TRUST) as client:
        response = await client.post("/predict", **build(png))
        after = await client.post("/predict", **real(png))
    body = response.json()
    assert (response.status_code, body["code"]) == (status, code), response.text
    assert message in body["error"], body
    assert after.status_code == 200, after.text
    (prediction,) = after.json()["predictions"]
    assert prediction["label"] in [str(v) for v in rgb.learn.dls.vocab]


@pytest.mark.parametrize(
    ("learner", "mode", "size"), [("rgb", "RGB", (32, 32)), ("grey", "L", (28, 28))]
)
async def test_the_openapi_example_is_a_base64_png_that_predicts(
    request: pytest.FixtureRequest, learner: str, mode: str, size: tuple[int, int]
) -> None:
    export: VisionExport = request.getfixturevalue(learner)
    async with serving(export.path, **TRUST) as client:
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        example = body["example"]
        response = await client.post("/predict", json=example)
    (instance,) = example["instances"]
    assert list(instance) == ["image"]
    with Image.open(io.BytesIO(base64.b64decode(instance["image"], validate=True))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", mode, size)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] in [str(v) for v in export.learn.dls.vocab]


class Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_a_vision_export_with_a_payload_is_refused_and_runs_nothing(
    rgb: VisionExport, tmp_path: Path
) -> None:
    import cloudpickle
    from fastai.learner import load_learner

    marker = tmp_path / "pwned"
    with warnings.catch_warnings():  # fastai warns that load_learner trusts the file: we do
        warnings.simplefilter("ignore")
        learn = load_learner(rgb.path)  # the Learner as learn.export() stored it
    path = tmp_path / "export.pkl"
    torch.save(
        {"learn": learn, "evil": Evil(marker)}, path, pickle_module=cloudpickle, pickle_protocol=2
    )
    with pytest.raises(ModelLoadError, match="refusing to load a fastai Learner export"):
        load_model(Settings(model_path=path))
    assert not marker.exists()
    # the payload is live: an unchecked load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


async def test_a_learner_read_from_a_frame_with_augmentations_serves(
    augmented: VisionExport,
) -> None:
    """from_df (a ColReader before the image is created), aug_transforms and Normalize: the
    augmentations are for training only, as in learn.predict."""
    async with serving(augmented.path, **TRUST) as client:
        response = await client.post("/predict", **as_files(augmented.images))
    assert_equal_to_learn_predict(augmented, response)
