"""Serve a converted folder: the ``torch.export`` program through ptserve's ordinary export
loader (and its checks), the preprocessing and decoding as built-in hooks. No fastai, and
nothing unpickled."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptserve.convert.decoding import LearnerDecoding
from ptserve.convert.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Manifest,
    TabularPreprocessing,
    open_regular_file,
    read_manifest,
    read_regular_file,
    sha256_of,
)
from ptserve.convert.tabular import TabularRows
from ptserve.convert.vision import VisionImages
from ptserve.errors import ModelLoadError
from ptserve.hooks import Hooks
from ptserve.loading.formats import Loaded, load_export
from ptserve.settings import Settings
from ptserve.signature import Signature


def folder_facts(folder: Path) -> tuple[int, str]:
    """The folder's size (its files) and the manifest's sha256, which pins the model too: the
    manifest carries the model's sha256, checked at load. ModelLoadError for an unreadable
    manifest."""
    try:
        manifest = read_regular_file(folder, MANIFEST, MAX_MANIFEST_BYTES)
    except ValueError as exc:
        raise ModelLoadError(f"{folder}: {exc}") from None
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return size, hashlib.sha256(manifest).hexdigest()


def read_folder(folder: Path) -> Manifest:
    """The folder's manifest, once its model file is checked against it; ModelLoadError
    naming what is wrong."""
    try:
        manifest = read_manifest(folder)
        _check_model_file(folder, manifest)
    except ValueError as exc:
        raise ModelLoadError(f"{folder}: {exc}") from None
    return manifest


def load_folder(folder: Path, settings: Settings) -> tuple[Loaded, Hooks]:
    """The folder's model and signature, and its hooks; ModelLoadError naming what is wrong."""
    manifest = read_folder(folder)
    model, signature = load_export(folder / manifest.model.file, settings)
    assert signature is not None  # the export loader always gives the program's signature
    inputs = learner_inputs(manifest, settings.max_image_pixels)
    _check_fit(folder, manifest, model, signature, inputs)
    decoding = LearnerDecoding(manifest.decoding)
    hooks = Hooks(
        f"converted fastai {manifest.learner} learner", inputs.preprocess,
        decoding.postprocess, inputs.example, files=manifest.learner == "vision",
    )  # fmt: skip
    return (model, signature), hooks


def learner_inputs(manifest: Manifest, max_pixels: int) -> TabularRows | VisionImages:
    """The preprocessing a manifest describes: rows or images to the model's inputs."""
    spec = manifest.preprocessing
    if isinstance(spec, TabularPreprocessing):
        return TabularRows(spec)
    return VisionImages(spec, max_pixels)


def _check_model_file(folder: Path, manifest: Manifest) -> None:
    """The model file must be a regular file with the sha256 the manifest names."""
    with open_regular_file(folder, manifest.model.file) as f:
        sha256 = sha256_of(f)
    if sha256 != manifest.model.sha256:
        raise ValueError(f"{manifest.model.file} does not have the sha256 {MANIFEST} names")


def _check_fit(
    folder: Path,
    manifest: Manifest,
    model: Callable[..., Any],
    signature: Signature,
    inputs: TabularRows | VisionImages,
) -> None:
    """The hooks' example must make the model's inputs, and the decoding must name as many
    classes as the model has outputs: run it once."""
    arrays = inputs.preprocess([inputs.example])
    specs = signature.inputs
    made = [(str(a.dtype), a.shape[1:]) for a in arrays]
    if made != [(s.dtype, s.shape) for s in specs]:
        wanted = ", ".join(f"{s.name}: {s.dtype} {list(s.shape)}" for s in specs)
        got = ", ".join(f"{d} {list(shape)}" for d, shape in made)
        raise ModelLoadError(
            f"{folder}: the model takes {wanted}, but the preprocessing in {MANIFEST} makes {got}"
        )
    with torch.inference_mode():
        output = model(*(torch.from_numpy(a) for a in arrays))
    width = int(np.prod(output.shape[1:])) if isinstance(output, torch.Tensor) else -1
    vocab = manifest.decoding.vocab
    if vocab is not None and width != len(vocab):
        raise ModelLoadError(
            f"{folder}: {MANIFEST} names {len(vocab)} classes; the model gives {width} outputs"
        )
