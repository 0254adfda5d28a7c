"""The gRPC codec's tensors: ModelInferRequest -> arrays (raw and typed contents, BYTES, FP16,
BF16), outputs -> ModelInferResponse, and the same 400s as HTTP V2 with the same messages."""

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.errors import InvalidTensor, ModelFailure
from ptserve.grpc.grpc_predict_v2_pb2 import InferParameter, ModelInferRequest
from ptserve.protocols.grpc_tensors import CONTENTS_FIELDS, decode_infer, encode_infer
from ptserve.protocols.oip_tensors import DATATYPES, NUMPY_DTYPES, WireSpec, pack_bytes

IMAGE = WireSpec("image", np.dtype("float32"), (2, -1))
EXTRA = WireSpec("extra", np.dtype("int64"), (3,))
FILES = WireSpec("image", np.dtype("float32"), (3, 8, 8), "file")
INSTANCES = WireSpec("instances", None, (), "json")
OUTPUTS = ["sum", "norm"]
IMAGES = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 7
EXTRAS = np.array([[1, -2, 3], [4, 5, -(2**40)]], dtype=np.int64)
Tensor = ModelInferRequest.InferInputTensor


def decode(
    request: ModelInferRequest,
    inputs: tuple[WireSpec, ...] = (IMAGE, EXTRA),
    bf16: tuple[str, ...] = (),
    allow_nan: bool = False,
) -> Any:
    return decode_infer(request, inputs, OUTPUTS, frozenset(bf16), 4, allow_nan)


def raw_request(**arrays: np.ndarray) -> ModelInferRequest:
    """Every input's values in raw_input_contents."""
    request = ModelInferRequest(model_name="m")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=DATATYPES[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def typed_input(name: str, array: np.ndarray, datatype: str | None = None) -> Tensor:
    """One input with its values in the typed contents field of its datatype."""
    datatype = datatype or DATATYPES[array.dtype.name]
    tensor = Tensor(name=name, datatype=datatype, shape=array.shape)
    getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(array.reshape(-1).tolist())
    return tensor


@pytest.mark.parametrize("name", sorted(DATATYPES))
def test_every_numeric_datatype_decodes_raw_and_all_but_fp16_typed(name: str) -> None:
    dtype = np.dtype(name)
    values = np.array([[0, 1, 1], [1, 0, 1]]).astype(dtype)
    spec = WireSpec("x", dtype, (3,))
    decoded = [decode(raw_request(x=values), (spec,))]
    if name != "float16":
        decoded.append(decode(ModelInferRequest(inputs=[typed_input("x", values)]), (spec,)))
    for request in decoded:
        (array,) = request.arrays
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, values)


def test_raw_inputs_are_views_of_the_message_bytes_and_come_back_in_model_order() -> None:
    request = raw_request(extra=EXTRAS, image=IMAGES)
    image, extra = decode(request).arrays
    np.testing.assert_array_equal(image, IMAGES)
    np.testing.assert_array_equal(extra, EXTRAS)
    # np.frombuffer over the message's bytes: no copy, read-only (the runner copies it when it
    # reaches the model alone)
    assert not image.flags.owndata
    assert not image.flags.writeable
    assert decode(request).outputs == OUTPUTS


def test_typed_contents_may_mix_with_no_raw_and_bool_uint_fields_work() -> None:
    flags = np.array([[True, False, True]])
    counts = np.array([[0, 255, 7]], np.uint8)
    request = ModelInferRequest(inputs=[typed_input("f", flags), typed_input("c", counts)])
    specs = (WireSpec("f", np.dtype("bool"), (3,)), WireSpec("c", np.dtype("uint8"), (3,)))
    decoded_flags, decoded_counts = decode(request, specs).arrays
    np.testing.assert_array_equal(decoded_flags, flags)
    np.testing.assert_array_equal(decoded_counts, counts)
    assert decoded_counts.dtype == np.uint8


def test_bf16_raw_is_widened_exactly_for_bfloat16_inputs() -> None:
    values = torch.tensor([[1.5, -2.0, 3.140625], [1e-3, 65280.0, -0.0]], dtype=torch.bfloat16)
    raw = values.view(torch.int16).numpy().tobytes()
    spec = WireSpec("x", np.dtype("float32"), (3,))  # a bfloat16 input travels as FP32
    request = ModelInferRequest(
        inputs=[Tensor(name="x", datatype="BF16", shape=[2, 3])], raw_input_contents=[raw]
    )
    (array,) = decode(request, (spec,), bf16=("x",)).arrays
    assert array.dtype == np.float32
    assert torch.equal(torch.from_numpy(array).to(torch.bfloat16), values)
    np.testing.assert_array_equal(array, values.float().numpy())
    with pytest.raises(InvalidTensor, match="datatype 'BF16' does not match the model's 'FP32'"):
        decode(request, (spec,))  # a float32 input does not take BF16


def test_bytes_inputs_raw_and_typed() -> None:
    files = [b"\x89PNG first", b"", b"GIF89a third"]
    raw = ModelInferRequest(
        inputs=[Tensor(name="image", datatype="BYTES", shape=[3])],
        raw_input_contents=[pack_bytes(files)],
    )
    typed = ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[3])])
    typed.inputs[0].contents.bytes_contents.extend(files)
    for request in (raw, typed):
        assert decode(request, (FILES,)).arrays == [files]
    instances = ModelInferRequest(inputs=[Tensor(name="instances", datatype="BYTES", shape=[2])])
    instances.inputs[0].contents.bytes_contents.extend([b'{"x": 1, "y": 2}', b"[3, 4]"])
    assert decode(instances, (INSTANCES,)).arrays == [[{"x": 1, "y": 2}, [3, 4]]]


def test_requested_outputs_in_the_order_given() -> None:
    request = raw_request(image=IMAGES, extra=EXTRAS)
    request.outputs.add(name="norm")
    request.outputs.add(name="sum")
    assert decode(request).outputs == ["norm", "sum"]


def with_tensor(**changes: Any) -> ModelInferRequest:
    """A request for IMAGE alone whose one raw input has ``changes`` applied."""
    request = ModelInferRequest(
        inputs=[Tensor(name="image", datatype="FP32", shape=[1, 2, 3])],
        raw_input_contents=[np.zeros(6, np.float32).tobytes()],
    )
    tensor = request.inputs[0]
    for key, value in changes.items():
        if key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        elif key == "parameters":
            for name in value:
                tensor.parameters[name].CopyFrom(InferParameter(bool_param=True))
        else:
            setattr(tensor, key, value)
    return request


def no_raw(request: ModelInferRequest) -> ModelInferRequest:
    del request.raw_input_contents[:]
    return request


def fp32(values: list[float], shape: list[int]) -> ModelInferRequest:
    request = no_raw(with_tensor(shape=shape))
    request.inputs[0].contents.fp32_contents.extend(values)
    return request


def twice() -> ModelInferRequest:
    request = with_tensor()
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


def output(name: str, parameter: str | None = None) -> ModelInferRequest:
    request = with_tensor()
    requested = request.outputs.add(name=name)
    if parameter is not None:
        requested.parameters[parameter].CopyFrom(InferParameter(bool_param=True))
    return request


def both_raw_and_typed() -> ModelInferRequest:
    request = with_tensor()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 6)
    return request


def wrong_field() -> ModelInferRequest:
    request = no_raw(with_tensor())
    request.inputs[0].contents.fp64_contents.extend([0.0] * 6)
    return request


def raw_size(size: int) -> ModelInferRequest:
    request = with_tensor()
    request.raw_input_contents[0] = bytes(size)
    return request


def fp16_typed() -> ModelInferRequest:
    return no_raw(with_tensor(datatype="FP16"))


ERRORS = [
    (ModelInferRequest(), "inputs: expected a list of input tensors, got none"),
    (with_tensor(name="pixels"), "inputs[0]: unknown input 'pixels'; the model takes 'image'"),
    (with_tensor(datatype="FP64"), "input 'image': datatype 'FP64' does not match the model's 'FP32'"),
    (with_tensor(shape=[1, 3, 3]), "input 'image': shape [1, 3, 3] does not fit the model's [-1, 2, -1] (-1: any size)"),
    (with_tensor(shape=[5, 2, 3]), "the batch size (first dim) must be 1 to 4, got 5"),
    (with_tensor(parameters=["shared_memory_region"]), "input 'image': shared memory is not supported"),
    (twice(), "input 'image' is given twice"),
    (raw_size(20), "input 'image': raw_input_contents has 20 bytes but shape [1, 2, 3] of FP32 takes 24"),
    (both_raw_and_typed(), "input 'image': give its values in contents or raw_input_contents, not both"),
    (no_raw(with_tensor()), "input 'image': no values; give them in contents.fp32_contents"),
    (wrong_field(), "input 'image': FP32 values go in contents.fp32_contents, not fp64_contents"),
    (fp32([0.0] * 5, [1, 2, 3]), "input 'image': contents has 5 values; shape [1, 2, 3] needs 6"),
    (fp32([float("nan")] * 6, [1, 2, 3]), "input 'image': NaN and Infinity are not allowed"),
    (fp16_typed(), "input 'image': datatype 'FP16' does not match the model's 'FP32'"),
    (output("logits"), "outputs[0]: unknown output 'logits'; the model gives 'sum', 'norm'"),
    (output("sum", "classification"), "output 'sum': parameters: classification is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), ERRORS)
def test_each_mistake_is_a_clear_400(request_: ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidTensor) as raised:
        decode(request_, (IMAGE,))
    assert message in raised.value.message
    assert raised.value.status_code == 400


def test_two_inputs_need_both_and_one_batch_size_and_raw_for_each() -> None:
    with pytest.raises(
        InvalidTensor, match="missing input 'extra'; the model takes 'image', 'extra'"
    ):
        decode(raw_request(image=IMAGES))
    with pytest.raises(InvalidTensor, match=r"batch sizes \(first dims\) differ"):
        decode(raw_request(image=IMAGES, extra=EXTRAS[:1]))
    request = raw_request(image=IMAGES, extra=EXTRAS)
    del request.raw_input_contents[1]
    with pytest.raises(InvalidTensor, match="raw_input_contents has 1 entries for 2 inputs"):
        decode(request)


def test_fp16_typed_is_refused_for_an_fp16_input_too() -> None:
    spec = WireSpec("x", np.dtype("float16"), (3,))
    request = ModelInferRequest(inputs=[Tensor(name="x", datatype="FP16", shape=[1, 3])])
    with pytest.raises(InvalidTensor, match="FP16 values travel only in raw_input_contents"):
        decode(request, (spec,))


def test_bytes_elements_must_match_the_shape_and_json_instances_must_parse() -> None:
    packed = ModelInferRequest(
        inputs=[Tensor(name="image", datatype="BYTES", shape=[2])],
        raw_input_contents=[pack_bytes([b"one"]) + b"\x09\x00"],
    )
    with pytest.raises(InvalidTensor, match="a BYTES element's length runs past its tensor"):
        decode(packed, (FILES,))
    short = ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[2])])
    short.inputs[0].contents.bytes_contents.append(b"one")
    with pytest.raises(InvalidTensor, match=r"1 BYTES elements; shape \[2\] needs 2"):
        decode(short, (FILES,))
    bad = ModelInferRequest(inputs=[Tensor(name="instances", datatype="BYTES", shape=[1])])
    bad.inputs[0].contents.bytes_contents.append(b"{nope")
    with pytest.raises(InvalidTensor, match=r"input 'instances'\[0\]: not a JSON instance"):
        decode(bad, (INSTANCES,))


def test_outputs_go_back_raw_in_order() -> None:
    norm = np.array([[0.5], [1.5]], np.float64)
    flags = np.array([True, False])
    response = encode_infer(
        "m", "1", "req-7", [("norm", norm), ("flags", flags), ("p", [b"{}", b"[1]"])]
    )
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "req-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("norm", "FP64", [2, 1]), ("flags", "BOOL", [2]), ("p", "BYTES", [2]),
    ]  # fmt: skip
    raw = response.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(raw[0], NUMPY_DTYPES["FP64"]).reshape(2, 1), norm)
    assert raw[1] == flags.tobytes()
    assert raw[2] == pack_bytes([b"{}", b"[1]"])


def test_an_output_without_an_oip_datatype_is_a_server_error() -> None:
    with pytest.raises(ModelFailure, match="dtype complex64"):
        encode_infer("m", "1", "", [("z", np.zeros(2, np.complex64))])


def test_the_http_client_imports_no_grpc_and_the_grpc_client_no_torch() -> None:
    code = (
        "import sys, ptserve.client; assert 'grpc' not in sys.modules, 'grpc'; "
        "import ptserve.grpc_client; assert 'torch' not in sys.modules, 'torch'; "
        "assert ptserve.client.GrpcClient is ptserve.grpc_client.GrpcClient"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
