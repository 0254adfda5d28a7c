"""Write a converted folder from a fastai export (in the conversion's child process, which
loads the export with fastai's own ``load_learner``: the operator trusts it for this)."""

import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from ptserve.convert import ConversionError
from ptserve.convert.fastai_tabular import is_tabular, sample_rows, tabular_preprocessing
from ptserve.convert.fastai_vision import sample_images, vision_preprocessing
from ptserve.convert.manifest import (
    CHECK_FOLDER,
    CHECK_SAMPLES,
    FORMAT,
    MODEL_FILE,
    VERSION,
    CheckSamples,
    Decoding,
    Manifest,
    ModelFile,
    Source,
    TabularPreprocessing,
    VisionPreprocessing,
    sha256_of,
    type_name,
    write_manifest,
)

TABULAR_SAMPLES = 64
# fastai's loss functions as data: (activation, decode) of learn.predict. The "Flat" losses
# that are plain functions return a BaseLoss around a torch loss, named here by that loss.
LOSSES = {
    "fastai.losses.CrossEntropyLossFlat": ("softmax", "argmax"),
    "fastai.losses.FocalLossFlat": ("softmax", "argmax"),
    "fastai.losses.LabelSmoothingCrossEntropyFlat": ("softmax", "argmax"),
    "fastai.losses.BCEWithLogitsLossFlat": ("sigmoid", "threshold"),
    "torch.nn.modules.loss.MSELoss": ("none", "none"),
    "torch.nn.modules.loss.L1Loss": ("none", "none"),
}


def write_folder(export: Path, folder: Path) -> dict[str, Any]:
    """Load ``export``, describe it as data, export its model, check samples; write it all to
    ``folder`` (the manifest without its check report: the parent verifies and adds it)."""
    learn = _load(export)
    preprocessing: TabularPreprocessing | VisionPreprocessing
    try:
        if is_tabular(learn):
            preprocessing = tabular_preprocessing(learn)
        else:
            preprocessing = vision_preprocessing(learn)
        decoding = learner_decoding(learn)
    except ValidationError as exc:  # a value outside what the manifest can say
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        cause = f"{where}: {first['msg']}"
        raise ConversionError(f"cannot describe the learner as data: {cause}") from None
    folder.mkdir()
    model_path = folder / MODEL_FILE
    _export_program(learn.model, _example_inputs(preprocessing), model_path)
    samples = _check_samples(learn, preprocessing, folder / CHECK_FOLDER)
    import fastai

    manifest = Manifest(
        format=FORMAT,
        version=VERSION,
        learner=preprocessing.kind,
        source=Source(
            file=export.name,
            sha256=_sha256(export),
            fastai=fastai.__version__,
            torch=torch.__version__,
        ),
        model=ModelFile(file=MODEL_FILE, format="torch.export", sha256=_sha256(model_path)),
        preprocessing=preprocessing,
        decoding=decoding,
    )
    write_manifest(folder, manifest)
    return {"learner": preprocessing.kind, "samples": len(samples.expected)}


def _load(export: Path) -> Any:
    from fastai.learner import load_learner

    try:
        with warnings.catch_warnings():  # fastai warns that it unpickles: the operator knows
            warnings.simplefilter("ignore")
            return load_learner(export, cpu=True)
    except Exception as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise ConversionError(f"fastai's load_learner could not load it: {cause}") from None


def learner_decoding(learn: Any) -> Decoding:
    """What ``learn.predict`` does with the model's outputs, from the loss function."""
    loss = learn.loss_func
    name = type_name(loss.func) if type(loss).__name__ == "BaseLoss" else type_name(loss)
    if name not in LOSSES:
        raise ConversionError(
            f"the loss function {name} is not one ptserve convert can decode (supported: "
            "CrossEntropyLossFlat, FocalLossFlat, LabelSmoothingCrossEntropyFlat, "
            "BCEWithLogitsLossFlat, MSELossFlat, L1LossFlat)"
        )
    activation, decode = LOSSES[name]
    if getattr(loss, "axis", -1) != -1:
        raise ConversionError(f"the loss function {name} has its classes on axis {loss.axis}")
    vocab = getattr(learn.dls, "vocab", None) if decode != "none" else None
    if decode != "none" and vocab is None:
        raise ConversionError(f"a classifier's loss ({name}) but no vocab in the learner's data")
    return Decoding(
        activation=activation,  # type: ignore[arg-type]
        decode=decode,  # type: ignore[arg-type]
        threshold=float(loss.thresh) if decode == "threshold" else None,
        vocab=[str(v) for v in vocab] if vocab is not None else None,
    )


def _example_inputs(spec: TabularPreprocessing | VisionPreprocessing) -> tuple[torch.Tensor, ...]:
    """A batch of two (torch.export needs a batch of 2 or more to keep the size dynamic)."""
    if isinstance(spec, TabularPreprocessing):
        return (
            torch.zeros(2, len(spec.categorical), dtype=torch.int64),
            torch.zeros(2, len(spec.continuous), dtype=torch.float32),
        )
    channels = 3 if spec.mode == "RGB" else 1
    return (torch.zeros(2, channels, spec.resize.height, spec.resize.width),)


def _export_program(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch")
    try:
        program = torch.export.export(
            model.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example)
        )
    except Exception as exc:
        cause = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise ConversionError(
            f"torch.export could not trace the learner's model: {cause}"
        ) from None
    program.example_inputs = None  # torch.export.save would pickle them: the folder has no pickle
    torch.export.save(program, path)


def _check_samples(
    learn: Any, spec: TabularPreprocessing | VisionPreprocessing, folder: Path
) -> CheckSamples:
    folder.mkdir()
    if isinstance(spec, TabularPreprocessing):
        import pandas as pd

        rows = sample_rows(spec, TABULAR_SAMPLES)
        expected = _predictions(learn, [pd.Series(row, dtype=object) for row in rows])
        samples = CheckSamples(inputs="generated rows", rows=rows, expected=expected)
    else:
        names = sample_images(folder)
        expected = _predictions(learn, [folder / name for name in names])
        samples = CheckSamples(inputs="generated images", images=names, expected=expected)
    (folder / CHECK_SAMPLES).write_text(samples.model_dump_json() + "\n")
    return samples


def _predictions(learn: Any, items: list[Any]) -> list[list[float]]:
    """``learn.predict`` on each item: its probabilities (or, for regression, predictions)."""
    # no_bar exists only where fastai's progress module was imported (the export's callbacks)
    quiet = learn.no_bar() if hasattr(type(learn), "no_bar") else contextlib.nullcontext()
    results = []
    with quiet:
        for item in items:
            _, _, probs = learn.predict(item)
            results.append([float(p) for p in np.asarray(probs, dtype=np.float64).reshape(-1)])
    return results


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return sha256_of(f)
