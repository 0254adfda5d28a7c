"""Hostile fastai exports: a genuine tabular Learner carrying a payload that touches a marker
file when it runs, at load or at the first prediction, stored as ``learn.export()`` stores
Learners (cloudpickle). The shapes an outside review and five rounds of hardening found ways
through a restricted unpickler with: a reduce to ``os.system``, code stored by value, a pickle
of protocol 4 (STACK_GLOBAL), a module hook, a replaced loss activation, a layer calling
stored code. ptserve must refuse them all by default, before anything runs."""

import os
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Hostile:
    """A hostile export, the file its payload creates, and when the payload runs."""

    path: Path
    marker: Path
    runs: str  # "at load" or "at the first prediction"


class Shell:
    """Unpickling this runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class Calls:
    """Unpickling this calls ``func()`` (stored by value when it is a local function)."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func = func

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, ())


def toucher(marker: Path) -> Callable[..., None]:
    """A local function (cloudpickle stores its code) that touches ``marker``, whatever it
    is called with."""
    path = str(marker)

    def touch(*args: Any, **kwargs: Any) -> None:
        Path(path).touch()

    return touch


def load_genuine(export: Path) -> Any:
    """Our own genuine export, loaded as fastai does (we trust it)."""
    from fastai.learner import load_learner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_learner(export, cpu=True)


def save_like_export(obj: Any, path: Path, protocol: int = 2) -> Path:
    """Save as ``learn.export()`` does: torch.save with cloudpickle."""
    import cloudpickle

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, pickle_module=cloudpickle, pickle_protocol=protocol)
    return path


def _shell(learn: Any, marker: Path) -> None:
    learn.note = Shell(marker)


def _stored_code(learn: Any, marker: Path) -> None:
    learn.note = Calls(toucher(marker))


def _forward_hook(learn: Any, marker: Path) -> None:
    learn.model.register_forward_pre_hook(toucher(marker))


def _loss_activation(learn: Any, marker: Path) -> None:
    touch = toucher(marker)
    learn.loss_func.activation = lambda x: (touch(), torch.softmax(x, -1))[1]


def _layer(learn: Any, marker: Path) -> None:
    from fastai.layers import Lambda

    touch = toucher(marker)
    learn.model.layers.append(Lambda(lambda x: (touch(), x)[1]))


AT_LOAD, AT_PREDICT = "at load", "at the first prediction"
# name: (when the payload runs, how it is planted, pickle protocol)
VARIANTS: dict[str, tuple[str, Callable[[Any, Path], None], int]] = {
    "os-system-at-load": (AT_LOAD, _shell, 2),
    "stored-code-at-load": (AT_LOAD, _stored_code, 2),
    "protocol-4-at-load": (AT_LOAD, _shell, 4),
    "forward-hook": (AT_PREDICT, _forward_hook, 2),
    "loss-activation": (AT_PREDICT, _loss_activation, 2),
    "lambda-layer": (AT_PREDICT, _layer, 2),
}


def build_hostile(genuine: Path, folder: Path) -> dict[str, Hostile]:
    """Every hostile variant of the genuine tabular export at ``genuine``, each in its own
    folder under ``folder`` with its own marker."""
    made = {}
    for name, (runs, plant, protocol) in VARIANTS.items():
        marker = folder / name / "PWNED"
        learn = load_genuine(genuine)
        plant(learn, marker)
        path = save_like_export(learn, folder / name / "export.pkl", protocol)
        made[name] = Hostile(path, marker, runs)
    return made


def run_trusted(hostile: Hostile, row: dict[str, Any]) -> None:
    """What trusting the file does: fastai's load_learner, then one prediction (the control
    that shows each payload is live)."""
    import pandas as pd

    learn = load_genuine(hostile.path)
    with learn.no_bar():
        learn.predict(pd.Series(row, dtype=object))
