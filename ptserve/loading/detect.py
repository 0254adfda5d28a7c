"""Tell a model file's format from its content, not its suffix."""

import json
import struct
import zipfile
from pathlib import Path

import torch

from ptserve.errors import ModelLoadError
from ptserve.settings import ModelFormat

PICKLE_PROTOCOL_2_PLUS = 0x80
ZIP_MAGIC = b"PK\x03\x04"


def detect_format(path: Path) -> ModelFormat:
    """The format of ``path``; raises ModelLoadError when it is none ptserve knows."""
    with path.open("rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path):
        return _zip_format(path)
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


def _zip_format(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{path}: corrupt archive ({exc})") from None
    inner = {name.split("/", 1)[-1] for name in names}
    if "models/model.json" in inner or any(
        n.endswith("serialized_exported_program.json") for n in inner
    ):
        return "export"
    if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        names = pickle_globals(path)
        if any(name.startswith("fastai.") for name in names):
            return "fastai"
        return "pickle" if names else "state_dict"
    raise ModelLoadError(f"{path}: a zip archive, but not one torch wrote")


def pickle_globals(path: Path) -> list[str]:
    """Globals a torch.save pickle would import beyond torch's weights-only defaults.

    Reads the pickle opcodes only; nothing in the file is executed.
    """
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: corrupt torch.save file ({exc})") from None


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 8:
        return False
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(path.stat().st_size - 8, 100_000_000):
        return False
    with path.open("rb") as f:
        f.seek(8)
        header = f.read(header_len)
    try:
        return isinstance(json.loads(header), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
