"""Limits on what ptserve parses from a model file's bytes, and a bounded JSON reader.

A model file may come from anyone. Every parser that reads it (zip directories, JSON headers
and programs, pickle opcodes) stops at these limits with a one-line refusal, before a hostile
file can exhaust memory, time or the interpreter's stack. Each limit is far above what torch,
safetensors and torch.export write for real models.
"""

import json
from typing import Any

from ptserve.errors import ModelLoadError

MAX_JSON_BYTES = 256 * 1024 * 1024  # a torch.export program of a very large graph is ~50 MB
MAX_JSON_DEPTH = 256  # torch.export programs nest ~10 levels per subgraph
MAX_ZIP_ENTRIES = 1_000_000  # torch.save writes one entry per tensor storage
MAX_ZIP_DIRECTORY_BYTES = 256 * 1024 * 1024
MAX_ZIP_NAME = 1024
MAX_COMPRESSION_RATIO = 100  # torch stores entries uncompressed; deflate rarely passes 10:1
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # the pickle holds structure only; tensors are entries
MAX_PICKLE_OPS = 10_000_000
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit
MAX_SAFETENSORS_DEPTH = 8  # the format nests 3 levels: {name: {"shape": [...]}}


def read_json(data: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed as JSON, refusing (ModelLoadError, one line naming ``where``) input that
    is too large, not JSON, or nested deeper than ``max_depth``."""
    if len(data) > MAX_JSON_BYTES:
        raise ModelLoadError(
            f"{where}: {len(data)} bytes of JSON; ptserve reads at most {MAX_JSON_BYTES}"
        )
    try:
        value = json.loads(data)
    except RecursionError:  # the C parser gives up on deep nesting before the stack does
        raise ModelLoadError(f"{where}: JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise ModelLoadError(f"{where}: not valid JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise ModelLoadError(f"{where}: JSON nested deeper than {max_depth} levels")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is depth 0);
    iterative, so no input can exhaust the stack."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in item)
    return deepest
