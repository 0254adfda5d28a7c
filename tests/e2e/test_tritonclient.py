"""Triton's own HTTP client (``tritonclient[http]``, used as its docs use it: binary by default)
and ptserve's client against a real ptserve server: metadata, JSON and binary inference,
requested outputs, every error case, and keep-alive connections that survive errors."""

import asyncio
import http.client
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from ptserve.client import Client, InferenceError
from ptserve.settings import EXAMPLE_MODEL
from tests.e2e.conftest import REPO_ROOT, Server, running_ptserve, settings_flags
from tests.guards import COMMAND_S, REQUEST_S, hang_guard
from tests.multi_io import SETTINGS, save_two_inputs, two_inputs_batch, two_inputs_expected

HEADER = "Inference-Header-Content-Length"
DIGITS_METADATA = {
    "name": "digits",
    "versions": ["1"],
    "platform": "pytorch_pickle",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled example, as ``ptserve serve`` serves it."""
    log = tmp_path_factory.mktemp("digits") / "server.log"
    with running_ptserve(["--max-instances", "8"], log) as server:
        yield server


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A model with two inputs and two outputs."""
    folder = tmp_path_factory.mktemp("two")
    path = save_two_inputs(folder)
    with running_ptserve([str(path), *settings_flags(SETTINGS)], folder / "server.log") as server:
        yield server, path


def triton_client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.base_url.removeprefix("http://"))


def reference(pixels: np.ndarray) -> np.ndarray:
    model = torch.load(EXAMPLE_MODEL, weights_only=False)
    with torch.inference_mode():
        return model(torch.from_numpy(pixels)).numpy()


def digit_rows(rows: int = 5) -> np.ndarray:
    return load_digits().data[:rows].astype(np.float32)


def digits_input(pixels: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def test_health_and_metadata(digits: Server) -> None:
    client = triton_client(digits)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert server["name"] == "ptserve"
    assert "binary_tensor_data" in server["extensions"]
    assert client.get_model_metadata("digits") == DIGITS_METADATA
    assert client.get_model_metadata("digits", "1") == DIGITS_METADATA
    client.close()


def test_binary_inference_matches_the_model_in_process(digits: Server) -> None:
    pixels = digit_rows()
    client = triton_client(digits)
    result = client.infer("digits", [digits_input(pixels)])  # binary in and out, by default
    (output,) = result.get_response()["outputs"]
    assert output["parameters"]["binary_data_size"] == 5 * 10 * 4
    np.testing.assert_allclose(result.as_numpy("output"), reference(pixels), rtol=1e-6)
    client.close()


def test_json_inference_matches_the_model_in_process(digits: Server) -> None:
    pixels = digit_rows()
    client = triton_client(digits)
    result = client.infer(
        "digits",
        [digits_input(pixels, binary=False)],
        outputs=[triton.InferRequestedOutput("output", binary_data=False)],
        request_id="req-42",
        model_version="1",
    )
    response = result.get_response()
    assert response["id"] == "req-42"
    assert "data" in response["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("output"), reference(pixels), rtol=1e-6)
    client.close()


def test_the_asyncio_client(digits: Server) -> None:
    pixels = digit_rows(2)

    async def infer() -> np.ndarray:
        client = triton_aio.InferenceServerClient(url=digits.base_url.removeprefix("http://"))
        try:
            result = await client.infer("digits", [digits_input(pixels)])
            return result.as_numpy("output")
        finally:
            await client.close()

    np.testing.assert_allclose(asyncio.run(infer()), reference(pixels), rtol=1e-6)


def test_requested_outputs_of_two_inputs(two: tuple[Server, Path]) -> None:
    server, path = two
    image, extra = two_inputs_batch(4)
    expected = two_inputs_expected(path, image, extra)
    inputs = [
        triton.InferInput("image", [4, 4], "FP32"),
        triton.InferInput("extra", [4, 3], "FP32"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(extra, binary_data=False)
    client = triton_client(server)
    everything = client.infer("two", inputs)
    norm_only = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("norm")])
    mixed = client.infer(
        "two",
        inputs,
        outputs=[
            triton.InferRequestedOutput("sum", binary_data=False),
            triton.InferRequestedOutput("norm", binary_data=True),
        ],
    )
    for name in ("sum", "norm"):
        np.testing.assert_allclose(everything.as_numpy(name), expected[name], rtol=1e-6)
        np.testing.assert_allclose(mixed.as_numpy(name), expected[name], rtol=1e-6)
    np.testing.assert_allclose(norm_only.as_numpy("norm"), expected["norm"], rtol=1e-6)
    assert norm_only.as_numpy("sum") is None
    assert [o["name"] for o in client.get_model_metadata("two")["outputs"]] == ["sum", "norm"]
    client.close()


def wrong_shape() -> dict[str, Any]:
    tensor = triton.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    return {"inputs": [tensor]}


def wrong_datatype() -> dict[str, Any]:
    tensor = triton.InferInput("input", [1, 64], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float64))
    return {"inputs": [tensor]}


def bytes_for_numbers() -> dict[str, Any]:
    tensor = triton.InferInput("input", [1, 64], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"0"] * 64], dtype=np.object_))
    return {"inputs": [tensor]}


def unknown_input() -> dict[str, Any]:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return {"inputs": [tensor, digits_input(np.zeros((1, 64), np.float32))]}


def too_many_rows() -> dict[str, Any]:
    return {"inputs": [digits_input(np.zeros((9, 64), np.float32))]}


def unknown_output() -> dict[str, Any]:
    return {
        "inputs": [digits_input(np.zeros((1, 64), np.float32))],
        "outputs": [triton.InferRequestedOutput("logits")],
    }


def unknown_model() -> dict[str, Any]:
    return {"model_name": "other", "inputs": [digits_input(np.zeros((1, 64), np.float32))]}


def unknown_version() -> dict[str, Any]:
    return {**too_many_rows(), "model_version": "2"}


TRITON_ERRORS = [
    (wrong_shape, "400", "shape [1, 63] does not fit the model's [-1, 64]"),
    (wrong_datatype, "400", "datatype 'FP64' does not match the model's 'FP32'"),
    (bytes_for_numbers, "400", "datatype 'BYTES' does not match the model's 'FP32'"),
    (unknown_input, "400", "unknown input 'pixels'; the model takes 'input'"),
    (too_many_rows, "400", "the batch size (first dim) must be 1 to 8, got 9"),
    (unknown_output, "400", "unknown output 'logits'; the model gives 'output'"),
    (unknown_model, "404", "no model named 'other'"),
    (unknown_version, "404", "model 'digits' has no version '2'"),
]


@pytest.mark.parametrize(("make", "status", "message"), TRITON_ERRORS)
def test_tritonclient_gets_each_error_and_its_next_call_works(
    digits: Server, make: Any, status: str, message: str
) -> None:
    client = triton_client(digits)  # one connection (concurrency=1), reused after the error
    kwargs = {"model_name": "digits", **make()}
    with pytest.raises(InferenceServerException) as raised:
        client.infer(**kwargs)
    assert raised.value.status() == status
    assert message in raised.value.message()
    pixels = digit_rows(1)
    result = client.infer("digits", [digits_input(pixels)])
    np.testing.assert_allclose(result.as_numpy("output"), reference(pixels), rtol=1e-6)
    client.close()


def binary_request(size: int, raw: bytes, header_length: int | None = None) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + raw, len(header) if header_length is None else header_length


ROW = np.zeros((1, 64), np.float32).tobytes()
RAW_ERRORS = [
    ("/v2/models/digits/infer", binary_request(256, ROW[:100]), 400, "only 100 bytes of the body are left"),
    ("/v2/models/digits/infer", binary_request(100, ROW[:100]), 400, "binary_data_size is 100 but shape [1, 64] of FP32 takes 256"),
    ("/v2/models/digits/infer", binary_request(256, ROW + ROW), 400, "the body has 512 bytes after the JSON header"),
    ("/v2/models/digits/infer", binary_request(256, ROW, 9999), 400, "Inference-Header-Content-Length is 9999"),
    ("/v2/models/digits/infer", (b'{"inputs": [{"name": ', None), 400, "malformed JSON"),
    ("/v2/models/digits/infer", (b"\x00" * 100_000, None), 400, "malformed JSON"),
    ("/v2/models/other/infer", (b"\x00" * 100_000, None), 404, "no model named 'other'"),
    ("/v2/models/digits/versions/7/infer", binary_request(256, ROW), 404, "has no version '7'"),
    ("/v2/nowhere", binary_request(256, ROW), 404, "Not Found"),
]  # fmt: skip


def test_one_keep_alive_connection_survives_every_error(digits: Server) -> None:
    """Each bad request, then a good one, on a single connection that is never closed."""
    host, port = digits.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=hang_guard(REQUEST_S))
    good, good_length = binary_request(256, ROW)
    connection.connect()
    sock = connection.sock
    for path, (body, header_length), status, message in RAW_ERRORS:
        headers = {} if header_length is None else {HEADER: str(header_length)}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == status, path
        assert response.getheader("connection") != "close"
        assert message in orjson.loads(response.read())["error"]
        connection.request(
            "POST", "/v2/models/digits/infer", body=good, headers={HEADER: str(good_length)}
        )
        answer = connection.getresponse()
        assert answer.status == 200
        assert orjson.loads(answer.read())["outputs"][0]["shape"] == [1, 10]
        assert connection.sock is sock, f"the connection was replaced after {path}"
    connection.close()


def test_ptserve_client(digits: Server) -> None:
    pixels = digit_rows(3)
    expected = reference(pixels)
    with Client(digits.base_url) as client:
        assert client.live()
        assert client.ready()
        assert client.metadata() == DIGITS_METADATA
        from_numpy = client.infer(pixels.astype(np.float64))
        from_torch = client.infer({"input": torch.from_numpy(pixels)}, outputs=["output"])
        with pytest.raises(InferenceError) as raised:
            client.infer(pixels[:, :10])
        after_error = client.infer(pixels)
    for outputs in (from_numpy, from_torch, after_error):
        np.testing.assert_allclose(outputs["output"], expected, rtol=1e-6)
    assert (raised.value.status, raised.value.code) == (400, "invalid_tensor")
    assert "does not fit the model's [-1, 64]" in raised.value.message
    with Client("http://127.0.0.1:9", timeout=2) as nobody:
        assert not nobody.live()
        assert not nobody.ready()


def test_the_documented_example_runs(digits: Server) -> None:
    result = subprocess.run(
        [sys.executable, "examples/v2_client.py", "--url", digits.base_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=hang_guard(COMMAND_S),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "predicted digit: 0" in result.stdout


def test_the_documented_tritonclient_snippet_runs(digits: Server) -> None:
    text = (REPO_ROOT / "docs" / "oip_v2.md").read_text()
    snippet = text.split("### tritonclient", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet.replace("127.0.0.1:8000", digits.base_url.removeprefix("http://")), namespace)
    assert namespace["logits"].shape == (2, 10)
    namespace["client"].close()
