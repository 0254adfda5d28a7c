"""``ptserve info``: what a model file is, and whether ``serve`` would take it.

Everything is read from the file as data (zip directories, pickle opcodes, JSON headers and
programs, example arrays); nothing in it is unpickled or executed, and no trusted module is
imported. Facts that need the model itself (parameter count, output shapes, what ``forward``
takes) come only with ``load=True`` (``--load``), which loads the file under exactly the rules
of ``serve``.
"""

from dataclasses import dataclass, field
from inspect import Parameter
from inspect import signature as python_signature
from pathlib import Path
from typing import Any, cast

import torch

from ptserve.errors import ModelLoadError
from ptserve.loading import (
    FileFacts,
    fastai_refusal,
    inspect_file,
    load_model,
    resolve_signature,
)
from ptserve.loading.archive import open_zip
from ptserve.loading.detect import pickle_globals
from ptserve.loading.formats import trusted_modules, untrusted
from ptserve.loading.safetensors_header import read_header
from ptserve.loading.safety import is_allowed, resolve_allowed
from ptserve.loading.torchscript import torchscript_globals, torchscript_problems
from ptserve.runner import Runner
from ptserve.settings import Settings
from ptserve.signature import Signature

SAFETY = {
    "pickle": "a pickled nn.Module: unpickled weights-only, allowing torch.nn building blocks "
    "and --trust-module modules only",
    "state_dict": "weights only, unpickled weights-only (needs --model-class)",
    "safetensors": "weights only, no pickle at all (needs --model-class)",
    "torchscript": "a TorchScript program: its pickles are read by TorchScript's own "
    "unpickler, which imports no Python; code that reads server files is refused",
    "export": "a torch.export program: no pickle unless the archive asks for one (refused); "
    "carries its signature",
    "fastai": "a fastai Learner export (learn.export()): a full Python pickle that can run code "
    "when loaded; refused without --trust-pickle. Convert it once to a pickle-free folder: "
    "ptserve convert FILE OUT_DIR",
    "converted": "a folder written by ptserve convert: a torch.export program (checked as one) "
    "and the learner's preprocessing and decoding as JSON; no pickle",
}
WEIGHTS_ONLY = ("pickle", "state_dict", "safetensors")  # the first nn.Linear can say the shape
NO_IMPORTS = "none beyond torch's weights-only types (tensors, dicts, lists)"
UNKNOWN_UNTIL_LOADED = "from the model's first nn.Linear, if it has one (--load tells)"


@dataclass
class Description:
    """What ``ptserve info`` prints, and the one-line reason ``serve`` would refuse the file
    (None when it would serve it)."""

    facts: dict[str, Any]
    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)


def describe_file(settings: Settings, load: bool = False) -> Description:
    """Format, safety, size, sha256, the globals a pickle would import and each one's verdict,
    the signature where the file or the settings carry it, and whether ``serve`` would refuse
    the file (and why). With ``load``, the file is loaded as ``serve`` loads it and its
    parameters, outputs and forward arity are added.

    Raises ModelLoadError when the file is missing or no model format ptserve reads.
    """
    facts = inspect_file(settings.model_path, settings.format)
    described = Description(
        {
            "file": str(facts.path),
            "format": facts.format,
            "safety": SAFETY[facts.format],
            "size_bytes": facts.size_bytes,
            "sha256": facts.sha256,
        }
    )
    carried: Signature | None = None
    try:
        carried = _read(facts, settings, described)
    except ModelLoadError as exc:
        described.refusal = str(exc)
    if described.refusal is None:
        _signature(facts, settings, carried, described)
    if described.refusal is None and load:
        _load(settings, facts, described)
    if described.warnings:
        described.facts["warnings"] = described.warnings
    described.facts["serve"] = (
        f"refused: {described.refusal}" if described.refusal else _verdict(facts, settings, load)
    )
    return described


def _read(facts: FileFacts, settings: Settings, described: Description) -> Signature | None:
    """The format's own facts, read as data; raises ModelLoadError where serve would refuse.
    Returns the signature the file carries, if any."""
    path, out = facts.path, described.facts
    if facts.format == "fastai":  # information only: no verdict, nothing of it is imported
        out["imports"] = pickle_globals(path)
        if not settings.trust_pickle:
            raise ModelLoadError(fastai_refusal(path))
        return None
    if facts.format == "converted":
        return _converted(path, settings, out)
    if facts.format in ("pickle", "state_dict"):
        trusted = trusted_modules(settings)
        names = pickle_globals(path)
        out["imports"] = [
            f"{name} ({'allowed' if is_allowed(name, trusted) else 'refused'})" for name in names
        ] or NO_IMPORTS
        if not settings.trust_pickle and any(not is_allowed(n, trusted) for n in names):
            resolve_allowed(names, trusted, str(path))  # raises with serve's own message
    if facts.format in ("state_dict", "safetensors") and settings.model_class is None:
        raise ModelLoadError(
            f"{path}: holds only weights; name the model class with --model-class module:Class"
        )
    if facts.format == "safetensors":
        header = read_header(path)
        out["weights"] = f"{header.elements} values in {len(header.tensors)} tensors"
    if facts.format == "torchscript":
        index = open_zip(path)
        out["imports"] = [
            f"{name} (refused by TorchScript's unpickler)" for name in torchscript_globals(index)
        ] or "TorchScript classes and torch's weights-only types only"
        if (problems := torchscript_problems(index)) and not settings.trust_pickle:
            raise untrusted(path, problems)
    if facts.format == "export":
        from ptserve.loading.export_archive import read_export  # torch.export's serde: heavy

        archive = read_export(path)
        out["parameters"] = archive.parameters
        if archive.unsafe and not settings.trust_pickle:
            raise untrusted(path, archive.unsafe)
        return archive.signature()
    return None


def _converted(path: Path, settings: Settings, out: dict[str, Any]) -> Signature:
    """A folder of ``ptserve convert``: its manifest and its program, read as data."""
    from ptserve.convert.folder import read_folder
    from ptserve.loading.export_archive import read_export

    manifest = read_folder(path)
    out["learner"] = manifest.learner
    out["converted from"] = f"{manifest.source.file} (fastai {manifest.source.fastai})"
    if manifest.check is not None:
        check = manifest.check
        out["check"] = (
            f"{check.samples} samples, max difference {check.max_abs_difference:.1e} in "
            f"{check.compared} (tolerance {check.tolerance:g})"
        )
    archive = read_export(path / manifest.model.file)
    out["parameters"] = archive.parameters
    if archive.unsafe and not settings.trust_pickle:
        raise untrusted(path / manifest.model.file, archive.unsafe)
    return archive.signature()


def _signature(
    facts: FileFacts, settings: Settings, carried: Signature | None, described: Description
) -> None:
    """The input signature from the settings, the file or an example beside it; serve's own
    rules, without the model (its first nn.Linear is only known once it is loaded)."""
    try:
        signature = resolve_signature(settings, _not_loaded, carried)
    except ModelLoadError as exc:
        if facts.format in WEIGHTS_ONLY:
            described.facts["inputs"] = UNKNOWN_UNTIL_LOADED
        elif facts.format not in ("fastai", "converted"):  # a learner's: from its preprocessing
            described.refusal = str(exc)
        return
    described.facts["inputs"] = _specs(signature)
    described.facts["signature source"] = signature.source


def _load(settings: Settings, facts: FileFacts, described: Description) -> None:
    """Load the model as serve does, and probe it: parameters, outputs, forward's arity."""
    try:
        loaded = load_model(settings, facts)
    except ModelLoadError as exc:
        described.refusal = str(exc)
        return
    described.facts["parameters"] = loaded.parameters
    if (warning := arity_warning(loaded.model, loaded.signature)) is not None:
        described.warnings.append(warning)  # before the probe, which then fails: say why
    runner = Runner(loaded.model, settings.device, loaded.signature)
    try:
        signature = runner.probe(loaded.signature, settings.output_names)
    except ModelLoadError as exc:
        described.refusal = f"{settings.model_path}: {exc}"
        return
    finally:
        runner.close()
    described.facts["inputs"] = _specs(signature)
    described.facts["signature source"] = signature.source
    described.facts["outputs"] = _specs(signature, outputs=True)


def arity_warning(model: Any, signature: Signature) -> str | None:
    """A warning when ``forward`` needs more inputs than the signature gives it."""
    if isinstance(model, torch.jit.ScriptModule):
        arguments = cast(Any, model).forward.schema.arguments[1:]  # without self
        needed = [a.name for a in arguments if not a.has_default_value()]
    else:
        try:
            parameters = python_signature(model.forward).parameters.values()
        except (TypeError, ValueError, AttributeError):
            return None
        positional = (Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD)
        needed = [p.name for p in parameters if p.kind in positional and p.default is p.empty]
    if len(needed) <= len(signature.inputs):
        return None
    return (
        f"forward takes {len(needed)} inputs ({', '.join(needed)}) but the signature has "
        f"{len(signature.inputs)}; name and shape each one (--input-names, --input-shape) or "
        "save an .npz example with one array per input beside the model"
    )


def _verdict(facts: FileFacts, settings: Settings, load: bool) -> str:
    if settings.trust_pickle and facts.format in ("pickle", "fastai", "export", "torchscript"):
        return "would load with --trust-pickle: the file can run any code"
    if load:
        return "loads and answers the shape probe"
    return "would load (loading checks run with --load)"


def _not_loaded(*args: Any) -> Any:
    """Stands for the model where serve's rules would look at it: info never loads one, so a
    shape that only the model could tell stays unknown."""
    raise AssertionError("ptserve info never calls the model")


def _specs(signature: Signature, outputs: bool = False) -> list[str]:
    specs = signature.outputs if outputs else signature.inputs
    return [f"{s.name}: {s.dtype} {list(s.shape)} per sample" for s in specs]
