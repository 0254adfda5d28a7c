"""The pickle allowlist: torch.nn building blocks plus modules the operator trusts."""

import importlib
from collections.abc import Sequence

import torch

from ptserve.errors import ModelLoadError


def is_allowed(name: str, trusted: Sequence[str]) -> bool:
    """Whether the global ``module.attr`` may be imported while unpickling a model."""
    module = name.rpartition(".")[0]
    if any(module == t or module.startswith(t + ".") for t in trusted):
        return True
    return module.startswith("torch.nn.") and _is_nn_module_class(name)


def resolve_allowed(names: Sequence[str], trusted: Sequence[str], file: str) -> list[object]:
    """Import the globals a pickle needs, or refuse the file naming the ones not allowed."""
    refused = [name for name in names if not is_allowed(name, trusted)]
    if refused:
        raise ModelLoadError(
            f"{file}: refusing to unpickle; it would import {', '.join(refused)}, which are "
            "not torch.nn building blocks. If you trust this file, allow the defining modules "
            "with --trust-module MODULE, or load it without checks with --trust-pickle."
        )
    return [import_global(name) for name in names]


def _is_nn_module_class(name: str) -> bool:
    try:
        obj = import_global(name)
    except ImportError:
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def import_global(name: str) -> object:
    """The object ``module.attr`` names; ImportError when it cannot be imported."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot import {name}: {exc}") from exc
