"""One loader per format. Each returns the callable model and, where the file carries one, its
signature; none of them executes code from the file unless the operator opted in."""

import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ptserve.errors import ModelLoadError
from ptserve.loading.detect import pickle_globals
from ptserve.loading.mapped import map_export_weights
from ptserve.loading.safety import resolve_allowed
from ptserve.settings import Settings
from ptserve.signature import Signature, spec_from_tensor

log = logging.getLogger("ptserve")
Loaded = tuple[Callable[..., Any], Signature | None]


def load_pickle(path: Path, settings: Settings) -> Loaded:
    """A whole pickled nn.Module, unpickled with torch's weights-only loader and our allowlist."""
    if settings.trust_pickle:
        log.warning("loading %s with --trust-pickle: the file can run any code", path)
        whole = torch.load(path, weights_only=False, map_location="cpu", mmap=True)
        return _module(path, whole), None
    trusted = [*settings.trust_modules, *_class_module(settings)]
    try:
        allowed = resolve_allowed(pickle_globals(path), trusted, str(path))
    except ImportError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    with torch.serialization.safe_globals(allowed):  # type: ignore[arg-type]
        return _module(
            path, torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        ), None


def load_state_dict(path: Path, settings: Settings) -> Loaded:
    """A state_dict saved by torch.save, loaded into ``settings.model_class``."""
    state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return _into_class(path, state, settings), None


def load_safetensors(path: Path, settings: Settings) -> Loaded:
    """A safetensors file (memory-mapped), loaded into ``settings.model_class``."""
    return _into_class(path, load_file(path), settings), None


def _into_class(path: Path, state: dict[str, torch.Tensor], settings: Settings) -> torch.nn.Module:
    if settings.model_class is None:
        raise ModelLoadError(
            f"{path}: holds only weights; name the model class with --model-class module:Class"
        )
    try:
        cls = import_object(settings.model_class)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    try:
        model = cls(**settings.model_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{path}: {settings.model_class}(...) failed: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path}: {settings.model_class} is not a torch.nn.Module")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        cause = " ".join(str(exc).split())
        raise ModelLoadError(
            f"{path}: weights do not fit {settings.model_class}: {cause}"
        ) from None
    return model


def load_torchscript(path: Path, settings: Settings) -> Loaded:
    """A TorchScript archive (torch.jit.save)."""
    return torch.jit.load(str(path), map_location="cpu"), None  # type: ignore[no-untyped-call]


def load_export(path: Path, settings: Settings) -> Loaded:
    """A torch.export program (.pt2); its input specs become the signature."""
    program = torch.export.load(path)
    map_export_weights(program, path)  # shared by --workers instead of one copy each
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        dynamic = frozenset(i for i, d in enumerate(value.shape) if isinstance(d, torch.SymInt))
        if 0 not in dynamic:
            raise ModelLoadError(
                f"{path}: exported with a fixed batch of {value.shape[0]}; export with "
                "dynamic_shapes={...: {0: Dim('batch')}} and an example batch of 2 or more"
            )
        concrete = torch.empty(
            [1 if isinstance(d, torch.SymInt) else d for d in value.shape],
            dtype=value.dtype,
            device="meta",
        )
        specs.append(spec_from_tensor(name, concrete, dynamic))
    return program.module(), Signature(tuple(specs), source="torch.export input specs")


LOADERS: dict[str, Callable[[Path, Settings], Loaded]] = {
    "pickle": load_pickle,
    "state_dict": load_state_dict,
    "safetensors": load_safetensors,
    "torchscript": load_torchscript,
    "export": load_export,
}


def import_object(target: str) -> Any:
    """Import ``module:attr``; the working directory is searched like ``python -m`` does."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model class {target!r}: expected the form module:Class")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"model class {target}: cannot import it ({exc})") from None
    return obj


def _class_module(settings: Settings) -> list[str]:
    return [settings.model_class.partition(":")[0]] if settings.model_class else []


def _module(path: Path, obj: object) -> torch.nn.Module:
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj
