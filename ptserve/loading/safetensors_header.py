"""A safetensors file's header, read and checked within limits (the weights are not read).

The header is JSON: ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``. It is parsed with bounded size and nesting, and each tensor must lie inside the
data that follows it, tile it without overlap and hold exactly its shape's bytes — the rules of
the safetensors library, checked here so that every failure is one line naming the tensor.
"""

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from ptserve.errors import ModelLoadError
from ptserve.loading.limits import MAX_SAFETENSORS_DEPTH, MAX_SAFETENSORS_HEADER, read_json

MAX_TENSORS = 1_000_000
MAX_DIMS = 64
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8,
    "F64": 8, "C64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class SafetensorsHeader:
    """The tensors a safetensors file holds: name -> (dtype, shape)."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]

    @property
    def elements(self) -> int:
        """How many numbers the file holds (its parameters and buffers)."""
        return sum(prod(shape) for _, shape in self.tensors.values())


def read_header(path: Path) -> SafetensorsHeader:
    """The checked header of the safetensors file ``path``; ModelLoadError (one line) when it
    is malformed, oversized, or describes tensors the file does not hold."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelLoadError(
                f"{path}: a safetensors header of {length} bytes in a file of {size}"
            )
        raw = f.read(length)
    where = f"{path}: safetensors header"
    header = read_json(raw, where, MAX_SAFETENSORS_DEPTH)
    if not isinstance(header, dict):
        raise ModelLoadError(f"{where}: not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{where}: __metadata__ must map names to strings")
    if len(header) > MAX_TENSORS:
        raise ModelLoadError(f"{where}: {len(header)} tensors; ptserve reads {MAX_TENSORS}")
    data_size = size - 8 - length
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(entry, f"{where}: tensor {name[:80]!r}")
        if not 0 <= begin <= end <= data_size:
            raise ModelLoadError(f"{where}: tensor {name[:80]!r} lies outside the file's data")
        if end - begin != prod(shape) * DTYPE_BYTES[dtype]:
            raise ModelLoadError(
                f"{where}: tensor {name[:80]!r} holds {end - begin} bytes, not the "
                f"{prod(shape)} {dtype} values of its shape"
            )
        tensors[name] = (dtype, shape)
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise ModelLoadError(f"{where}: tensor {name[:80]!r} overlaps another, or leaves a gap")
        position = end
    if position != data_size:
        raise ModelLoadError(f"{where}: {data_size - position} bytes of data belong to no tensor")
    return SafetensorsHeader(tensors)


def _entry(entry: Any, where: str) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor's dtype, shape and data offsets, each of the type the format requires."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ModelLoadError(f"{where}: needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ModelLoadError(f"{where}: unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_count(d) for d in shape):
        raise ModelLoadError(f"{where}: shape must be a list of at most {MAX_DIMS} sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)):
        raise ModelLoadError(f"{where}: data_offsets must be two byte positions")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
