"""One loader per format. Each returns the callable model and, where the file carries one, its
signature; none of them executes code from the file unless the operator opted in."""

import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ptserve.errors import ModelLoadError
from ptserve.loading.archive import open_zip
from ptserve.loading.detect import pickle_globals
from ptserve.loading.mapped import map_export_weights
from ptserve.loading.safetensors_header import read_header
from ptserve.loading.safety import resolve_allowed, script_pickle
from ptserve.loading.torchscript import torchscript_problems
from ptserve.settings import Settings
from ptserve.signature import Signature

log = logging.getLogger("ptserve")
Loaded = tuple[Callable[..., Any], Signature | None]


def load_pickle(path: Path, settings: Settings) -> Loaded:
    """A whole pickled nn.Module, unpickled with torch's weights-only loader and our allowlist."""
    trusted = trusted_modules(settings)
    names = pickle_globals(path)
    add_import_paths(path)
    if settings.trust_pickle:
        unpickler = script_pickle(names, trusted, str(path))
        log.warning("loading %s with --trust-pickle: the file can run any code", path)
        model = torch.load(
            path, weights_only=False, map_location="cpu", mmap=True, pickle_module=unpickler
        )
        return _module(path, model), None
    try:
        allowed = resolve_allowed(names, trusted, str(path))
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
    """A safetensors file (memory-mapped, its header checked first), loaded into
    ``settings.model_class``."""
    read_header(path)
    return _into_class(path, load_file(path), settings), None


def _into_class(path: Path, state: dict[str, torch.Tensor], settings: Settings) -> torch.nn.Module:
    if settings.model_class is None:
        raise ModelLoadError(
            f"{path}: holds only weights; name the model class with --model-class module:Class"
        )
    add_import_paths(path)
    try:
        cls = import_object(settings.model_class)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    try:
        model = cls(**settings.model_kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: {settings.model_class}(**{json.dumps(settings.model_kwargs)}) failed: "
            f"{exc}; {_kwargs_hint(cls, settings.model_kwargs)}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path}: {settings.model_class} is not a torch.nn.Module")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        cause = " ".join(str(exc).split())
        hint = (
            "; were the weights saved from a model built with other arguments? Give those "
            "with --model-kwargs"
            if "size mismatch" in cause
            else ""
        )
        raise ModelLoadError(
            f"{path}: weights do not fit {settings.model_class}: {cause}{hint}"
        ) from None
    return model


def _kwargs_hint(cls: Any, given: dict[str, Any]) -> str:
    """Where a model class's constructor arguments go, naming the ones still missing."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a class whose signature Python cannot tell
        parameters = []
    needed = [
        p.name
        for p in parameters
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in given
    ]
    if not needed:
        return "constructor arguments go in --model-kwargs as JSON"
    example = ", ".join(f'"{name}": ...' for name in needed)
    return f"give the constructor's arguments with --model-kwargs '{{{example}}}'"


def load_torchscript(path: Path, settings: Settings) -> Loaded:
    """A TorchScript archive (torch.jit.save): its pickles go through TorchScript's own
    unpickler (``loading/torchscript.py`` says why that is safe); code that reads server files
    is refused unless the operator trusts the file."""
    problems = torchscript_problems(open_zip(path))
    if problems and not settings.trust_pickle:
        raise untrusted(path, problems)
    return torch.jit.load(str(path), map_location="cpu"), None  # type: ignore[no-untyped-call]


def load_export(path: Path, settings: Settings) -> Loaded:
    """A torch.export program (.pt2); its input specs become the signature.

    The archive is read as data first (``loading/export_archive.py``): one that would make
    torch unpickle or run code from the file is refused unless the operator trusts it.
    """
    # imported here: the checks need torch.export's serde and sympy (70 MB), as loading does
    from ptserve.loading.export_archive import example_problems, read_export

    archive = read_export(path)
    if settings.trust_pickle:
        log.warning("loading %s with --trust-pickle: the file can run any code", path)
    elif problems := archive.unsafe or example_problems(archive):
        raise untrusted(path, problems)
    signature = archive.signature()
    program = torch.export.load(path)
    map_export_weights(program, path)  # shared by --workers instead of one copy each
    return program.module(), signature


def untrusted(path: Path, problems: list[str]) -> ModelLoadError:
    """The one-line refusal of a file that would run code from itself if loaded: the first
    problem, how many more, and the opt-in."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ModelLoadError(
        f"{path}: refusing to load: {problems[0]}{more}. If you trust this file, load it "
        "with --trust-pickle."
    )


LOADERS: dict[str, Callable[[Path, Settings], Loaded]] = {
    "pickle": load_pickle,
    "state_dict": load_state_dict,
    "safetensors": load_safetensors,
    "torchscript": load_torchscript,
    "export": load_export,
}


def add_import_paths(model_path: Path) -> None:
    """Put the current folder and the model's folder on the import path (as ``python -m`` and
    ``python script.py`` do): that is where a user's model classes usually live."""
    for folder in (str(model_path.resolve().parent), ""):
        if folder not in sys.path:
            sys.path.insert(0, folder)


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


def trusted_modules(settings: Settings) -> list[str]:
    """The modules a pickle's classes may come from: --trust-module's and --model-class's."""
    model_class = [settings.model_class.partition(":")[0]] if settings.model_class else []
    return [*settings.trust_modules, *model_class]


def _module(path: Path, obj: object) -> torch.nn.Module:
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj
