"""A repository model's own settings: ``NAME/ptserve.toml``.

The keys are the server's settings (one settings tree), less those that belong to the whole
server (address, workers, keys, logs, drain, ...), plus ``version_policy``. A model's values
override the server's for that model. Paths in the file are relative to the model's folder and,
like every file a repository names, must resolve inside the repository.
"""

import difflib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator

from ptserve.settings import Settings

CONFIG_FILE = "ptserve.toml"
MAX_CONFIG_BYTES = 1 << 20
# The settings a model's ptserve.toml may set; every other setting is server-wide and refused
# there with a message (a new setting stays server-wide until it is listed here).
MODEL_KEYS = frozenset(
    {"format", "device", "model_class", "model_kwargs", "input_shape", "input_dtype",
     "input_names", "output_names", "example_input", "labels", "top_k", "output_activation",
     "threshold", "handler", "image_mode", "image_resize", "image_mean", "image_std",
     "image_layout", "max_image_pixels", "allow_nan", "max_instances", "max_batch_size",
     "max_batch_delay_ms", "max_queue", "admission_wait_ms", "timeout_ms", "execution",
     "inference_threads",
     "compile", "trust_modules", "trust_pickle"}
)  # fmt: skip
PATH_KEYS = ("example_input", "labels")  # and ``handler`` when it names a .py file


class VersionPolicy(BaseModel):
    """Which of a model's versions are served (Triton's ``version_policy``): the ``latest`` N,
    ``all``, or the ``specific`` ones listed. In TOML: ``version_policy = "latest"`` (the
    default), ``"all"``, ``{ latest = 2 }`` or ``{ specific = [1, 3] }``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: PositiveInt | None = None
    all: bool = False
    specific: tuple[PositiveInt, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if value == "latest":
            return {"latest": 1}
        if value == "all":
            return {"all": True}
        if isinstance(value, dict) and not {"latest", "all", "specific"} & value.keys():
            return {**value, "latest": 1}
        if not isinstance(value, dict | VersionPolicy):
            raise ValueError(
                f'{value!r} is no policy: give "latest", "all", {{ latest = N }} or '
                "{ specific = [V, ...] }"
            )
        return value

    @model_validator(mode="after")
    def _one(self) -> "VersionPolicy":
        if sum((self.latest is not None, self.all, self.specific is not None)) > 1:
            raise ValueError("give one of latest, all or specific")
        if self.specific is not None and not self.specific:
            raise ValueError("specific needs at least one version")
        return self

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve among ``available``, highest first."""
        ordered = sorted(set(available), reverse=True)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        assert self.latest is not None
        return ordered[: self.latest]

    def describe(self) -> str:
        if self.all:
            return "all"
        if self.specific is not None:
            return "specific " + ", ".join(map(str, self.specific))
        return "latest" if self.latest == 1 else f"latest {self.latest}"


@dataclass(frozen=True)
class ModelConfig:
    """What a model's folder says about serving it: its settings and version policy."""

    settings: Settings
    policy: VersionPolicy


def read_model_config(folder: Path, root: Path, base: Settings) -> ModelConfig:
    """The settings of the model in ``folder``: ``base`` with its ptserve.toml's values (none:
    ``base`` as it is), named after the folder. ValueError with one line saying what is wrong."""
    name = folder.name
    path = folder / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        where = f"{name}/{CONFIG_FILE}"
        confine(path, root, where)
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{where}: not a regular file of at most {MAX_CONFIG_BYTES} bytes")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: not valid TOML ({exc})") from None
        policy_value = data.pop("version_policy", "latest")
        _check_keys(data, where)
        data = _resolve_paths(data, folder, root, where)
        try:
            policy = VersionPolicy.model_validate(policy_value)
        except ValidationError as exc:
            raise ValueError(f"{where}: version_policy: {_first_error(exc)}") from None
    else:
        where, policy = f"{name}/", VersionPolicy()
    try:
        settings = Settings.model_validate(
            {**base.model_dump(), **data, "model_path": folder, "name": name}
        )
    except ValidationError as exc:
        raise ValueError(f"{where}: {_first_error(exc)}") from None
    return ModelConfig(settings, policy)


def confine(path: Path, root: Path, what: str) -> Path:
    """``path`` with every symlink resolved; ValueError when that lies outside ``root`` (a
    resolved folder)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{what}: resolves outside the repository; refusing it")
    return resolved


def _check_keys(data: dict[str, Any], where: str) -> None:
    for key in data:
        if key in MODEL_KEYS:
            continue
        if key in Settings.model_fields:
            raise ValueError(
                f"{where}: {key!r} is a server-wide setting; set it for the whole server "
                "(command line, environment or --config), not per model"
            )
        guess = difflib.get_close_matches(key, [*MODEL_KEYS, "version_policy"], n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        raise ValueError(f"{where}: unknown setting {key!r}{hint}")


def _resolve_paths(data: dict[str, Any], folder: Path, root: Path, where: str) -> dict[str, Any]:
    """Paths relative to the model's folder, each confined to the repository."""
    resolved = dict(data)
    keys = [k for k in PATH_KEYS if isinstance(data.get(k), str)]
    if isinstance(data.get("handler"), str) and data["handler"].endswith(".py"):
        keys.append("handler")
    for key in keys:
        target = confine(folder / data[key], root, f"{where}: {key} {data[key]!r}")
        resolved[key] = str(target) if key == "handler" else target
    return resolved


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"
