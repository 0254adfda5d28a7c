"""A model repository folder: which models and versions it holds, found by looking (nothing is
loaded here; ``ptserve.lifecycle`` loads).

    REPO/NAME/VERSION/FILE    versions are positive integers: REPO/digits/3/model.pt
    REPO/NAME/FILE            an unversioned model: version 1
    REPO/NAME/ptserve.toml    that model's settings and version policy (``model_config``)

A version folder (or an unversioned model's folder) holds one model file, beside which labels,
example inputs and handlers may lie (files with those suffixes are never taken for the model);
a folder with a converted model's manifest (``ptserve.json``) is itself the model. Hidden entries
are ignored, so a version can be staged as ``NAME/.incoming`` and renamed into place. Every entry
must resolve inside the repository: a symlink or ``..`` that leads out is refused.

A single model file is served as a repository of one model with one version (1), so the same
machinery (watching, loading through the API) applies to it.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ptserve.errors import one_line
from ptserve.model_config import ModelConfig, VersionPolicy, confine, read_model_config
from ptserve.settings import Settings

MANIFEST = "ptserve.json"  # the manifest of a folder written by ``ptserve convert``
NOT_MODELS = frozenset(
    {".txt", ".json", ".npy", ".npz", ".py", ".toml", ".yaml", ".yml", ".md", ".csv", ".log"}
)
VERSION = re.compile(r"[1-9][0-9]{0,17}")
NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_ENTRIES = 10_000  # files looked at in one version folder
# What identifies a folder's contents between two looks: (relative path, size, mtime) per file.
Stamp = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class VersionSource:
    """One version as found: its model file, or why it cannot be served as it is."""

    path: Path | None
    stamp: Stamp
    problem: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """One model as found: its settings, version policy and versions."""

    name: str
    config: ModelConfig
    versions: Mapping[int, VersionSource]
    stamp: Stamp  # the model folder's own files (ptserve.toml, shared labels)

    @property
    def policy(self) -> VersionPolicy:
        return self.config.policy

    def settings_for(self, version: int) -> Settings:
        """The settings that serve ``version``."""
        path = self.versions[version].path
        assert path is not None
        return self.config.settings.model_copy(update={"model_path": path})

    def identity(self, version: int) -> tuple[Stamp, Stamp]:
        """What a loaded copy of ``version`` was loaded from: unchanged while this is."""
        return self.stamp, self.versions[version].stamp


@dataclass(frozen=True)
class ModelProblem:
    """A model folder that cannot be served as it is (a bad ptserve.toml, a bad layout)."""

    name: str
    reason: str
    stamp: Stamp


Found = ModelSource | ModelProblem


def is_repository(path: Path) -> bool:
    """Whether ``path`` is a repository folder (not a file, not a converted model folder)."""
    return path.is_dir() and not (path / MANIFEST).exists()


def scan(base: Settings) -> dict[str, Found]:
    """What ``base.model_path`` holds now: a repository's models, or the one model file."""
    path = base.model_path
    if is_repository(path):
        return scan_repository(path, base)
    source = ModelSource(
        base.model_name,
        ModelConfig(base, VersionPolicy()),
        {1: VersionSource(path, _file_stamps(path.parent, _sidecars(path)))},
        (),
    )
    return {source.name: source}


def scan_repository(folder: Path, base: Settings) -> dict[str, Found]:
    """Every model folder in the repository ``folder``, by name."""
    root = folder.resolve()
    found: dict[str, Found] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            found[entry.name] = scan_model(entry, root, base)
        except (OSError, ValueError) as exc:
            found[entry.name] = ModelProblem(entry.name, one_line(exc), ())
    return found


def scan_model(folder: Path, root: Path, base: Settings) -> Found:
    """One model folder; a problem with the folder as a whole is a ModelProblem, one with a
    version is that version's ``problem``."""
    name = folder.name
    confine(folder, root, name)
    entries = [e for e in sorted(folder.iterdir()) if not e.name.startswith(".")]
    for entry in entries:  # a version folder is confined as part of its version
        if not VERSION.fullmatch(entry.name):
            confine(entry, root, f"{name}/{entry.name}")
    stamp = _file_stamps(folder, [e for e in entries if not VERSION.fullmatch(e.name)])
    if not NAME.fullmatch(name):
        return ModelProblem(name, f"{name!r} is not a model name (letters, digits, _ . -)", stamp)
    try:
        config = read_model_config(folder, root, base)
    except ValueError as exc:
        return ModelProblem(name, str(exc), stamp)
    numbered = [e for e in entries if VERSION.fullmatch(e.name) and e.is_dir()]
    if (folder / MANIFEST).exists():  # the folder is a converted model: unversioned
        return ModelSource(name, config, {1: _version(folder, root, name)}, ())
    loose = _candidates(entries)
    if numbered and loose:
        return ModelProblem(
            name,
            f"{name}/ holds version folders and a model file ({loose[0].name}); move the file "
            "into a version folder",
            stamp,
        )
    if loose:
        return ModelSource(name, config, {1: _version(folder, root, name)}, ())
    if not numbered:
        return ModelProblem(
            name, f"{name}/ holds no model file and no version folder (NAME/1/model.pt)", stamp
        )
    versions = {int(e.name): _version(e, root, f"{name}/{e.name}") for e in numbered}
    return ModelSource(name, config, versions, stamp)


def _version(folder: Path, root: Path, where: str) -> VersionSource:
    """The version in ``folder``: its model file, or why there is none to serve."""
    try:
        confine(folder, root, where)
        files = _walk(folder, root, where)
        stamp = _file_stamps(folder, files)
        if (folder / MANIFEST).exists():
            return VersionSource(folder, stamp)
        candidates = _candidates([folder / f.name for f in files if f.parent == folder])
        if len(candidates) != 1:
            found = ", ".join(c.name for c in candidates)
            return VersionSource(
                None, stamp,
                f"{where}/ holds several model files ({found}); keep one per version folder"
                if candidates else f"{where}/ holds no model file",
            )  # fmt: skip
        return VersionSource(candidates[0], stamp)
    except (OSError, ValueError) as exc:
        return VersionSource(None, (), one_line(exc))


def _walk(folder: Path, root: Path, where: str) -> list[Path]:
    """Every file under ``folder`` (not following symlinked folders), each confined to ``root``."""
    files: list[Path] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(current)
        for entry in [*dirs, *names]:
            if entry.startswith("."):
                continue
            path = base / entry
            confine(path, root, f"{where}/{path.relative_to(folder)}")
            if entry in names:
                files.append(path)
        if len(files) > MAX_ENTRIES:
            raise ValueError(f"{where}/ holds more than {MAX_ENTRIES} files")
    return files


def _candidates(entries: list[Path]) -> list[Path]:
    """The entries that may be a model file."""
    return [
        e
        for e in entries
        if not e.name.startswith(".") and e.suffix.lower() not in NOT_MODELS and e.is_file()
    ]


def _sidecars(model: Path) -> list[Path]:
    """A model file and what start-up reads beside it (labels, an example input)."""
    folder, stem = model.parent, model.stem
    names = ["labels.txt", "labels.json", f"{stem}.example.npy", f"{stem}.example.npz"]
    return [model, *(folder / n for n in names if (folder / n).exists())]


def _file_stamps(folder: Path, files: list[Path]) -> Stamp:
    stamps = []
    for path in files:
        if path.is_file():
            stat = path.stat()
            name = path.name if path.parent == folder else str(path.relative_to(folder))
            stamps.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(stamps))


def fingerprint(found: Found | None) -> object:
    """What a look at a model folder saw, comparable between looks (None: no folder)."""
    if found is None:
        return None
    if isinstance(found, ModelProblem):
        return ("problem", found.reason, found.stamp)
    versions = tuple((v, s.path, s.stamp, s.problem) for v, s in sorted(found.versions.items()))
    return (found.stamp, versions)
