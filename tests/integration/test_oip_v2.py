"""The Open Inference Protocol (V2) over HTTP, in-process: metadata, JSON and binary inference,
requested outputs, every datatype a model input can have, the errors, and ptserve.client."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ptserve.client import AsyncClient, InferenceError
from ptserve.settings import EXAMPLE_MODEL
from tests.conftest import serving, serving_app
from tests.multi_io import SETTINGS, save_two_inputs, two_inputs_batch, two_inputs_expected

pytestmark = pytest.mark.anyio
INFER = "/v2/models/digits/infer"
HEADER = "Inference-Header-Content-Length"


def digits_reference(pixels: np.ndarray) -> np.ndarray:
    model = torch.load(EXAMPLE_MODEL, weights_only=False)
    with torch.inference_mode():
        return model(torch.from_numpy(pixels.astype(np.float32))).numpy()


def pixels(rows: int = 3) -> np.ndarray:
    return load_digits().data[:rows].astype(np.float32)


def binary_body(inputs: dict[str, np.ndarray], **request: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body and its headers."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": {"float32": "FP32"}.get(array.dtype.name, "?"),
                    "parameters": {"binary_data_size": array.nbytes},
                }
                for name, array in inputs.items()
            ],
            **request,
        }
    )
    raw = b"".join(array.tobytes() for array in inputs.values())
    return header + raw, {HEADER: str(len(header))}


def binary_outputs(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    length = int(response.headers[HEADER])
    header = orjson.loads(response.content[:length])
    arrays, offset = {}, length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw = response.content[offset : offset + size]
        arrays[output["name"]] = np.frombuffer(raw, np.float32).reshape(output["shape"])
        offset += size
    assert offset == len(response.content)
    return header, arrays


async def test_server_and_model_metadata() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        server = await client.get("/v2")
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        model = await client.get("/v2/models/digits")
        versioned = await client.get("/v2/models/digits/versions/1")
        model_ready = await client.get("/v2/models/digits/ready")
        version_ready = await client.get("/v2/models/digits/versions/1/ready")
    assert server.json()["name"] == "ptserve"
    assert "binary_tensor_data" in server.json()["extensions"]
    assert (live.status_code, ready.status_code) == (200, 200)
    assert model.json() == {
        "name": "digits",
        "versions": ["1"],
        "platform": "pytorch_pickle",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert versioned.json() == model.json()
    assert model_ready.json() == version_ready.json() == {"name": "digits", "ready": True}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/other", "no model named 'other'"),
        ("/v2/models/other/ready", "no model named 'other'"),
        ("/v2/models/digits/versions/2", "model 'digits' has no version '2'; its only version is '1'"),
        ("/v2/models/digits/versions/2/ready", "has no version '2'"),
    ],
)  # fmt: skip
async def test_unknown_models_and_versions_are_404(path: str, message: str) -> None:
    async with serving(EXAMPLE_MODEL) as client:
        response = await client.get(path)
        infer = await client.post(path.removesuffix("/ready") + "/infer", content=b"{}")
    for answer in (response, infer):
        assert answer.status_code == 404
        assert message in answer.json()["error"]
        assert answer.json()["code"] == "model_not_found"


async def test_json_infer_matches_the_model_in_process() -> None:
    rows = pixels()
    request = {
        "id": "req-7",
        "parameters": {"anything": "goes"},
        "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": rows.tolist()}],
    }
    async with serving(EXAMPLE_MODEL) as client:
        nested = await client.post(INFER, json=request)
        request["inputs"][0]["data"] = rows.reshape(-1).tolist()  # type: ignore[index]
        flat = await client.post(
            "/v2/models/digits/versions/1/infer", content=orjson.dumps(request)
        )
    for response in (nested, flat):
        assert response.status_code == 200, response.text
        assert HEADER.lower() not in response.headers
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body.keys() == {"model_name", "model_version", "id", "outputs"}  # no nulls
        assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "1", "req-7")
        (output,) = body["outputs"]
        assert output.keys() == {"name", "datatype", "shape", "data"}
        assert (output["name"], output["datatype"], output["shape"]) == ("output", "FP32", [3, 10])
        np.testing.assert_allclose(
            np.reshape(output["data"], (3, 10)), digits_reference(rows), rtol=1e-6
        )


async def test_binary_infer_in_and_out() -> None:
    rows = pixels(4)
    body, headers = binary_body({"input": rows}, parameters={"binary_data_output": True})
    async with serving(EXAMPLE_MODEL) as client:
        binary = await client.post(INFER, content=body, headers=headers)
        plain_body, plain_headers = binary_body({"input": rows})
        json_out = await client.post(INFER, content=plain_body, headers=plain_headers)
    assert binary.status_code == 200, binary.text
    assert binary.headers["content-type"] == "application/octet-stream"
    header, arrays = binary_outputs(binary)
    assert "id" not in header
    np.testing.assert_allclose(arrays["output"], digits_reference(rows), rtol=1e-6)
    assert HEADER.lower() not in json_out.headers  # binary in, nothing asked binary: plain JSON
    (output,) = json_out.json()["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], (4, 10)), arrays["output"])


async def test_requested_outputs_of_a_model_with_two_inputs_and_outputs(tmp_path: Path) -> None:
    path = save_two_inputs(tmp_path)
    image, extra = two_inputs_batch()
    expected = two_inputs_expected(path, image, extra)
    body, headers = binary_body(
        {"extra": extra, "image": image},
        outputs=[{"name": "norm", "parameters": {"binary_data": True}}, {"name": "sum"}],
    )
    async with serving(path, **SETTINGS) as client:
        metadata = (await client.get("/v2/models/two")).json()
        chosen = await client.post("/v2/models/two/infer", content=body, headers=headers)
        everything = await client.post(
            "/v2/models/two/infer",
            json={
                "inputs": [
                    {"name": "image", "shape": [3, 4], "datatype": "FP32", "data": image.tolist()},
                    {"name": "extra", "shape": [3, 3], "datatype": "FP32", "data": extra.tolist()},
                ]
            },
        )
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "extra", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert metadata["outputs"] == [
        {"name": "sum", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "norm", "datatype": "FP32", "shape": [-1, 1]},
    ]
    length = int(chosen.headers[HEADER])
    header = orjson.loads(chosen.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["norm", "sum"]
    norm = np.frombuffer(chosen.content[length:], np.float32).reshape(3, 1)
    np.testing.assert_allclose(norm, expected["norm"], rtol=1e-6)
    np.testing.assert_allclose(
        np.reshape(header["outputs"][1]["data"], (3, 2)), expected["sum"], rtol=1e-6
    )
    outputs = {o["name"]: o for o in everything.json()["outputs"]}
    assert list(outputs) == ["sum", "norm"]
    np.testing.assert_allclose(
        np.reshape(outputs["sum"]["data"], (3, 2)), expected["sum"], rtol=1e-6
    )


# Every dtype a model input can have, with the OIP datatype it travels as in and out.
DTYPES = [
    ("float32", "FP32", "FP32"), ("float64", "FP64", "FP64"), ("float16", "FP16", "FP32"),
    ("bfloat16", "FP32", "FP32"), ("int64", "INT64", "INT64"), ("int32", "INT32", "INT32"),
    ("int16", "INT16", "INT16"), ("int8", "INT8", "INT8"), ("uint8", "UINT8", "UINT8"),
    ("bool", "BOOL", "BOOL"),
]  # fmt: skip
NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
         "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


@pytest.mark.parametrize(("dtype", "sent", "returned"), DTYPES)
async def test_every_input_dtype_round_trips(
    dtype: str, sent: str, returned: str, tmp_path: Path
) -> None:
    torch.save(nn.Identity(), tmp_path / "echo.pt")
    values = np.array([[0, 1, 2], [1, 0, 3]]) if dtype != "bool" else np.array([[1, 0, 1]] * 2)
    array = values.astype(NUMPY[sent])
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3],
                    "datatype": sent,
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    )
    json_request = {
        "inputs": [{"name": "input", "shape": [2, 3], "datatype": sent, "data": array.tolist()}]
    }
    settings = {"input_shape": [3], "input_dtype": dtype}
    async with serving(tmp_path / "echo.pt", **settings) as client:
        metadata = (await client.get("/v2/models/echo")).json()
        from_json = await client.post("/v2/models/echo/infer", json=json_request)
        from_binary = await client.post(
            "/v2/models/echo/infer",
            content=header + array.tobytes(),
            headers={HEADER: str(len(header))},
        )
    assert metadata["inputs"][0]["datatype"] == sent
    assert metadata["outputs"][0]["datatype"] == returned
    (output,) = from_json.json()["outputs"]
    assert output["datatype"] == returned
    np.testing.assert_array_equal(np.reshape(output["data"], (2, 3)), values)
    length = int(from_binary.headers[HEADER])
    raw = np.frombuffer(from_binary.content[length:], NUMPY[returned]).reshape(2, 3)
    np.testing.assert_array_equal(raw, values)


GOOD_INPUT = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
ONE_ROW = np.zeros((1, 64), np.float32)


def body_with(**changes: Any) -> dict[str, Any]:
    return {"content": orjson.dumps({"inputs": [{**GOOD_INPUT, **changes}]})}


def binary_with(size: int, raw: bytes, header_length: str | bytes | None = None) -> dict[str, Any]:
    header = orjson.dumps(
        {"inputs": [{**GOOD_INPUT, "data": None, "parameters": {"binary_data_size": size}}]}
    ).replace(b',"data":null', b"")
    return {
        "content": header + raw,
        "headers": {HEADER: header_length or str(len(header))},
    }


BAD_REQUESTS = [
    (body_with(shape=[1, 63], data=[0.0] * 63), 400, "invalid_tensor", "shape [1, 63] does not fit the model's [-1, 64]"),
    (body_with(datatype="FP64"), 400, "invalid_tensor", "datatype 'FP64' does not match the model's 'FP32'"),
    (body_with(datatype="BYTES", data=["a"] * 64), 400, "invalid_tensor", "datatype 'BYTES' does not match"),
    (body_with(name="pixels"), 400, "invalid_tensor", "unknown input 'pixels'; the model takes 'input'"),
    (body_with(shape=[5, 64], data=[0.0] * 320), 400, "invalid_tensor", "must be 1 to 4, got 5"),
    (body_with(data=[0.0] * 63), 400, "invalid_tensor", "data has 63 values; shape [1, 64] needs 64"),
    ({"content": b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN' + b",0" * 63 + b"]}]}"}, 400, "invalid_json", "malformed JSON"),
    ({"content": b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1e999' + b",0" * 63 + b"]}]}"}, 400, "invalid_json", "malformed JSON"),
    ({"content": b'{"inputs": ['}, 400, "invalid_json", "malformed JSON"),
    ({"content": b""}, 400, "invalid_json", "malformed JSON"),
    ({"content": b'{"inputs": [], "outputs": [{"name": "x"}]}'}, 400, "invalid_tensor", "inputs: expected a list"),
    (binary_with(255, ONE_ROW.tobytes()[:255]), 400, "invalid_tensor", "binary_data_size is 255 but shape [1, 64] of FP32 takes 256 bytes"),
    (binary_with(256, ONE_ROW.tobytes()[:200]), 400, "invalid_tensor", "only 200 bytes of the body are left"),
    (binary_with(256, ONE_ROW.tobytes() + b"extra"), 400, "invalid_tensor", "the body has 261 bytes after the JSON header"),
    (binary_with(256, ONE_ROW.tobytes(), header_length="lots"), 400, "invalid_header", "Inference-Header-Content-Length must be the JSON header's size"),
    (binary_with(256, ONE_ROW.tobytes(), header_length="99999"), 400, "invalid_header", "is 99999 but the body has only"),
    (binary_with(256, ONE_ROW.tobytes(), header_length="-3"), 400, "invalid_header", "must be the JSON header's size"),
    (binary_with(256, ONE_ROW.tobytes(), header_length=b"\xb2"), 400, "invalid_header", "must be the JSON header's size"),
    (binary_with(256, ONE_ROW.tobytes(), header_length="9" * 5000), 400, "invalid_header", "must be the JSON header's size"),
    ({**body_with(), "headers": {"X-Request-Timeout-Ms": "never"}}, 400, "invalid_header", "X-Request-Timeout-Ms"),
    ({**body_with(), "headers": {"Content-Encoding": "gzip"}}, 415, "unsupported_media_type", "Content-Encoding 'gzip' is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("request_kwargs", "status", "code", "message"), BAD_REQUESTS)
async def test_bad_requests_get_a_clear_error_and_the_next_request_works(
    request_kwargs: dict[str, Any], status: int, code: str, message: str
) -> None:
    async with serving(EXAMPLE_MODEL, max_instances=4) as client:
        response = await client.post(INFER, **request_kwargs)
        after = await client.post(INFER, json={"inputs": [GOOD_INPUT]})
    assert response.status_code == status
    body = response.json()
    assert message in body["error"]
    assert body["code"] == code
    assert after.status_code == 200


async def test_nan_is_refused_in_binary_unless_allowed() -> None:
    row = ONE_ROW.copy()
    row[0, 3] = np.nan
    body, headers = binary_body({"input": row})
    async with serving(EXAMPLE_MODEL) as client:
        refused = await client.post(INFER, content=body, headers=headers)
    async with serving(EXAMPLE_MODEL, allow_nan=True) as client:
        allowed = await client.post(INFER, content=body, headers=headers)
    assert refused.status_code == 400
    assert "NaN and Infinity are not allowed" in refused.json()["error"]
    assert allowed.status_code == 200


async def test_v2_and_predict_share_one_batcher() -> None:
    rows = pixels(12)
    expected = digits_reference(rows)
    async with serving_app(EXAMPLE_MODEL) as (app, client):
        bodies = [
            binary_body({"input": rows[i : i + 1]}, parameters={"binary_data_output": True})
            for i in range(6)
        ]
        v2 = [client.post(INFER, content=body, headers=headers) for body, headers in bodies]
        simple = [
            client.post("/predict", json={"instances": rows[i : i + 1].tolist()})
            for i in range(6, 12)
        ]
        before = app.state.runtime.models.get(None).service.batcher.stats.samples
        responses = await asyncio.gather(*v2, *simple)
        after = app.state.runtime.models.get(None).service.batcher.stats.samples
    assert after - before == 12
    for i, response in enumerate(responses[:6]):
        np.testing.assert_allclose(binary_outputs(response)[1]["output"][0], expected[i], rtol=1e-6)
    for i, response in enumerate(responses[6:], start=6):
        np.testing.assert_allclose(
            response.json()["predictions"][0]["output"], expected[i], rtol=1e-6
        )


async def test_async_client_in_process(tmp_path: Path) -> None:
    path = save_two_inputs(tmp_path)
    image, extra = two_inputs_batch()
    expected = two_inputs_expected(path, image, extra)
    async with serving_app(path, **SETTINGS) as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://ptserve", transport=transport) as client:
            assert await client.live()
            assert await client.ready()
            assert (await client.server_metadata())["extensions"] == [
                "binary_tensor_data",
                "model_repository",
            ]
            assert (await client.metadata())["name"] == "two"
            assert client.model == "two"
            everything = await client.infer(
                {"image": torch.from_numpy(image), "extra": extra.astype(np.float64)}
            )
            norm_only = await client.infer({"image": image, "extra": extra}, outputs=["norm"])
            with pytest.raises(InferenceError) as wrong:
                await client.infer({"image": image[:, :3], "extra": extra})
            with pytest.raises(ValueError, match="pass them by name"):
                await client.infer(image)
        async with AsyncClient("http://ptserve", "nope", transport=transport) as missing:
            assert not await missing.ready()
            with pytest.raises(InferenceError) as unknown:
                await missing.metadata()
    assert everything.keys() == {"sum", "norm"}
    for name, array in everything.items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-6)
        assert array.flags.writeable
    assert norm_only.keys() == {"norm"}
    assert (wrong.value.status, wrong.value.code) == (400, "invalid_tensor")
    assert "shape [3, 3] does not fit the model's [-1, 4]" in wrong.value.message
    assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
