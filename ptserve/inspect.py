"""``ptserve info``: what a model file is, without running code from it."""

from typing import Any

from ptserve.errors import ModelLoadError
from ptserve.loading import inspect_file, load_model
from ptserve.loading.detect import pickle_globals
from ptserve.loading.safety import is_allowed
from ptserve.settings import Settings

SAFETY = {
    "pickle": "a pickled nn.Module: unpickled weights-only, allowing torch.nn building blocks "
    "and --trust-module modules only",
    "state_dict": "weights only, no code (needs --model-class)",
    "safetensors": "weights only, no pickle at all (needs --model-class); preferred",
    "torchscript": "a TorchScript program: no Python pickle; preferred",
    "export": "a torch.export program: no Python pickle, carries its signature; preferred",
    "fastai": "a fastai Learner export (learn.export()): a full Python pickle that can run code "
    "when loaded; refused without --trust-pickle. Convert it once to a pickle-free folder: "
    "ptserve convert FILE OUT_DIR",
    "converted": "a folder written by ptserve convert: a torch.export program and "
    "preprocessing as data, no pickle; preferred",
}


def describe_file(settings: Settings) -> dict[str, Any]:
    """Format, safety, size, sha256, pickle imports, and (when safe to load) parameters and
    the input signature."""
    facts = inspect_file(settings.model_path, settings.format)
    info: dict[str, Any] = {
        "file": str(facts.path),
        "format": facts.format,
        "safety": SAFETY[facts.format],
        "size_bytes": facts.size_bytes,
        "sha256": facts.sha256,
    }
    trusted = settings.trust_modules
    if facts.format == "pickle":
        info["imports"] = [
            f"{name} ({'allowed' if is_allowed(name, trusted) else 'refused'})"
            for name in pickle_globals(facts.path)
        ]
    elif facts.format == "fastai":  # information only: none of them is imported
        info["imports"] = pickle_globals(facts.path)
    try:
        loaded = load_model(settings)
    except ModelLoadError as exc:
        info["not loaded"] = str(exc)
        return info
    info["parameters"] = loaded.parameters
    info["inputs"] = [
        f"{s.name}: {s.dtype} {list(s.shape)} per sample" for s in loaded.signature.inputs
    ]
    info["signature source"] = loaded.signature.source
    return info
