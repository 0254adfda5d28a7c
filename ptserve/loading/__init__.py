"""Load a model file once: detect its format, check it is safe, resolve its input signature."""

import importlib.util
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ptserve.convert.manifest import is_converted_folder, sha256_of
from ptserve.errors import ModelLoadError, one_line
from ptserve.loading.detect import detect_format
from ptserve.loading.formats import LOADERS
from ptserve.settings import ModelFormat, Settings
from ptserve.signature import (
    DTYPE_NAMES,
    Signature,
    TensorSpec,
    check_forward,
    forward_inputs,
    read_example,
)

if TYPE_CHECKING:
    from ptserve.hooks import Hooks

log = logging.getLogger("ptserve")


@dataclass(frozen=True)
class FileFacts:
    """What can be said of a model file without running it."""

    path: Path
    format: ModelFormat
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to call, with its input signature (outputs are probed later)."""

    model: Callable[..., Any]
    facts: FileFacts
    signature: Signature
    parameters: int
    hooks: "Hooks | None" = None  # built-in pre- and post-processing (fastai learners)


def inspect_file(path: Path, forced: ModelFormat | None = None) -> FileFacts:
    """Format, size and sha256 of ``path``; raises ModelLoadError for a missing or unknown file.
    A folder written by ``ptserve convert`` is ``converted`` (sha256: of its manifest)."""
    if forced in (None, "converted") and is_converted_folder(path):
        from ptserve.convert.folder import folder_facts

        return FileFacts(path, "converted", *folder_facts(path))
    if path.is_dir():
        raise ModelLoadError(
            f"{path}: a folder, but not one 'ptserve convert' wrote (no valid ptserve.json)"
        )
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    with path.open("rb") as f:
        sha256 = sha256_of(f)
    fmt = forced or detect_format(path)
    return FileFacts(path, fmt, path.stat().st_size, sha256)


def load_model(settings: Settings, facts: FileFacts | None = None) -> LoadedModel:
    """Load ``settings.model_path`` onto ``settings.device``, in eval mode (``facts``: the
    file's, when the caller has read them already)."""
    if facts is None:
        facts = inspect_file(settings.model_path, settings.format)
    device = _device(settings.device)
    hooks = None
    model: Callable[..., Any]
    carried: Signature | None
    try:
        if facts.format == "fastai":
            model, carried, hooks = _load_fastai(facts.path, settings)
        elif facts.format == "converted":
            from ptserve.convert.folder import load_folder

            (model, carried), hooks = load_folder(facts.path, settings)
        else:
            model, carried = LOADERS[facts.format](facts.path, settings)
    except ModelLoadError:
        raise
    except Exception as exc:
        cause = one_line(exc)
        raise ModelLoadError(f"{facts.path}: cannot load as {facts.format}: {cause}") from None
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
        if facts.format not in ("export", "converted"):  # exported graphs: eval mode already
            model.eval()
    signature = resolve_signature(settings, model, carried)
    mismatch = check_forward(model, signature)
    if mismatch is not None:
        log.warning("%s: %s", facts.path, mismatch)
    log.info(
        "loaded %s (%s) on %s; inputs from %s", facts.path, facts.format, device, signature.source
    )
    return LoadedModel(model, facts, signature, _parameter_count(model), hooks)


def _load_fastai(path: Path, settings: Settings) -> tuple[torch.nn.Module, Signature, "Hooks"]:
    """A fastai export's model, signature and built-in hooks, loaded by fastai's own
    ``load_learner`` (imported lazily) when the operator trusts the file; refused otherwise."""
    if not settings.trust_pickle:
        raise ModelLoadError(fastai_refusal(path))
    if importlib.util.find_spec("fastai") is None:
        raise ModelLoadError(
            f"{path}: a fastai export, but fastai is not installed; install the fastai extra "
            "(see the README), or convert it where fastai is installed: ptserve convert"
        )
    from fastai.learner import load_learner

    from ptserve.learners import learner_parts

    log.warning("loading %s with --trust-pickle: the file can run any code", path)
    with warnings.catch_warnings():  # fastai's warning says what the line above says
        warnings.simplefilter("ignore", UserWarning)
        learn = load_learner(path, cpu=True)
    return learner_parts(learn, str(path), settings)


def fastai_refusal(path: Path) -> str:
    """Why a fastai export is refused without trust, and the two ways forward, in one line."""
    return (
        f"{path}: refusing to load a fastai Learner export: it is a full Python pickle, which "
        f"can run code when loaded. Convert it once to a pickle-free folder with 'ptserve "
        f"convert {path} OUT_DIR' and serve that with 'ptserve serve OUT_DIR', or, if you "
        "trust this file, serve it with --trust-pickle."
    )


def resolve_signature(
    settings: Settings, model: Callable[..., Any], carried: Signature | None
) -> Signature:
    """The input signature: settings, else the artefact's own, else an example file, else the
    first layer's width for a model that starts with ``nn.Linear`` and takes one input."""
    names = settings.input_names
    if settings.input_shape is not None:
        shapes = settings.input_shape
        if isinstance(shapes, list):
            shapes = {(names or ["input"])[0]: shapes}
        order = names or list(shapes)
        default = _float_dtype(model)
        specs = tuple(
            TensorSpec(n, _dtype(settings, n) or default, tuple(shapes[n])) for n in order
        )
        return Signature(specs, source="settings")
    if carried is not None:
        return _renamed(carried, names)
    example = settings.example_input or _beside(settings.model_path, ".example.npy", ".example.npz")
    if example is not None:
        try:
            return _renamed(read_example(example, names), names)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{example}: unreadable example input ({exc})") from None
    first = next((m for m in _leaves(model) if not isinstance(m, torch.nn.Identity)), None)
    inputs = forward_inputs(model)
    if isinstance(first, torch.nn.Linear) and (inputs is None or len(inputs) <= 1):
        dtype = _dtype(settings, (names or ["input"])[0]) or DTYPE_NAMES[first.weight.dtype]
        spec = TensorSpec("input", dtype, (first.in_features,))
        return _renamed(Signature((spec,), source="first nn.Linear layer"), names)
    raise ModelLoadError(f"{settings.model_path}: {_unknown_shape(settings.model_path, inputs)}")


def _dtype(settings: Settings, name: str) -> str | None:
    """The dtype the settings give input ``name`` (None: not given)."""
    dtype = settings.input_dtype
    return dtype.get(name) if isinstance(dtype, dict) else dtype


def _unknown_shape(path: Path, inputs: list[str] | None) -> str:
    """The advice for a model whose input shape nothing gives, fitted to forward's inputs."""
    example = f"save an example batch beside the model as {path.stem}.example"
    if inputs is not None and len(inputs) > 1:
        flags = " ".join(f"{n}=DIMS" for n in inputs)
        return (
            f"the input shapes are unknown; forward takes {len(inputs)} inputs "
            f"({', '.join(inputs)}): give a shape per input with --input-shape {flags} (DIMS "
            f"like 3,224,224), or {example}.npz with one array per input"
        )
    return (
        "the input shape is unknown; give it with --input-shape (e.g. --input-shape 3 224 224) "
        f"or {example}.npy"
    )


def _renamed(signature: Signature, names: list[str] | None) -> Signature:
    if not names:
        return signature
    if len(names) != len(signature.inputs):
        given = ", ".join(s.name for s in signature.inputs)
        count = f"{len(signature.inputs)} input{'s' if len(signature.inputs) != 1 else ''}"
        raise ModelLoadError(
            f"{len(names)} input names given ({', '.join(names)}) but the {signature.source} "
            f"gives {count} ({given}); give one name per input, or a shape per input: "
            "--input-shape NAME=DIMS ..."
        )
    specs = tuple(
        TensorSpec(n, s.dtype, s.shape) for n, s in zip(names, signature.inputs, strict=True)
    )
    return Signature(specs, source=signature.source, example=signature.example)


def _beside(path: Path, *suffixes: str) -> Path | None:
    real = path.resolve()
    return next((c for s in suffixes if (c := real.with_name(real.stem + s)).is_file()), None)


def _leaves(model: object) -> list[torch.nn.Module]:
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return []
    return [m for m in model.modules() if not list(m.children())]


def _float_dtype(model: object) -> str:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return DTYPE_NAMES[p.dtype]
    return "float32"


def _parameter_count(model: object) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    return 0


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {name!r}: MPS is not available on this machine")
    return device
