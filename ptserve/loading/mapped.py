"""A ``torch.export`` program's weights as views of its file, so ``--workers N`` share them.

``torch.export.load`` reads every weight into memory (torch 2.13 has no mmap option), so N
workers would hold N copies. A ``.pt2`` is a zip whose records are stored uncompressed (and
64-byte aligned), each weight one record listed in the archive's weights config. Here the file
is mapped once, copy-on-write as ``torch.load(mmap=True)`` maps a checkpoint, and every weight
read by torch is replaced by a view of its record once the view is seen to hold the same
values; the copies are then freed. A weight that cannot be mapped (pickled, compressed,
misaligned, not on the CPU) keeps torch's copy.
"""

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header: 30 bytes


def map_export_weights(program: Any, path: Path) -> int:
    """Swap ``program``'s weights for views of the mapped file; returns how many were."""
    records, config = _records(path)
    if config is None:
        return 0
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    assert isinstance(storage, torch.UntypedStorage)
    weights: dict[str, torch.Tensor] = program.state_dict
    mapped = 0
    for fqn, meta in config.items():
        loaded = weights.get(fqn)
        where = records.get(meta.get("path_name", ""))
        if loaded is None or where is None or meta.get("use_pickle"):
            continue
        view = _view(storage, where, loaded)
        if view is None:
            continue
        if isinstance(loaded, torch.nn.Parameter):
            view = torch.nn.Parameter(view, requires_grad=loaded.requires_grad)
        weights[fqn] = view
        mapped += 1
    return mapped


def _records(path: Path) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Offsets of the stored weight records (by their name in the config), and the config."""
    offsets: dict[str, int] = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        names = [n for n in archive.namelist() if n.endswith(WEIGHTS_CONFIG)]
        if len(names) != 1:
            return offsets, None
        folder = names[0][: -len("model_weights_config.json")]
        config = json.loads(archive.read(names[0])).get("config", {})
        for info in archive.infolist():
            if not info.filename.startswith(folder) or info.compress_type != zipfile.ZIP_STORED:
                continue
            raw.seek(info.header_offset)
            header = LOCAL_HEADER.unpack(raw.read(LOCAL_HEADER.size))
            name_length, extra_length = header[-2], header[-1]
            start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
            offsets[info.filename[len(folder) :]] = start
    return offsets, config


def _view(storage: torch.UntypedStorage, start: int, loaded: torch.Tensor) -> torch.Tensor | None:
    """``loaded`` as a view of the mapped file at byte ``start``, if it holds the same values."""
    size = loaded.element_size()
    if loaded.device.type != "cpu" or start % size:
        return None
    begin = start // size + loaded.storage_offset()
    end = begin + sum((s - 1) * st for s, st in zip(loaded.shape, loaded.stride(), strict=True))
    if loaded.numel() and (end + 1) * size > storage.nbytes():
        return None
    view = torch.empty(0, dtype=loaded.dtype)
    view.set_(storage, begin, loaded.size(), loaded.stride())
    return view if torch.equal(view, loaded) else None
