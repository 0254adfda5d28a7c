"""Zip archives (torch.save, TorchScript, torch.export) read within limits.

The directory is checked before anything is read from it: entry count, names, sizes and
compression ratios are bounded, and the archive must list the same entries, once each, as
torch's own reader sees them. (Python's zipfile and torch's reader resolve a duplicated name to
different entries: ptserve would check one ``data.pkl`` while torch loaded the other.)
"""

import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ptserve.errors import ModelLoadError
from ptserve.loading.limits import (
    MAX_COMPRESSION_RATIO,
    MAX_ZIP_DIRECTORY_BYTES,
    MAX_ZIP_ENTRIES,
    MAX_ZIP_NAME,
)

END_OF_DIRECTORY = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
ZIP64_END = b"PK\x06\x06"
TORCH_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what torch's reader can read


@dataclass(frozen=True)
class ZipIndex:
    """A checked zip directory. Names are relative to the archive's top folder, as torch's
    reader gives them (``data.pkl`` for ``model/data.pkl``)."""

    path: str  # how messages name the archive: its file, or "file!entry" for a nested one
    source: Path | bytes
    root: str  # the top folder every entry is in, with its "/" ("" when entries have none)
    entries: dict[str, zipfile.ZipInfo]

    def size(self, name: str) -> int:
        """The uncompressed size of entry ``name``."""
        return self.entries[name].file_size

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of entry ``name``; refused when they would exceed ``limit``."""
        info = self.entries[name]
        if info.file_size > limit:
            raise ModelLoadError(
                f"{self.path}: entry {name} is {info.file_size} bytes; ptserve reads at most "
                f"{limit} of it"
            )
        try:
            with zipfile.ZipFile(_opened(self.source)) as archive, archive.open(info) as f:
                data = f.read(limit + 1)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise ModelLoadError(f"{self.path}: entry {name} is corrupt ({exc})") from None
        if len(data) > limit:  # a size field that lied
            raise ModelLoadError(f"{self.path}: entry {name} is larger than its header says")
        return data


def open_zip(path: Path, nested: tuple[str, bytes] | None = None) -> ZipIndex:
    """The checked directory of the zip archive at ``path`` (or of the archive stored in its
    entry ``nested = (name, bytes)``); ModelLoadError (one line) for an archive that is
    corrupt, too large to index, or laid out unlike torch's archives."""
    source: Path | bytes = path if nested is None else nested[1]
    where = str(path) if nested is None else f"{path}!{nested[0]}"
    size = path.stat().st_size if nested is None else len(nested[1])
    with _opened(source) as f:
        count, directory_bytes = _directory_extent(f, size, where)
    if count > MAX_ZIP_ENTRIES or directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise ModelLoadError(
            f"{path}: the archive lists {count} entries in {directory_bytes} bytes; ptserve "
            f"reads at most {MAX_ZIP_ENTRIES} entries and {MAX_ZIP_DIRECTORY_BYTES} bytes"
        )
    try:
        with zipfile.ZipFile(_opened(source)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{where}: corrupt archive ({exc})") from None
    for info in infos:
        _check_entry(info, size, where)
    root = _root(infos)
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename[len(root) :]
        if name in entries:
            raise ModelLoadError(f"{where}: the archive holds two entries named {info.filename}")
        entries[name] = info
    _check_torch_agrees(source, entries, where)
    return ZipIndex(where, source, root, entries)


def _opened(source: Path | bytes) -> BinaryIO:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _directory_extent(f: BinaryIO, size: int, path: str) -> tuple[int, int]:
    """Entry count and size of the central directory, from the end-of-directory record (read
    before zipfile builds the whole directory in memory)."""
    tail_size = min(size, 22 + 0xFFFF)  # the record, and a comment of at most 64 KiB
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    at = tail.rfind(END_OF_DIRECTORY)  # the last one, as zipfile and torch's reader take
    if at < 0 or len(tail) - at < 22:
        raise ModelLoadError(f"{path}: corrupt or truncated archive (no zip directory)")
    count, directory_bytes = struct.unpack("<10xHL6x", tail[at : at + 22])
    if count != 0xFFFF and directory_bytes != 0xFFFFFFFF:
        return int(count), int(directory_bytes)
    # zip64: a locator just before the record points at the zip64 end-of-directory record
    locator = tail[at - 20 : at] if at >= 20 else b""
    if len(locator) != 20 or locator[:4] != ZIP64_LOCATOR:
        raise ModelLoadError(f"{path}: corrupt archive (a zip64 directory without its locator)")
    (offset,) = struct.unpack("<8xQ4x", locator)
    if offset > size - 56:
        raise ModelLoadError(f"{path}: corrupt archive (the zip64 directory is out of bounds)")
    f.seek(offset)
    record = f.read(56)
    if record[:4] != ZIP64_END:
        raise ModelLoadError(f"{path}: corrupt archive (no zip64 directory record)")
    count, directory_bytes = struct.unpack("<32xQQ8x", record)
    return int(count), int(directory_bytes)


def _check_entry(info: zipfile.ZipInfo, size: int, path: str) -> None:
    name = info.filename
    shown = name[:80] + ("..." if len(name) > 80 else "")
    if not name or len(name) > MAX_ZIP_NAME:
        raise ModelLoadError(
            f"{path}: an entry name of {len(name)} characters (at most {MAX_ZIP_NAME})"
        )
    if any(ord(c) < 32 for c in name) or name.startswith("/") or ".." in name.split("/"):
        raise ModelLoadError(f"{path}: entry name {shown!r} is not a plain relative path")
    if info.compress_type not in TORCH_METHODS:
        raise ModelLoadError(
            f"{path}: entry {shown} uses compression method {info.compress_type}, which torch "
            "cannot read"
        )
    if info.header_offset + info.compress_size > size:
        raise ModelLoadError(f"{path}: entry {shown} reaches past the end of the file")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise ModelLoadError(f"{path}: entry {shown} is stored with two different sizes")
    if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise ModelLoadError(
            f"{path}: entry {shown} would inflate {info.compress_size} bytes to "
            f"{info.file_size} (more than {MAX_COMPRESSION_RATIO}:1)"
        )


def _root(infos: list[zipfile.ZipInfo]) -> str:
    """The top folder that holds every entry (torch's archives have one), or ""."""
    names = [info.filename for info in infos]
    first = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    return first if first and all(n.startswith(first) for n in names) else ""


def _check_torch_agrees(
    source: Path | bytes, entries: dict[str, zipfile.ZipInfo], path: str
) -> None:
    """Refuse an archive whose entries torch's own zip reader lists differently."""
    try:
        opened = str(source) if isinstance(source, Path) else io.BytesIO(source)
        records = torch._C.PyTorchFileReader(opened).get_all_records()
    except RuntimeError:
        return  # not an archive torch can read at all; its loader will refuse it
    if len(records) != len(entries) or set(records) != set(entries):
        raise ModelLoadError(
            f"{path}: torch's zip reader lists other entries than the archive's directory "
            f"({len(records)} vs {len(entries)}); refusing an ambiguous archive"
        )
