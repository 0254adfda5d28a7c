"""Verify a folder the conversion's child wrote, the way ``ptserve serve`` will load it: only the
files a folder holds, the model through the ordinary export loader, and the folder's own
predictions on the check samples against ``learn.predict``'s."""

import json
import math
import stat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ptserve.convert import ConversionError
from ptserve.convert.decoding import LearnerDecoding
from ptserve.convert.manifest import (
    CHECK_FOLDER,
    CHECK_SAMPLES,
    MANIFEST,
    Check,
    CheckSamples,
    read_manifest,
    read_regular_file,
)
from ptserve.errors import ModelLoadError, ServeError
from ptserve.loading import load_model
from ptserve.settings import Settings

TOLERANCE = 1e-4
MAX_SAMPLES_BYTES = 64 << 20
MAX_IMAGE_BYTES = 16 << 20


def verify(folder: Path) -> Check:
    """The check report of ``folder``; ConversionError when it is not a sound folder or its
    predictions differ from ``learn.predict``'s by more than ``TOLERANCE``."""
    try:
        manifest = read_manifest(folder)
        samples = _samples(folder, manifest.model.file)
        loaded = load_model(Settings(model_path=folder))
    except (ValueError, ModelLoadError) as exc:
        raise ConversionError(f"the folder the conversion wrote is not sound: {exc}") from None
    hooks = loaded.hooks
    assert hooks is not None
    assert hooks.preprocess is not None
    check = folder / CHECK_FOLDER
    instances: list[Any] = [
        read_regular_file(check, name, MAX_IMAGE_BYTES) for name in samples.images or []
    ]
    instances += samples.rows or []
    try:
        arrays = hooks.preprocess(instances)
        with torch.inference_mode():
            outputs = loaded.model(*(torch.from_numpy(a) for a in arrays))
    except ServeError as exc:
        raise ConversionError(f"the folder refused its own check sample: {exc}") from None
    got = LearnerDecoding(manifest.decoding).probabilities(np.asarray(outputs))
    expected = np.asarray(samples.expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise ConversionError(
            f"the folder gives {list(got.shape)} values for the check samples, learn.predict "
            f"gave {list(expected.shape)}"
        )
    difference = float(np.abs(got.astype(np.float64) - expected).max())
    compared: Literal["probabilities", "predictions"] = (
        "probabilities" if manifest.decoding.vocab is not None else "predictions"
    )
    if not math.isfinite(difference) or difference > TOLERANCE:
        raise ConversionError(
            f"the converted folder's {compared} differ from learn.predict's by up to "
            f"{difference:.3g} on {samples.inputs} (tolerance {TOLERANCE:g}); the learner does "
            "something its preprocessing as data does not capture"
        )
    return Check(
        samples=len(expected), inputs=samples.inputs, compared=compared,
        max_abs_difference=difference, tolerance=TOLERANCE,
    )  # fmt: skip


def _samples(folder: Path, model_file: str) -> CheckSamples:
    """The check samples; the folder must hold exactly the manifest, the model and them."""
    raw = read_regular_file(folder / CHECK_FOLDER, CHECK_SAMPLES, MAX_SAMPLES_BYTES)
    try:
        samples = CheckSamples.model_validate(json.loads(raw))
    except ValueError as exc:
        cause = " ".join(str(exc).split())
        raise ValueError(f"{CHECK_FOLDER}/{CHECK_SAMPLES} is not valid: {cause}") from None
    _only(folder, {MANIFEST, model_file, CHECK_FOLDER})
    _only(folder / CHECK_FOLDER, {CHECK_SAMPLES, *(samples.images or [])})
    if not samples.expected or (samples.rows or samples.images or []) == []:
        raise ValueError(f"{CHECK_FOLDER}/{CHECK_SAMPLES} holds no samples")
    return samples


def _only(folder: Path, names: set[str]) -> None:
    for entry in folder.iterdir():
        kind = entry.lstat().st_mode
        wanted = stat.S_ISDIR(kind) if entry.name == CHECK_FOLDER else stat.S_ISREG(kind)
        if entry.name not in names or not wanted:
            raise ValueError(f"unexpected {entry.name} in the folder")
