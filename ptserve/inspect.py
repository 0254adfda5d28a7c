"""``ptserve info``: what a model file is, without running code from it."""

import importlib.util
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
    "fastai": "a fastai Learner (learn.export()): unpickled with an allowlist of fastai classes "
    "and safe helpers, plus --trust-module modules",
}


FASTAI_KINDS = {
    "constructor": "allowed",
    "class": "allowed: objects rebuilt from their state, the class never called",
    "reference": "allowed as data: stored, never called while loading",
    None: "refused",
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
    elif facts.format == "fastai" and importlib.util.find_spec("fastai") is not None:
        from ptserve.loading.fastai import (
            MAKE_FUNCTION,
            STAND_INS,
            import_entry_points,
            kind,
            training_only,
        )

        import_entry_points()
        info["imports"] = [
            f"{name} (replaced by a safe stand-in)"
            if name in STAND_INS or name == MAKE_FUNCTION
            else f"{name} (training only: an inert placeholder)"
            if training_only(name)
            else f"{name} ({FASTAI_KINDS[kind(name, trusted)]})"
            for name in pickle_globals(facts.path)
        ]
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
