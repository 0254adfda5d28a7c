"""Example batches (``.npy``, or ``.npz`` of named arrays) read within limits, never unpickled.

numpy allocates an array from the shape its header states before reading the data, and
inflates compressed ``.npz`` members in full; a small hostile file could claim terabytes.
Here every member's header is checked against the bytes that actually hold it first.
"""

import io
import zipfile
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

MAX_EXAMPLE_BYTES = 256 * 1024 * 1024  # decoded, all arrays together
MAX_ARRAYS = 1024
MAX_RATIO = 100  # of an .npz member's decompressed to compressed size

Array = np.ndarray[Any, Any]


def read_arrays(path: Path) -> Array | dict[str, Array]:
    """The array of an ``.npy`` file, or the named arrays of an ``.npz``; ValueError (one line)
    for a file that is not one, holds objects, or claims more data than it has."""
    if path.stat().st_size > MAX_EXAMPLE_BYTES:
        raise ValueError(f"larger than {MAX_EXAMPLE_BYTES} bytes")
    if not zipfile.is_zipfile(path):
        return _array(path.read_bytes(), path.name)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ARRAYS:
                raise ValueError(f"{len(members)} arrays; at most {MAX_ARRAYS} are read")
            total = sum(m.file_size for m in members)
            if total > MAX_EXAMPLE_BYTES or any(
                m.file_size > MAX_RATIO * max(m.compress_size, 1) for m in members
            ):
                raise ValueError("its arrays inflate beyond the example size limit")
            return {
                m.filename.removesuffix(".npy"): _array(archive.read(m), m.filename)
                for m in members
            }
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"a corrupt .npz ({exc})") from None


def _array(data: bytes, where: str) -> Array:
    """One ``.npy`` payload, its header checked against its length before numpy allocates."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects, which are never unpickled")
    if prod(shape) * dtype.itemsize > len(data) - f.tell():
        raise ValueError(f"{where}: its header claims {shape} {dtype}, more than the file holds")
    f.seek(0)
    array: Array = np.lib.format.read_array(f, allow_pickle=False)
    return array
