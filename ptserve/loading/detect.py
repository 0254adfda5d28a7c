"""Tell a model file's format from its content, not its suffix."""

import _compat_pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any, cast

import torch

from ptserve.errors import ModelLoadError
from ptserve.loading.archive import ZipIndex, open_zip
from ptserve.loading.limits import (
    MAX_PICKLE_BYTES,
    MAX_PICKLE_OPS,
    MAX_SAFETENSORS_DEPTH,
    MAX_SAFETENSORS_HEADER,
    read_json,
)
from ptserve.settings import ModelFormat

PICKLE_PROTOCOL_2_PLUS = 0x80
ZIP_MAGIC = b"PK\x03\x04"


def detect_format(path: Path) -> ModelFormat:
    """The format of ``path``; raises ModelLoadError when it is none ptserve knows."""
    with path.open("rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path):
        return _zip_format(open_zip(path))
    if head[:4] == ZIP_MAGIC:
        raise ModelLoadError(f"{path}: corrupt or truncated archive")
    if _is_safetensors(path, head):
        return "safetensors"
    if head[:1] == bytes([PICKLE_PROTOCOL_2_PLUS]):
        raise ModelLoadError(
            f"{path}: a legacy (pre-1.6, non-zip) torch.save file; ptserve cannot check it "
            "for unsafe code. Re-save it with a current torch.save."
        )
    raise ModelLoadError(
        f"{path}: unknown model format (not a torch.save, TorchScript, torch.export or "
        "safetensors file)"
    )


def _zip_format(index: ZipIndex) -> ModelFormat:
    names = index.entries
    if "models/model.json" in names or "serialized_exported_program.json" in names:
        return "export"
    if "constants.pkl" in names and any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        found = archive_globals(index)
        if any(name.startswith("fastai.") for name in found):
            return "fastai"
        return "pickle" if found else "state_dict"
    raise ModelLoadError(f"{index.path}: a zip archive, but not one torch wrote")


def pickle_globals(path: Path) -> list[str]:
    """Globals a torch.save pickle would import beyond torch's weights-only defaults, in the
    order they first appear.

    Reads the pickle opcodes only; nothing in the file is executed.
    """
    return archive_globals(open_zip(path))


def archive_globals(index: ZipIndex, record: str = "data.pkl") -> list[str]:
    """Globals beyond torch's weights-only defaults that the pickle ``record`` of a checked
    archive names (its opcodes are read, never run)."""
    if record not in index.entries:
        raise ModelLoadError(f"{index.path}: not a torch.save archive (no {record})")
    data = index.read(record, MAX_PICKLE_BYTES)
    try:
        names = _globals_in(data)
    except PickleTooLong as exc:
        raise ModelLoadError(f"{index.path}: {record} {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"{index.path}: corrupt torch.save file ({exc})") from None
    safe = torch._weights_only_unpickler._get_allowed_globals()
    return [name for name in names if name not in safe]


class PickleTooLong(ValueError):
    """A pickle with more opcodes than ptserve reads."""


STRING_OPCODES = frozenset(
    {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
     "SHORT_BINSTRING"}
)  # fmt: skip


def _globals_in(data: bytes) -> list[str]:
    """Every global a pickle names: GLOBAL and INST carry theirs; STACK_GLOBAL (protocol 4+)
    takes two strings from the stack, pushed just before or fetched from the memo."""
    found: dict[str, None] = {}  # an ordered set
    memo: dict[int, str | None] = {}
    protocol = 0
    pushed: list[str | None] = []  # what the latest opcodes pushed, while it is known
    for count, (opcode, value, _) in enumerate(pickletools.genops(data)):
        if count >= MAX_PICKLE_OPS:
            raise PickleTooLong(f"has more than {MAX_PICKLE_OPS} opcodes; ptserve reads no more")
        op, arg = opcode.name, cast(Any, value)
        if op == "FRAME":  # protocol 4 framing: may fall between a STACK_GLOBAL's two names
            continue
        if op == "PROTO":
            protocol = int(arg)
        elif op in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            found[_python3_name(module, name, protocol)] = None
            pushed = []
        elif op == "STACK_GLOBAL":
            names = pushed[-2:]
            if len(names) != 2 or None in names:
                raise ValueError("a STACK_GLOBAL whose names are not plain strings")
            found[f"{names[0]}.{names[1]}"] = None
            pushed = []
        elif op in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op == "MEMOIZE" else int(arg)] = pushed[-1] if pushed else None
        elif op in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
        elif op in STRING_OPCODES:
            pushed.append(str(arg))
        else:
            pushed = []
    return list(found)


def _python3_name(module: str, name: str, protocol: int) -> str:
    """``module.name`` as Python 3 unpickles it (protocol 2 pickles say ``__builtin__``)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _is_safetensors(path: Path, head: bytes) -> bool:
    """Whether ``path`` starts like a safetensors file: a little-endian header length that fits
    the file, then a JSON object. A header that starts so but is no valid, bounded JSON object
    is refused here, in one line."""
    if len(head) < 8:
        return False
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(path.stat().st_size - 8, MAX_SAFETENSORS_HEADER):
        return False
    with path.open("rb") as f:
        f.seek(8)
        header = f.read(header_len)
    if not header.lstrip(b" ").startswith(b"{"):
        return False
    value = read_json(header, f"{path}: safetensors header", MAX_SAFETENSORS_DEPTH)
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: the safetensors header is not a JSON object")
    return True
