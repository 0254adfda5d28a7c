"""Image models over HTTP: multipart uploads, base64 JSON, bad images, sigmoid and threshold."""

import base64
from pathlib import Path

import numpy as np
import pytest

from ptserve.settings import EXAMPLE_MODEL
from tests.conftest import serving
from tests.images import encoded, png_header_only, save_colour_model

pytestmark = pytest.mark.anyio
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_multipart_uploads_are_classified_in_order(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    files = [("file", (f"{i}.png", encoded(c), "image/png")) for i, c in enumerate([BLUE, RED])]
    async with serving(model, input_shape=[3, 8, 8]) as client:
        response = await client.post("/predict", files=files, data={"top_k": "2"})
        jpeg = await client.post("/predict", files={"image": ("g.jpg", encoded(GREEN, fmt="JPEG"))})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["blue", "red"]
    softmax = np.exp([0, 0, 1]) / np.exp([0, 0, 1]).sum()
    assert predictions[0]["score"] == pytest.approx(softmax.max(), rel=1e-5)
    assert [t["label"] for t in predictions[1]["top_k"]] == ["red", "green"]
    assert jpeg.json()["predictions"][0]["label"] == "green"


async def test_base64_json_instances_mix_with_raw_values(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    raw = np.zeros((3, 8, 8))
    raw[1] = 1.0
    instances = [
        {"image": b64(encoded(BLUE, size=(40, 30)))},
        {"image": "data:image/png;base64," + b64(encoded(RED))},
        raw.tolist(),
    ]
    async with serving(model, input_shape=[3, 8, 8]) as client:
        response = await client.post("/predict", json={"instances": instances})
        meta = (await client.get("/models/colours")).json()
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == ["blue", "red", "green"]
    assert meta["images"]["mode"] == "RGB"
    assert meta["images"]["size"] == [8, 8]


BAD_UPLOADS = [
    ({"files": {"file": ("a.png", b"definitely not an image")}}, 422, "invalid_image", "files[0]: not an image"),
    ({"files": {"file": ("a.png", encoded(size=(64, 64))[:-40])}}, 422, "invalid_image", "files[0]: cannot decode the image"),
    ({"files": {"file": ("a.png", png_header_only(6000, 5000))}}, 413, "image_too_large", "files[0]: the image is 6000x5000"),
    ({"files": [("f", ("a.png", encoded())), ("f", ("b.png", b""))]}, 422, "invalid_image", "files[1]: the image is empty"),
    ({"files": {"file": ("a.png", encoded())}, "data": {"colour": "red"}}, 422, "invalid_input", "colour: unknown form field"),
    ({"files": {"file": ("a.png", encoded())}, "data": {"top_k": "zero"}}, 422, "invalid_input", "top_k: expected a positive integer"),
    ({"content": b'--x\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--x--\r\n', "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422, "invalid_input", "the form has no file"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_form", "malformed multipart body"),
    ({"json": {"instances": [{"image": "%%%"}]}}, 422, "invalid_image", "instances[0].image: not valid base64"),
    ({"json": {"instances": [{"image": b64(b"GIF89a nope")}]}}, 422, "invalid_image", "instances[0].image: not an image"),
    ({"json": {"instances": [{"picture": "x"}]}}, 422, "invalid_input", "instances[0].picture: unknown field"),
    ({"json": {"instances": [[[[0] * 8] * 8]]}}, 422, "invalid_input", "instances[0]: expected 3 values, got 1"),
    ({"json": {"instances": [{"image": b64(png_header_only(50000, 50000))}]}}, 413, "image_too_large", "instances[0].image: the image has over 25000000 pixels; at most 25000000 are accepted"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "status", "code", "message"), BAD_UPLOADS)
async def test_bad_images_get_a_clear_4xx(
    tmp_path: Path, kwargs: dict[str, object], status: int, code: str, message: str
) -> None:
    model = save_colour_model(tmp_path)
    async with serving(model, input_shape=[3, 8, 8], max_instances=4) as client:
        response = await client.post("/predict", **kwargs)  # type: ignore[arg-type]
        after = await client.post("/predict", files={"file": ("a.png", encoded(BLUE))})
    body = response.json()
    assert (response.status_code, body["code"]) == (status, code), response.text
    # pydantic versions order several problems differently: look in the message and the detail
    problems = [body["error"], *(f"{d['loc']}: {d['msg']}" for d in body.get("detail", []))]
    assert any(message in problem for problem in problems), body
    assert after.json()["predictions"][0]["label"] == "blue"


async def test_too_many_files_are_refused(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    files = [("file", (f"{i}.png", encoded())) for i in range(3)]
    async with serving(model, input_shape=[3, 8, 8], max_instances=2) as client:
        response = await client.post("/predict", files=files)
    assert response.status_code == 400
    assert "Too many files" in response.json()["error"]


async def test_a_model_without_images_refuses_uploads() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        response = await client.post("/predict", files={"file": ("a.png", encoded())})
    assert response.status_code == 415
    assert "does not take file uploads" in response.json()["error"]


async def test_sigmoid_and_threshold_give_multi_label_predictions(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    settings = {"output_activation": "sigmoid", "threshold": 0.6}
    async with serving(model, input_shape=[3, 8, 8], **settings) as client:
        response = await client.post("/predict", files={"file": ("y.png", encoded(YELLOW))})
        meta = (await client.get("/models/colours")).json()
    (prediction,) = response.json()["predictions"]
    assert prediction["labels"] == ["red", "green"]  # sigmoid(1) = 0.73 >= 0.6 > sigmoid(0)
    assert prediction["score"] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)
    assert (meta["output_activation"], meta["threshold"]) == ("sigmoid", 0.6)


async def test_no_activation_scores_are_the_outputs(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    async with serving(
        model, input_shape=[3, 8, 8], output_activation="none", threshold=0.5
    ) as client:
        response = await client.post("/predict", files={"file": ("b.png", encoded(BLUE))})
    (prediction,) = response.json()["predictions"]
    assert (prediction["label"], prediction["score"], prediction["labels"]) == (
        "blue",
        1.0,
        ["blue"],
    )


async def test_images_past_the_decoding_budget_get_503_with_retry_after(tmp_path: Path) -> None:
    from tests.conftest import serving_app

    model = save_colour_model(tmp_path)
    settings = {"input_shape": [3, 8, 8], "image_budget_pixels": 1000}
    async with serving_app(model, **settings) as (app, client):
        budget = app.state.runtime.models.get(None).service.images.budget
        budget.wait_s = 0  # refuse at once rather than wait up to timeout_ms
        with budget.admit(budget.pixels, "another request"):  # the budget is spent
            upload = await client.post("/predict", files={"file": ("a.png", encoded(RED))})
            as_json = await client.post(
                "/predict", json={"instances": [{"image": b64(encoded(RED))}]}
            )
        after = await client.post("/predict", files={"file": ("a.png", encoded(BLUE))})
    for response, where in ((upload, "files[0]"), (as_json, "instances[0].image")):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == "overloaded"
        assert response.json()["error"].startswith(f"{where}: the server is decoding")
    assert after.json()["predictions"][0]["label"] == "blue"  # room again once it is free
