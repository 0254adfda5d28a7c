"""Open Inference Protocol tensors in gRPC messages: a ``ModelInferRequest`` to validated
arrays, outputs to a ``ModelInferResponse``.

The same checks and messages as the HTTP codec (``oip_tensors``), reading tensors from protobuf
instead of JSON: ``raw_input_contents`` (one entry per input: flat little-endian values, or
length-prefixed BYTES elements) become ``np.frombuffer`` views without a copy; typed
``contents`` are read from the one field that matches the datatype. FP16 and BF16 travel raw
only (the protocol has no contents field for them); BF16 is taken by bfloat16 inputs and
widened to float32 exactly. Outputs always go back raw, in ``raw_output_contents``.
"""

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptserve.errors import InvalidTensor
from ptserve.grpc.grpc_predict_v2_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
)
from ptserve.protocols.oip_tensors import (
    BYTES,
    UNSUPPORTED_PARAMETERS,
    Array,
    WireSpec,
    array_from_values,
    bytes_element,
    check_datatype,
    check_finite,
    check_shape,
    complete_inputs,
    known_name,
    output_datatype,
    pack_bytes,
    unpack_bytes,
)

BF16 = "BF16"
# The field of InferTensorContents that carries each datatype's values.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}  # fmt: skip
ALL_FIELDS = sorted(set(CONTENTS_FIELDS.values()))
InputTensor = ModelInferRequest.InferInputTensor


@dataclass(frozen=True)
class DecodedRequest:
    """Per model input, in the model's order, one batched array or (a BYTES input) its
    elements; and the outputs asked for, by name."""

    arrays: list[Array | list[Any]]
    outputs: list[str]


def decode_infer(
    request: ModelInferRequest,
    inputs: Sequence[WireSpec],
    output_names: Sequence[str],
    bf16_inputs: Collection[str],
    max_batch: int,
    allow_nan: bool,
) -> DecodedRequest:
    """Validate a ModelInfer request against the model's inputs and outputs (``bf16_inputs``:
    the inputs that also take BF16)."""
    tensors = request.inputs
    if not tensors:
        raise InvalidTensor("inputs: expected a list of input tensors, got none")
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise InvalidTensor(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; give one per "
            "input, in the order of inputs"
        )
    index = {spec.name: i for i, spec in enumerate(inputs)}
    arrays: list[Array | list[Any] | None] = [None] * len(inputs)
    for position, tensor in enumerate(tensors):
        name = known_name(tensor.name, f"inputs[{position}]", list(index), "input", "takes")
        if arrays[index[name]] is not None:
            raise InvalidTensor(f"input '{name}' is given twice")
        spec = inputs[index[name]]
        accepted = [*spec.datatypes, BF16] if name in bf16_inputs else spec.datatypes
        arrays[index[name]] = _input(
            tensor, spec, accepted, raw[position] if raw else None, max_batch, allow_nan
        )
    return DecodedRequest(complete_inputs(inputs, arrays), _requested(request, output_names))


def encode_infer(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Sequence[tuple[str, Array | list[bytes]]],
) -> ModelInferResponse:
    """The response for ``(name, array)`` outputs (a list of bytes is a BYTES tensor), every
    output's values raw."""
    response = ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, value in outputs:
        if isinstance(value, list):
            response.outputs.add(name=name, datatype=BYTES, shape=[len(value)])
            response.raw_output_contents.append(pack_bytes(value))
            continue
        kind = output_datatype(name, value)
        response.outputs.add(name=name, datatype=kind, shape=value.shape)
        response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
    return response


def _input(
    tensor: InputTensor,
    spec: WireSpec,
    accepted: list[str],
    raw: bytes | None,
    max_batch: int,
    allow_nan: bool,
) -> Array | list[Any]:
    """One input's array, or a BYTES input's elements."""
    where = f"input '{spec.name}'"
    given = check_datatype(tensor.datatype, accepted, where)
    if "shared_memory_region" in tensor.parameters:
        raise InvalidTensor(f"{where}: shared memory is not supported; send the data inline")
    if raw is not None and tensor.HasField("contents"):
        raise InvalidTensor(f"{where}: give its values in contents or raw_input_contents, not both")
    if given == BYTES:
        return _bytes_input(tensor, spec, raw, max_batch, where)
    assert spec.dtype is not None
    shape = check_shape(list(tensor.shape), spec.shape, where, max_batch)
    count = math.prod(shape)
    if raw is not None:
        array = _from_raw(raw, spec.dtype, given, shape, count, where)
    elif given in (BF16, "FP16"):
        raise InvalidTensor(
            f"{where}: {given} values travel only in raw_input_contents (the protocol has no "
            "contents field for them)"
        )
    else:
        values = _contents(tensor, given, count, where)
        array = array_from_values(values, spec, shape, count, where, "contents")
    check_finite(array, spec, allow_nan)
    return array


def _from_raw(
    raw: bytes, dtype: np.dtype[Any], given: str, shape: list[int], count: int, where: str
) -> Array:
    """A raw tensor as an array: a view of ``raw`` (bfloat16: widened to float32, which is
    exact: a bfloat16 is the upper half of the float32 of the same value)."""
    itemsize = 2 if given == BF16 else dtype.itemsize
    if len(raw) != count * itemsize:
        raise InvalidTensor(
            f"{where}: raw_input_contents has {len(raw)} bytes but shape {shape} of {given} "
            f"takes {count * itemsize}"
        )
    if given == BF16:
        widened = np.frombuffer(raw, "<u2", count).astype("<u4") << 16
        return widened.view(np.float32).reshape(shape)
    array = np.frombuffer(raw, dtype, count).reshape(shape)
    if not array.flags.aligned:  # torch kernels may assume aligned data; a copy aligns it
        array = array.copy()
    return array


def _contents(tensor: InputTensor, given: str, count: int, where: str) -> Any:
    """The values of a tensor sent as typed contents: the field of its datatype, and no other."""
    field = CONTENTS_FIELDS[given]
    contents = tensor.contents
    for other in ALL_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidTensor(f"{where}: {given} values go in contents.{field}, not {other}")
    values = getattr(contents, field)
    if count and not len(values):
        raise InvalidTensor(
            f"{where}: no values; give them in contents.{field}, or every input's in "
            "raw_input_contents"
        )
    return list(values)


def _bytes_input(
    tensor: InputTensor, spec: WireSpec, raw: bytes | None, max_batch: int, where: str
) -> list[Any]:
    """A BYTES input: one element per sample (an encoded file, or an instance as JSON)."""
    shape = check_shape(list(tensor.shape), (), where, max_batch)
    if raw is not None:
        return unpack_bytes(memoryview(raw), spec, shape, where)
    elements = _contents(tensor, BYTES, shape[0], where)
    if len(elements) != shape[0]:
        raise InvalidTensor(
            f"{where}: {len(elements)} BYTES elements; shape {shape} needs {shape[0]}"
        )
    return [bytes_element(e, spec, f"{where}[{i}]") for i, e in enumerate(elements)]


def _requested(request: ModelInferRequest, names: Sequence[str]) -> list[str]:
    """The outputs asked for by name, in the order given (none asked: all of them)."""
    if not request.outputs:
        return list(names)
    chosen: list[str] = []
    for position, output in enumerate(request.outputs):
        name = known_name(output.name, f"outputs[{position}]", names, "output", "gives")
        if name in chosen:
            raise InvalidTensor(f"output '{name}' is requested twice")
        for unsupported in UNSUPPORTED_PARAMETERS:
            if unsupported in output.parameters:
                raise InvalidTensor(f"output '{name}': parameters: {unsupported} is not supported")
        chosen.append(name)
    return chosen
