"""The Open Inference Protocol codec: datatypes, JSON and binary tensors, and its 400s."""

import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from ptserve.errors import InvalidHeader, InvalidJSON, InvalidTensor, ModelFailure, ServeError
from ptserve.protocols.oip_tensors import (
    DATATYPES,
    NUMPY_DTYPES,
    InferRequest,
    RequestedOutput,
    WireSpec,
    decode_request,
    encode_response,
)
from tests.guards import COMMAND_S, hang_guard

IMAGE = WireSpec("image", np.dtype("float32"), (2, -1))
EXTRA = WireSpec("extra", np.dtype("int64"), (3,))
OUTPUTS = ["sum", "norm"]


def decode(
    request: dict[str, Any],
    raw: bytes = b"",
    binary: bool = False,
    inputs: tuple[WireSpec, ...] = (IMAGE, EXTRA),
    allow_nan: bool = False,
) -> InferRequest:
    header = orjson.dumps(request)
    length = len(header) if binary else None
    return decode_request(header + raw, length, inputs, OUTPUTS, 4, allow_nan)


def json_input(spec: WireSpec, array: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": list(array.shape),
        "datatype": DATATYPES[array.dtype.name],
        "data": array.tolist(),
        **extra,
    }


def binary_input(spec: WireSpec, array: np.ndarray) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": list(array.shape),
        "datatype": DATATYPES[array.dtype.name],
        "parameters": {"binary_data_size": array.nbytes},
    }


IMAGES = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 7
EXTRAS = np.array([[1, -2, 3], [4, 5, -(2**40)]], dtype=np.int64)


@pytest.mark.parametrize("name", sorted(DATATYPES))
def test_every_numeric_datatype_decodes_from_json_and_binary(name: str) -> None:
    dtype = np.dtype(name)
    values = np.array([[0, 1, 1], [1, 0, 1]]).astype(dtype)
    spec = WireSpec("x", dtype, (3,))
    from_json = decode({"inputs": [json_input(spec, values)]}, inputs=(spec,))
    from_binary = decode(
        {"inputs": [binary_input(spec, values)]}, values.tobytes(), binary=True, inputs=(spec,)
    )
    for decoded in (from_json, from_binary):
        (array,) = decoded.arrays
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, values)
    assert NUMPY_DTYPES[DATATYPES[name]] == dtype


def test_json_data_may_be_flat_or_nested_and_inputs_come_back_in_model_order() -> None:
    flat = {"inputs": [json_input(EXTRA, EXTRAS), json_input(IMAGE, IMAGES)]}
    flat["inputs"][1]["data"] = IMAGES.reshape(-1).tolist()
    for request in (flat, {"inputs": [json_input(IMAGE, IMAGES), json_input(EXTRA, EXTRAS)]}):
        decoded = decode(request)
        np.testing.assert_array_equal(decoded.arrays[0], IMAGES)
        np.testing.assert_array_equal(decoded.arrays[1], EXTRAS)
        assert [a.dtype for a in decoded.arrays] == [np.float32, np.int64]


def test_integers_are_accepted_as_float_data() -> None:
    request = {"inputs": [json_input(IMAGE, IMAGES), json_input(EXTRA, EXTRAS)]}
    request["inputs"][0]["data"] = [[[1, 2, 3], [4, 5, 6]]] * 2
    assert decode(request).arrays[0].dtype == np.float32


def test_binary_tensors_are_writable_views_of_the_body() -> None:
    header = orjson.dumps({"inputs": [binary_input(IMAGE, IMAGES), binary_input(EXTRA, EXTRAS)]})
    pad = -len(header) % 16
    buffer = bytearray(pad) + header + IMAGES.tobytes() + EXTRAS.tobytes()
    body = memoryview(buffer)[pad:]
    decoded = decode_request(body, len(header), (IMAGE, EXTRA), OUTPUTS, 4, False)
    image, extra = decoded.arrays
    np.testing.assert_array_equal(image, IMAGES)
    np.testing.assert_array_equal(extra, EXTRAS)
    backing = np.frombuffer(buffer, np.uint8)
    assert np.shares_memory(image, backing)
    assert np.shares_memory(extra, backing)
    assert image.flags.writeable


def test_binary_and_json_inputs_mix() -> None:
    request = {"inputs": [json_input(EXTRA, EXTRAS), binary_input(IMAGE, IMAGES)]}
    decoded = decode(request, IMAGES.tobytes(), binary=True)
    np.testing.assert_array_equal(decoded.arrays[0], IMAGES)


def test_outputs_default_to_all_and_follow_binary_data_output() -> None:
    inputs = [json_input(IMAGE, IMAGES), json_input(EXTRA, EXTRAS)]
    assert decode({"inputs": inputs}).outputs == [
        RequestedOutput("sum", False),
        RequestedOutput("norm", False),
    ]
    everything = decode({"inputs": inputs, "parameters": {"binary_data_output": True}})
    assert [o.binary for o in everything.outputs] == [True, True]
    chosen = decode(
        {
            "inputs": inputs,
            "parameters": {"binary_data_output": True, "custom": 1},
            "outputs": [{"name": "norm", "parameters": {"binary_data": False}}, {"name": "sum"}],
        }
    )
    assert chosen.outputs == [RequestedOutput("norm", False), RequestedOutput("sum", True)]


def test_request_id_is_kept() -> None:
    inputs = [json_input(IMAGE, IMAGES), json_input(EXTRA, EXTRAS)]
    assert decode({"id": "r-1", "inputs": inputs}).id == "r-1"
    assert decode({"inputs": inputs}).id is None


def test_nan_is_refused_unless_allowed() -> None:
    spec = WireSpec("x", np.dtype("float32"), (2,))
    nan = np.array([[1, np.nan]], np.float32)
    request = {"inputs": [binary_input(spec, nan)]}
    with pytest.raises(InvalidTensor, match="NaN and Infinity are not allowed"):
        decode(request, nan.tobytes(), binary=True, inputs=(spec,))
    decoded = decode(request, nan.tobytes(), binary=True, inputs=(spec,), allow_nan=True)
    assert np.isnan(decoded.arrays[0][0, 1])


def test_fp16_overflow_is_caught_as_non_finite() -> None:
    spec = WireSpec("x", np.dtype("float16"), (1,))
    request = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP16", "data": [1e6]}]}
    with pytest.raises(InvalidTensor, match="beyond FP16's range"):
        decode(request, inputs=(spec,))


GOOD = [json_input(IMAGE, IMAGES), json_input(EXTRA, EXTRAS)]


def with_input(index: int, **changes: Any) -> dict[str, Any]:
    inputs = [dict(entry) for entry in GOOD]
    inputs[index].update(changes)
    return {"inputs": inputs}


BAD_REQUESTS: list[tuple[dict[str, Any], type[ServeError], str]] = [
    ({"inputs": []}, InvalidTensor, "inputs: expected a list of input tensors"),
    ({}, InvalidTensor, "inputs: expected a list of input tensors, got null"),
    ({"inputs": [1]}, InvalidTensor, "inputs[0]: expected a JSON object, got 1"),
    ({"inputs": [*GOOD, {"name": "other"}]}, InvalidTensor, "unknown input 'other'; the model takes 'image', 'extra'"),
    ({"inputs": [GOOD[0], GOOD[0]]}, InvalidTensor, "input 'image' is given twice"),
    ({"inputs": GOOD[:1]}, InvalidTensor, "missing input 'extra'"),
    (with_input(0, datatype="FP64"), InvalidTensor, "input 'image': datatype 'FP64' does not match the model's 'FP32'"),
    (with_input(0, datatype="BYTES"), InvalidTensor, "datatype 'BYTES' does not match"),
    (with_input(0, shape=[2, 3, 3]), InvalidTensor, "shape [2, 3, 3] does not fit the model's [-1, 2, -1]"),
    (with_input(0, shape=[2, 2]), InvalidTensor, "does not fit"),
    (with_input(0, shape="2,2,3"), InvalidTensor, "shape must be a list of sizes"),
    (with_input(0, shape=[2, True, 3]), InvalidTensor, "shape must be a list of sizes"),
    (with_input(0, shape=[5, 2, 3], data=[0.0] * 30), InvalidTensor, "batch size (first dim) must be 1 to 4, got 5"),
    (with_input(0, shape=[0, 2, 3], data=[]), InvalidTensor, "must be 1 to 4, got 0"),
    (with_input(0, data=[1.0] * 11), InvalidTensor, "data has 11 values; shape [2, 2, 3] needs 12"),
    (with_input(0, data=[[1.0, 2.0], [3.0]]), InvalidTensor, "nested unevenly"),
    (with_input(0, data=["1"] * 12), InvalidTensor, "FP32 data must be numbers, got '1'"),
    (with_input(0, data=[True] * 12), InvalidTensor, "FP32 data must be numbers, got true"),
    (with_input(0, data=[None] * 12), InvalidTensor, "FP32 data must be numbers"),
    (with_input(1, data=[1.5] * 6), InvalidTensor, "INT64 data must be integers, got 1.5"),
    (with_input(1, data=[2**63] * 6), InvalidTensor, "9223372036854775808 is out of range for INT64"),
    (with_input(0, parameters={"binary_data_size": 48}, data=None), InvalidTensor, "either 'data' or binary_data_size"),
    (with_input(0, parameters={"binary_data_size": 48}), InvalidTensor, "either 'data' or binary_data_size"),
    (with_input(0, parameters={"shared_memory_region": "r"}), InvalidTensor, "shared memory is not supported"),
    (with_input(0, parameters=[]), InvalidTensor, "parameters: expected a JSON object"),
    ({"inputs": [{k: v for k, v in GOOD[0].items() if k != "data"}, GOOD[1]]}, InvalidTensor, "input 'image': no data"),
    ({"inputs": [GOOD[0], {**GOOD[1], "data": [[1, 2, 3], [4, 5, 6]], "shape": [2, 3]}, ], "outputs": [{"name": "nope"}]}, InvalidTensor, "unknown output 'nope'; the model gives 'sum', 'norm'"),
    ({"inputs": GOOD, "outputs": [{"name": "sum"}, {"name": "sum"}]}, InvalidTensor, "output 'sum' is requested twice"),
    ({"inputs": GOOD, "outputs": []}, InvalidTensor, "outputs: expected a list of requested outputs"),
    ({"inputs": GOOD, "outputs": [{"name": "sum", "parameters": {"classification": 2}}]}, InvalidTensor, "classification is not supported"),
    ({"inputs": GOOD, "outputs": [{"name": "sum", "parameters": {"binary_data": "yes"}}]}, InvalidTensor, "binary_data must be true or false, got 'yes'"),
    ({"inputs": GOOD, "parameters": {"binary_data_output": 1}}, InvalidTensor, "binary_data_output must be true or false"),
    ({"inputs": GOOD, "parameters": "x"}, InvalidTensor, "parameters: expected a JSON object"),
    ({"inputs": GOOD, "id": 7}, InvalidTensor, "id: expected a string, got 7"),
    ({"inputs": [GOOD[0], {**GOOD[1], "shape": [1, 3], "data": [1, 2, 3]}]}, InvalidTensor, "batch sizes (first dims) differ: {'image': 2, 'extra': 1}"),
]  # fmt: skip


@pytest.mark.parametrize(("request_body", "error", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_400(
    request_body: dict[str, Any], error: type[ServeError], message: str
) -> None:
    with pytest.raises(error) as raised:
        decode(request_body)
    assert message in raised.value.message
    assert raised.value.status_code == 400


def test_out_of_range_integers_are_refused() -> None:
    spec = WireSpec("x", np.dtype("uint8"), (2,))
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "UINT8", "data": [1, 256]}]}
    with pytest.raises(InvalidTensor, match="256 is out of range for UINT8"):
        decode(request, inputs=(spec,))
    request["inputs"][0]["data"] = [-1, 0]
    with pytest.raises(InvalidTensor, match="-1 is out of range for UINT8"):
        decode(request, inputs=(spec,))


BAD_BINARY = [
    (IMAGES.nbytes - 4, IMAGES.tobytes(), "binary_data_size is 44 but shape [2, 2, 3] of FP32 takes 48 bytes"),
    (IMAGES.nbytes, IMAGES.tobytes()[:-4], "binary_data_size is 48 but only 44 bytes of the body are left"),
    (IMAGES.nbytes, IMAGES.tobytes() + b"\0", "the body has 49 bytes after the JSON header but the inputs' binary_data_size add up to 48"),
    (-1, IMAGES.tobytes(), "binary_data_size must be a byte count, got -1"),
    ("48", IMAGES.tobytes(), "binary_data_size must be a byte count"),
]  # fmt: skip


@pytest.mark.parametrize(("size", "raw", "message"), BAD_BINARY)
def test_binary_sizes_must_match_the_shape_and_the_body(
    size: object, raw: bytes, message: str
) -> None:
    entry = {**binary_input(IMAGE, IMAGES), "parameters": {"binary_data_size": size}}
    with pytest.raises(InvalidTensor) as raised:
        decode({"inputs": [entry, GOOD[1]]}, raw, binary=True)
    assert message in raised.value.message


def test_absurd_shapes_are_refused_without_overflow() -> None:
    spec = WireSpec("x", np.dtype("float32"), (-1, -1))
    shape = [1, 2**40, 2**40]
    request = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0]}]}
    with pytest.raises(InvalidTensor, match=f"needs {2**80}"):
        decode(request, inputs=(spec,))
    binary = {"inputs": [{**request["inputs"][0], "parameters": {"binary_data_size": 4}}]}
    del binary["inputs"][0]["data"]
    with pytest.raises(InvalidTensor, match=f"takes {2**82} bytes"):
        decode(binary, b"\0" * 4, binary=True, inputs=(spec,))


def test_binary_data_without_the_header_length_is_refused() -> None:
    request = {"inputs": [binary_input(IMAGE, IMAGES), GOOD[1]]}
    with pytest.raises(InvalidTensor, match="needs the Inference-Header-Content-Length header"):
        decode(request)
    with pytest.raises(
        InvalidJSON,
        match=r"malformed JSON: .*; binary tensors need the Inference-Header-Content-Length",
    ):
        decode(request, IMAGES.tobytes())


def test_malformed_json_and_header_lengths() -> None:
    with pytest.raises(InvalidJSON, match="malformed JSON"):
        decode_request(b'{"inputs": [', None, (IMAGE,), OUTPUTS, 4, False)
    with pytest.raises(InvalidJSON, match="malformed JSON"):
        decode_request(b"\xff\xfe", None, (IMAGE,), OUTPUTS, 4, False)
    with pytest.raises(InvalidTensor, match="the request: expected a JSON object, got a list"):
        decode_request(b"[]", None, (IMAGE,), OUTPUTS, 4, False)
    with pytest.raises(InvalidHeader, match="is 99 but the body has only 2 bytes"):
        decode_request(b"{}", 99, (IMAGE,), OUTPUTS, 4, False)
    with pytest.raises(InvalidJSON, match="malformed JSON"):
        decode_request(b'{"inputs": []}', 5, (IMAGE,), OUTPUTS, 4, False)


def test_json_response_omits_what_was_not_given() -> None:
    outputs = [("sum", np.ones((2, 2), np.float32), False)]
    body, length = encode_response("m", "1", None, outputs)
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4}],
    }


def test_binary_response_puts_raw_tensors_after_the_header() -> None:
    norm = np.array([[1.5], [2.5]], np.float64)
    flags = np.array([[True, False]])
    outputs = [("norm", norm, True), ("sum", np.zeros((2, 2), np.int32), False), ("f", flags, True)]
    body, length = encode_response("m", "1", "r-1", outputs)
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "r-1"
    assert header["outputs"][0] == {
        "name": "norm",
        "datatype": "FP64",
        "shape": [2, 1],
        "parameters": {"binary_data_size": 16},
    }
    assert header["outputs"][1]["data"] == [0, 0, 0, 0]
    assert header["outputs"][2]["datatype"] == "BOOL"
    assert body[length:] == norm.tobytes() + flags.tobytes()


def test_an_output_without_an_oip_datatype_is_a_server_error() -> None:
    with pytest.raises(ModelFailure, match="dtype complex64"):
        encode_response("m", "1", None, [("z", np.zeros(2, np.complex64), True)])


def test_the_client_does_not_import_torch() -> None:
    code = "import sys, ptserve.client; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=hang_guard(COMMAND_S))
