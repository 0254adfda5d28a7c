"""The converted folder's manifest, ``ptserve.json``: what the folder holds, as plain data.

Written by the conversion's child process, verified by its parent, read by ``ptserve serve``.
Everything here is data (JSON validated against these models); nothing in a folder is code.
"""

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

MANIFEST = "ptserve.json"
CHECK_FOLDER = "check"
CHECK_SAMPLES = "samples.json"
MODEL_FILE = "model.pt2"
FORMAT: Final = "ptserve-converted-learner"
VERSION: Final = 1
MAX_MANIFEST_BYTES = 64 << 20  # vocabularies can be long; JSON beyond this is not a manifest
MAX_IMAGE_SIDE = 8192

# A category as fastai's Categorify keeps it; None marks a place no value can reach (NaN).
Category = StrictStr | StrictBool | StrictInt | StrictFloat | None
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=200)]


class Strict(BaseModel):
    """No unknown keys, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Normalize(Strict):
    """``(x - mean) / std`` per column (tabular) or per channel (vision)."""

    means: list[float]
    stds: list[float]


class TabularPreprocessing(Strict):
    """What fastai's tabular procs do to a row, in the model's column order.

    ``categorical`` is the model's ``x_cat`` order: request columns, then FillMissing's
    ``<column>_na`` indicators (``indicators`` maps each to the continuous column it flags).
    ``vocab[column][code]`` is the category with that code; code 0 is ``#na#``, which a missing
    or unseen value gets. ``fill`` holds FillMissing's value per continuous column; only those
    columns may be missing in a request. ``normalize`` is in ``continuous`` order.
    """

    kind: Literal["tabular"]
    categorical: list[str]
    continuous: list[str]
    vocab: dict[str, list[Category]]
    indicators: dict[str, str]
    fill: dict[str, float]
    normalize: Normalize | None


ResizeMethod = Literal["crop", "squish", "pad"]
PadMode = Literal["zeros", "border", "reflection"]
Resample = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class Resize(Strict):
    """fastai's ``Resize`` item transform, as the validation set applies it (centred)."""

    height: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
    width: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
    method: ResizeMethod
    pad_mode: PadMode
    resample: Resample


class VisionPreprocessing(Strict):
    """Decode as ``mode``, resize, scale pixels by ``1/divide``, then normalise per channel."""

    kind: Literal["vision"]
    mode: Literal["RGB", "L"]
    resize: Resize
    divide: Annotated[float, Field(gt=0)]
    normalize: Normalize | None


class Decoding(Strict):
    """How outputs become an answer: ``activation``, then ``argmax`` (one label), ``threshold``
    (every label whose probability exceeds it) or ``none`` (regression); ``vocab`` names the
    classes."""

    activation: Literal["softmax", "sigmoid", "none"]
    decode: Literal["argmax", "threshold", "none"]
    threshold: float | None
    vocab: list[StrictStr] | None

    @model_validator(mode="after")
    def _consistent(self) -> "Decoding":
        if (self.vocab is None) != (self.decode == "none"):
            needs = "needs a vocab" if self.vocab is None else "takes no vocab"
            raise ValueError(f"decode {self.decode!r} {needs}")
        if (self.threshold is None) == (self.decode == "threshold"):
            raise ValueError("a threshold goes with decode 'threshold', and only with it")
        return self


class ModelFile(Strict):
    """The model program, and its sha256 (the folder is served only while they agree)."""

    file: FileName
    format: Literal["torch.export"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Source(Strict):
    """The export the folder was made from, and the versions that made it."""

    file: str
    sha256: str
    fastai: str
    torch: str


class Check(Strict):
    """The folder's predictions against ``learn.predict`` on the same samples."""

    samples: int
    inputs: str  # where the samples came from
    compared: Literal["probabilities", "predictions"]
    max_abs_difference: float
    tolerance: float


class Manifest(Strict):
    """``ptserve.json``."""

    format: Literal["ptserve-converted-learner"]
    version: Literal[1]
    learner: Literal["tabular", "vision"]
    source: Source
    model: ModelFile
    preprocessing: Annotated[
        TabularPreprocessing | VisionPreprocessing, Field(discriminator="kind")
    ]
    decoding: Decoding
    check: Check | None = None  # filled in by the parent once it has verified the folder


class CheckSamples(Strict):
    """``check/samples.json``: the samples a conversion was checked on, as a request sends
    them (rows, or PNG files in ``check/``), and what ``learn.predict`` gave for each."""

    inputs: str
    rows: list[dict[str, Any]] | None = None
    images: list[FileName] | None = None
    expected: list[list[float]]


def is_converted_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a manifest that names this format (cheap: reads
    at most the manifest's start; a folder of other things is not one)."""
    if not path.is_dir():
        return False
    try:
        with (path / MANIFEST).open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"{FORMAT}"'.encode() in head


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest; ValueError with a one-line cause when it is not a valid one."""
    raw = read_regular_file(folder, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        return Manifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{MANIFEST} is not valid JSON ({exc})") from None
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"{MANIFEST} is not a valid manifest: {where}: {first['msg']}"
            + (f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else "")
        ) from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``ptserve.json`` (replacing it atomically)."""
    partial = folder / f".{MANIFEST}.partial"
    partial.write_text(manifest.model_dump_json(indent=2) + "\n")
    partial.replace(folder / MANIFEST)


def read_regular_file(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of ``folder/name``, at most ``limit`` of them; ValueError otherwise (see
    :func:`open_regular_file`)."""
    with open_regular_file(folder, name) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{name} is {size} bytes; at most {limit} are read")
        return f.read(limit)


def open_regular_file(folder: Path, name: str) -> BinaryIO:
    """``folder/name`` opened for reading; it must be a regular file, never a symlink (a
    folder may come from an untrusted process). ValueError otherwise."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"cannot open {name}: {exc.strerror}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise ValueError(f"{name} is not a regular file")
    return f


def sha256_of(f: BinaryIO) -> str:
    """The sha256 of what is left to read in ``f``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def type_name(obj: Any) -> str:
    """``obj``'s class as ``module.QualifiedName``."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
