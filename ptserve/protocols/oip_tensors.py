"""Open Inference Protocol tensors on the wire: datatypes, JSON ``data`` and binary tensors.

The binary tensor extension (as Triton defines it): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw little-endian tensors, one per tensor
whose ``parameters.binary_data_size`` gives its byte count, in the order they are listed.

Pure numpy and orjson, no torch: the server decodes requests and encodes responses here, and
``ptserve.client`` shares the datatypes without importing torch. Errors are 400s a person can
read. The checks that do not depend on JSON (names, datatypes, shapes, values, BYTES elements)
are public: the gRPC codec (``grpc_tensors``) makes the same ones with the same messages.
"""

import base64
import binascii
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from ptserve.errors import (
    InvalidHeader,
    InvalidJSON,
    InvalidTensor,
    ModelFailure,
    describe_value,
)

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}  # fmt: skip
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {oip: np.dtype(name) for name, oip in DATATYPES.items()}
# Which kinds of JSON values (as numpy infers them) a tensor of each kind accepts: numbers for
# floats, integers for integers, true/false for BOOL. Never strings, never a silent truncation.
ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "true or false"}
Array = np.ndarray[Any, Any]
MISSING_HEADER = "; binary tensors need the Inference-Header-Content-Length header"
BYTES = "BYTES"
LENGTH_PREFIX = 4  # a BYTES element in binary: a little-endian uint32 length, then the bytes
UNSUPPORTED_PARAMETERS = ("classification", "shared_memory_region")  # of a requested output


# By dtype object: numpy computes dtype.name in Python, a few microseconds a request
_BY_DTYPE: dict[np.dtype[Any], str] = {np.dtype(name): oip for name, oip in DATATYPES.items()}


def datatype(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a numpy dtype, e.g. ``FP32`` for float32; KeyError when it has none."""
    found = _BY_DTYPE.get(dtype)
    return found if found is not None else DATATYPES[dtype.name]


@dataclass(frozen=True)
class WireSpec:
    """One model input as it travels: numpy dtype and per-sample shape (-1 = any length).

    ``content`` says what a BYTES tensor may carry in its place, one element per sample:
    ``"file"`` (an encoded image or file: raw bytes in binary, base64 in JSON) or ``"json"``
    (one instance as JSON text); ``dtype`` is None for an input that only takes BYTES.
    """

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int, ...]
    content: Literal["file", "json"] | None = None

    @functools.cached_property
    def datatype(self) -> str:
        """The OIP datatype requests must give for this input."""
        return BYTES if self.dtype is None else datatype(self.dtype)

    @functools.cached_property
    def datatypes(self) -> list[str]:
        """Every datatype this input accepts."""
        if self.dtype is None:
            return [BYTES]
        return [self.datatype, BYTES] if self.content else [self.datatype]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for, and whether it goes back as a binary tensor."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded, validated request: per model input, in the model's order, one batched array
    or (a BYTES tensor) one element per sample."""

    arrays: list[Array | list[Any]]
    outputs: list[RequestedOutput]
    id: str | None


def decode_request(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    inputs: Sequence[WireSpec],
    output_names: Sequence[str],
    max_batch: int,
    allow_nan: bool,
) -> InferRequest:
    """Validate an infer request against the model's inputs and outputs.

    ``header_length`` is the ``Inference-Header-Content-Length`` value (None: all JSON). Binary
    tensors become zero-copy views of ``body`` where alignment allows, writable when it is.
    """
    view = memoryview(body)
    binary = header_length is not None
    if header_length is None:
        header_length = len(view)
    elif header_length > len(view):
        raise InvalidHeader(
            f"Inference-Header-Content-Length is {header_length} but the body has only "
            f"{len(view)} bytes"
        )
    try:
        parsed = orjson.loads(view[:header_length])
    except orjson.JSONDecodeError as exc:
        hint = "" if binary or b"binary_data_size" not in bytes(view) else MISSING_HEADER
        raise InvalidJSON(f"malformed JSON: {exc}{hint}") from None
    request = _object(parsed, "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidTensor(f"id: expected a string, got {describe_value(request_id)}")
    parameters = _object(request.get("parameters", {}), "parameters")
    binary_outputs = _flag(parameters, "binary_data_output", "parameters")
    entries = request.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidTensor(
            f"inputs: expected a list of input tensors, got {describe_value(entries)}"
        )
    index = {spec.name: i for i, spec in enumerate(inputs)}
    arrays: list[Array | list[Any] | None] = [None] * len(inputs)
    offset = header_length
    for position, raw in enumerate(entries):
        entry = _object(raw, f"inputs[{position}]")
        name = known_name(entry.get("name"), f"inputs[{position}]", list(index), "input", "takes")
        if arrays[index[name]] is not None:
            raise InvalidTensor(f"input '{name}' is given twice")
        spec = inputs[index[name]]
        array, offset = _input(entry, spec, view, offset, binary, max_batch)
        if not isinstance(array, list):
            check_finite(array, spec, allow_nan)
        arrays[index[name]] = array
    if offset != len(view):
        raise InvalidTensor(
            f"the body has {len(view) - header_length} bytes after the JSON header but the "
            f"inputs' binary_data_size add up to {offset - header_length}"
        )
    outputs = _requested(request.get("outputs"), output_names, binary_outputs)
    return InferRequest(complete_inputs(inputs, arrays), outputs, request_id)


def known_name(name: Any, where: str, known: Sequence[str], kind: str, verb: str) -> str:
    """``name`` when it is one of ``known``, the model's names of this ``kind`` (input, output);
    ``verb`` says what the model does with them in the error (takes, gives)."""
    if not isinstance(name, str) or name not in known:
        raise InvalidTensor(f"{where}: unknown {kind} {name!r}; the model {verb} {_quoted(known)}")
    return name


def check_datatype(given: Any, accepted: Sequence[str], where: str) -> str:
    """``given`` when it is one of the ``accepted`` datatypes."""
    if given not in accepted:
        wanted = " or ".join(repr(d) for d in accepted)
        raise InvalidTensor(f"{where}: datatype {given!r} does not match the model's {wanted}")
    return str(given)


def check_finite(array: Array, spec: WireSpec, allow_nan: bool) -> None:
    """Refuse NaN and Infinity in a float input unless ``allow_nan``."""
    if not allow_nan and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidTensor(
            f"input '{spec.name}': NaN and Infinity are not allowed (nor values beyond "
            f"{spec.datatype}'s range); see the allow_nan setting"
        )


def complete_inputs(
    inputs: Sequence[WireSpec], arrays: Sequence[Array | list[Any] | None]
) -> list[Array | list[Any]]:
    """Every input decoded (in the model's order), with one batch size."""
    missing = [spec.name for spec, array in zip(inputs, arrays, strict=True) if array is None]
    if missing:
        raise InvalidTensor(f"missing input {_quoted(missing)}; the model takes {_names(inputs)}")
    batched = [array for array in arrays if array is not None]
    sizes = {spec.name: len(array) for spec, array in zip(inputs, batched, strict=True)}
    if len(set(sizes.values())) > 1:
        raise InvalidTensor(f"the inputs' batch sizes (first dims) differ: {sizes}")
    return batched


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, Array | list[bytes], bool]],
) -> tuple[bytes, int | None]:
    """The response body for ``(name, array, binary)`` outputs (a list of bytes is a BYTES
    tensor), and the JSON header's length when any output is binary (None: plain JSON)."""
    tensors: list[dict[str, Any]] = []
    raw: list[Any] = []
    for name, array, binary in outputs:
        if isinstance(array, list):
            tensors.append(_bytes_output(name, array, binary, raw))
            continue
        kind = output_datatype(name, array)
        flat = np.ascontiguousarray(array).reshape(-1)
        tensor: dict[str, Any] = {"name": name, "datatype": kind, "shape": list(array.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": flat.nbytes}
            raw.append(flat.data)
        else:
            tensor["data"] = flat
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)


def output_datatype(name: str, array: Array) -> str:
    """The datatype an output travels as; a 500 for a dtype no OIP datatype carries."""
    try:
        return datatype(array.dtype)
    except KeyError:
        raise ModelFailure(
            f"output '{name}' has dtype {array.dtype}, which no Open Inference Protocol "
            "datatype carries"
        ) from None


def pack_bytes(elements: Sequence[bytes]) -> bytes:
    """A binary BYTES tensor: each element as its little-endian uint32 length and its bytes."""
    return b"".join(len(e).to_bytes(LENGTH_PREFIX, "little") + e for e in elements)


def _bytes_output(name: str, elements: list[bytes], binary: bool, raw: list[Any]) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "datatype": BYTES, "shape": [len(elements)]}
    if binary:
        packed = pack_bytes(elements)
        tensor["parameters"] = {"binary_data_size": len(packed)}
        raw.append(packed)
    else:
        tensor["data"] = [e.decode("utf-8", "replace") for e in elements]
    return tensor


def _input(
    entry: dict[str, Any],
    spec: WireSpec,
    body: memoryview,
    offset: int,
    binary: bool,
    max_batch: int,
) -> tuple[Array | list[Any], int]:
    """One input's array (or a BYTES input's elements), and the offset of the next binary
    tensor (``binary``: the request has a binary part, as Inference-Header-Content-Length
    says)."""
    where = f"input '{spec.name}'"
    if check_datatype(entry.get("datatype"), spec.datatypes, where) == BYTES:
        return _bytes_input(entry, spec, body, offset, binary, max_batch)
    assert spec.dtype is not None
    shape = check_shape(entry.get("shape"), spec.shape, where, max_batch)
    count = math.prod(shape)  # Python ints: no int64 overflow for absurd shapes
    parameters = _object(entry.get("parameters", {}), f"{where}: parameters")
    if "shared_memory_region" in parameters:
        raise InvalidTensor(f"{where}: shared memory is not supported; send the data inline")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise InvalidTensor(f"{where}: no data; give 'data' or a binary tensor")
        return array_from_values(entry["data"], spec, shape, count, where), offset
    if "data" in entry:
        raise InvalidTensor(f"{where}: give either 'data' or binary_data_size, not both")
    if not binary:
        raise InvalidTensor(
            f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidTensor(f"{where}: binary_data_size must be a byte count, got {size!r}")
    expected = count * spec.dtype.itemsize
    if size != expected:
        raise InvalidTensor(
            f"{where}: binary_data_size is {size} but shape {shape} of {spec.datatype} "
            f"takes {expected} bytes"
        )
    if offset + size > len(body):
        raise InvalidTensor(
            f"{where}: binary_data_size is {size} but only {len(body) - offset} bytes of the "
            "body are left"
        )
    array = np.frombuffer(body, spec.dtype, count, offset).reshape(shape)
    if not array.flags.aligned:  # torch kernels may assume aligned data; a copy aligns it
        array = array.copy()
    return array, offset + size


def _bytes_input(
    entry: dict[str, Any],
    spec: WireSpec,
    body: memoryview,
    offset: int,
    binary: bool,
    max_batch: int,
) -> tuple[list[Any], int]:
    """A BYTES input: one element per sample (an encoded file, or an instance as JSON)."""
    where = f"input '{spec.name}'"
    shape = check_shape(entry.get("shape"), (), where, max_batch)
    count = shape[0]
    size = _object(entry.get("parameters", {}), f"{where}: parameters").get("binary_data_size")
    if size is None:
        data = entry.get("data")
        if (
            not isinstance(data, list)
            or len(data) != count
            or not all(isinstance(e, str) for e in data)
        ):
            raise InvalidTensor(f"{where}: BYTES data must be a list of {count} strings")
        return [_element(e, spec, f"{where}[{i}]") for i, e in enumerate(data)], offset
    if not binary:
        raise InvalidTensor(
            f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
        )
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(body) - offset:
        raise InvalidTensor(f"{where}: binary_data_size {size!r} does not fit the body")
    end = offset + size
    return unpack_bytes(body[offset:end], spec, shape, where), end


def unpack_bytes(packed: memoryview, spec: WireSpec, shape: list[int], where: str) -> list[Any]:
    """The elements of a binary BYTES tensor of ``shape`` (``[count]``), each a length-prefixed
    run of bytes: the bytes themselves, or (for a JSON input) the instance they encode."""
    elements: list[Any] = []
    position, end = 0, len(packed)
    while position < end:
        if position + LENGTH_PREFIX > end:
            raise InvalidTensor(f"{where}: a BYTES element's length runs past its tensor")
        length = int.from_bytes(packed[position : position + LENGTH_PREFIX], "little")
        position += LENGTH_PREFIX
        if position + length > end:
            raise InvalidTensor(f"{where}: a BYTES element runs past its tensor")
        raw = bytes(packed[position : position + length])
        position += length
        elements.append(bytes_element(raw, spec, f"{where}[{len(elements)}]"))
    if len(elements) != shape[0]:
        raise InvalidTensor(
            f"{where}: {len(elements)} BYTES elements; shape {shape} needs {shape[0]}"
        )
    return elements


def bytes_element(raw: bytes, spec: WireSpec, where: str) -> Any:
    """One BYTES element as it travels in binary: a file's bytes, or an instance's JSON text."""
    return _json_element(raw, where) if spec.content == "json" else raw


def _element(text: str, spec: WireSpec, where: str) -> Any:
    """One BYTES element given in JSON: JSON text of an instance, or a base64-encoded file."""
    if spec.content == "json":
        return _json_element(text.encode(), where)
    if text.startswith("data:") and "," in text:  # a data: URL's prefix is allowed
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTensor(f"{where}: not valid base64 (files travel as base64 in JSON)") from None


def _json_element(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidTensor(f"{where}: not a JSON instance ({exc})") from None


def array_from_values(
    data: Any, spec: WireSpec, shape: list[int], count: int, where: str, field: str = "data"
) -> Array:
    """``count`` values (nested or flat; ``field`` names them in errors) as an array of
    ``spec``'s dtype and ``shape``: numbers for floats, integers in range for integers,
    booleans for BOOL."""
    assert spec.dtype is not None
    try:
        values = np.asarray(data)
    except ValueError:
        raise InvalidTensor(
            f"{where}: {field} is nested unevenly; expected {count} values"
        ) from None
    kind = spec.dtype.kind
    if values.size and values.dtype.kind not in ACCEPTED_KINDS[kind]:
        raise InvalidTensor(
            f"{where}: {spec.datatype} data must be {KIND_WORDS[kind]}, "
            f"got {describe_value(values.reshape(-1)[:1].tolist()[0])}"
        )
    if values.size != count:
        raise InvalidTensor(
            f"{where}: {field} has {values.size} values; shape {shape} needs {count}"
        )
    if kind in "iu" and values.size:
        info = np.iinfo(spec.dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidTensor(f"{where}: {bad} is out of range for {spec.datatype}")
    with np.errstate(over="ignore"):  # a float beyond FP16's range becomes inf: refused below
        return values.astype(spec.dtype, copy=False).reshape(shape)


def check_shape(shape: Any, sample: tuple[int, ...], where: str, max_batch: int) -> list[int]:
    """Check ``shape`` is ``[batch, *sample]`` (-1 in ``sample``: any size)."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidTensor(f"{where}: shape must be a list of sizes, got {describe_value(shape)}")
    expected = [-1, *sample]
    fits = len(shape) == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, shape, strict=True)
    )
    if not fits:
        raise InvalidTensor(
            f"{where}: shape {shape} does not fit the model's {expected} (-1: any size)"
        )
    if not 1 <= shape[0] <= max_batch:
        raise InvalidTensor(
            f"{where}: the batch size (first dim) must be 1 to {max_batch}, got {shape[0]}"
        )
    return shape


def _requested(requested: Any, names: Sequence[str], binary_default: bool) -> list[RequestedOutput]:
    if requested is None:
        return [RequestedOutput(name, binary_default) for name in names]
    if not isinstance(requested, list) or not requested:
        raise InvalidTensor(
            f"outputs: expected a list of requested outputs (or none for all of them), "
            f"got {describe_value(requested)}"
        )
    chosen: list[RequestedOutput] = []
    for position, raw in enumerate(requested):
        entry = _object(raw, f"outputs[{position}]")
        name = known_name(entry.get("name"), f"outputs[{position}]", names, "output", "gives")
        if any(output.name == name for output in chosen):
            raise InvalidTensor(f"output '{name}' is requested twice")
        where = f"output '{name}': parameters"
        parameters = _object(entry.get("parameters", {}), where)
        for unsupported in UNSUPPORTED_PARAMETERS:
            if unsupported in parameters:
                raise InvalidTensor(f"{where}: {unsupported} is not supported")
        binary = _flag(parameters, "binary_data", where, binary_default)
        chosen.append(RequestedOutput(name, binary))
    return chosen


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidTensor(f"{where}: expected a JSON object, got {describe_value(value)}")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidTensor(f"{where}: {key} must be true or false, got {describe_value(value)}")
    return value


def _names(inputs: Sequence[WireSpec]) -> str:
    return _quoted([spec.name for spec in inputs])


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
