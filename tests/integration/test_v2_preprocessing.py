"""The Open Inference Protocol over HTTP reaches a model's own preprocessing, as /predict does:
encoded images as BYTES for an image model, instances as BYTES for a preprocess hook, and a
postprocess hook's predictions as the BYTES output ``prediction`` — in JSON and binary."""

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import serving
from tests.images import encoded, save_colour_model
from tests.integration.test_hook_predict import adder

pytestmark = pytest.mark.anyio
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def binary_bytes_request(name: str, elements: list[bytes], outputs: list[str]) -> tuple[bytes, int]:
    """A V2 binary request with one BYTES input (4-byte little-endian lengths)."""
    packed = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": name, "shape": [len(elements)], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(packed)}}
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": False}} for o in outputs],
        }
    )  # fmt: skip
    return header + packed, len(header)


def outputs_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


async def test_an_image_model_takes_encoded_images_as_bytes(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    images = [encoded(BLUE), encoded(RED, fmt="JPEG"), encoded(GREEN, size=(40, 30))]
    request = {
        "inputs": [
            {"name": "input", "shape": [3], "datatype": "BYTES",
             "data": [base64.b64encode(image).decode() for image in images]}
        ]
    }  # fmt: skip
    async with serving(model, input_shape=[3, 8, 8]) as client:
        by_json = outputs_of(await client.post("/v2/models/colours/infer", json=request))
        body, length = binary_bytes_request("input", images, ["output"])
        by_binary = outputs_of(
            await client.post(
                "/v2/models/colours/infer",
                content=body,
                headers={"Inference-Header-Content-Length": str(length)},
            )
        )
        uploads = await client.post(
            "/predict", files=[("file", (f"{i}", image)) for i, image in enumerate(images)]
        )
    expected = [value for p in uploads.json()["predictions"] for value in p["output"]]
    assert [p["label"] for p in uploads.json()["predictions"]] == ["blue", "red", "green"]
    for outputs in (by_json, by_binary):
        assert outputs["output"]["shape"] == [3, 3]
        assert outputs["output"]["data"] == pytest.approx(expected)


async def test_a_bad_image_in_bytes_gets_the_same_clear_error_as_an_upload(tmp_path: Path) -> None:
    model = save_colour_model(tmp_path)
    request = {
        "inputs": [
            {"name": "input", "shape": [2], "datatype": "BYTES",
             "data": [base64.b64encode(encoded(RED)).decode(), base64.b64encode(b"junk").decode()]}
        ]
    }  # fmt: skip
    async with serving(model, input_shape=[3, 8, 8]) as client:
        bad = await client.post("/v2/models/colours/infer", json=request)
        not_base64 = await client.post(
            "/v2/models/colours/infer",
            json={"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]},
        )
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_image")
    assert bad.json()["error"].startswith("input 'input'[1]: not an image")
    assert (not_base64.status_code, not_base64.json()["code"]) == (400, "invalid_tensor")
    assert "not valid base64" in not_base64.json()["error"]


async def test_a_hook_model_takes_instances_and_answers_with_its_predictions(
    tmp_path: Path,
) -> None:
    points = [{"x": 1, "y": 2}, {"x": 3.5, "y": 4}]
    request = {
        "inputs": [
            {"name": "instances", "shape": [2], "datatype": "BYTES",
             "data": [json.dumps(p) for p in points]}
        ]
    }  # fmt: skip
    async with serving(adder(tmp_path), handler="tests.hooks_example") as client:
        metadata = (await client.get("/v2/models/adder")).json()
        by_json = outputs_of(await client.post("/v2/models/adder/infer", json=request))
        body, length = binary_bytes_request(
            "instances", [json.dumps(p).encode() for p in points], ["prediction"]
        )
        by_binary = outputs_of(
            await client.post(
                "/v2/models/adder/infer",
                content=body,
                headers={"Inference-Header-Content-Length": str(length)},
            )
        )
        refused = await client.post(
            "/v2/models/adder/infer",
            json={"inputs": [{"name": "instances", "shape": [1], "datatype": "BYTES",
                              "data": ['{"x": 1}']}]},
        )  # fmt: skip
        not_json = await client.post(
            "/v2/models/adder/infer",
            json={"inputs": [{"name": "instances", "shape": [1], "datatype": "BYTES",
                              "data": ["{x"]}]},
        )  # fmt: skip
    assert metadata["inputs"] == [{"name": "instances", "datatype": "BYTES", "shape": [-1]}]
    assert {"name": "prediction", "datatype": "BYTES", "shape": [-1]} in metadata["outputs"]
    assert by_json["output"]["data"] == pytest.approx([3.0, 7.5])
    for outputs in (by_json, by_binary):
        assert [json.loads(p) for p in outputs["prediction"]["data"]] == [
            {"sum": 3.0},
            {"sum": 7.5},
        ]
    assert set(by_binary) == {"prediction"}  # only what was asked for
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_input")
    assert "instances[0].y" in refused.json()["error"]
    assert (not_json.status_code, not_json.json()["code"]) == (400, "invalid_tensor")
    assert "input 'instances'[0]: not a JSON instance" in not_json.json()["error"]
