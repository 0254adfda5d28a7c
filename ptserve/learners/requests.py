"""What a request to a learner sends, checked the same way whether a fastai Learner (trusted
export) or a converted folder serves it: rows of named columns, or images."""

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ptserve.errors import InvalidInput
from ptserve.images import decode_base64, open_image


@dataclass(frozen=True)
class Columns:
    """The columns of a tabular learner's rows: ``categorical`` maps each to the categories seen
    in training (a missing or unseen one becomes ``#na#``, as in fastai); ``continuous`` are
    numbers, missing (null) only where ``fillable`` says training filled missing values."""

    categorical: dict[str, list[Any]]
    continuous: list[str]
    fillable: frozenset[str] = field(default_factory=frozenset)

    @property
    def names(self) -> list[str]:
        """The columns a request's instance must have: categorical, then continuous."""
        return [*self.categorical, *self.continuous]

    def example(self, means: dict[str, float]) -> dict[str, Any]:
        """A typical row: each category's first value, each number's training mean."""
        row: dict[str, Any] = {n: c[0] if c else "" for n, c in self.categorical.items()}
        row.update({n: round(float(means.get(n, 0.0)), 3) for n in self.continuous})
        return row

    def check(self, row: Any, where: str) -> None:
        """InvalidInput naming the instance and column for a missing, unknown or mistyped one."""
        if not isinstance(row, dict):
            raise InvalidInput(
                f"{where}: expected an object of columns like {{{_columns(self.names)}}}, "
                f"got {_describe(row)}"
            )
        missing = [c for c in self.names if c not in row]
        if missing:
            raise InvalidInput(f"{where}: missing column(s) {', '.join(map(repr, missing))}")
        unknown = [c for c in row if c not in self.categorical and c not in self.continuous]
        if unknown:
            raise InvalidInput(
                f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; the learner's "
                f"columns are {', '.join(map(repr, self.names))}"
            )
        for name in self.continuous:
            value = row[name]
            if value is None and name in self.fillable:
                continue
            if not _number(value) or not math.isfinite(value):
                raise InvalidInput(f"{where}.{name}: expected a number, got {_describe(value)}")
        for name, categories in self.categorical.items():
            _check_category(row[name], categories, f"{where}.{name}")


def _check_category(value: Any, categories: list[Any], where: str) -> None:
    if value is None:  # missing: #na#, as in fastai
        return
    kinds = {_kind(c) for c in categories}
    if kinds == {"string"} and not isinstance(value, str):
        raise InvalidInput(
            f"{where}: expected a category (a string such as {categories[0]!r}), got "
            f"{_describe(value)}"
        )
    if kinds == {"boolean"} and not isinstance(value, bool):
        raise InvalidInput(f"{where}: expected true or false, got {_describe(value)}")
    if kinds == {"number"} and not _number(value):
        raise InvalidInput(f"{where}: expected a number, got {_describe(value)}")
    if not isinstance(value, str | bool) and not _number(value):
        raise InvalidInput(f"{where}: expected a category, got {_describe(value)}")


def _kind(category: Any) -> str:
    if isinstance(category, bool):
        return "boolean"
    return "string" if isinstance(category, str) else "number"


def read_image(instance: Any, index: int, mode: str, max_pixels: int) -> Image.Image:
    """An uploaded file (bytes) or ``{"image": "<base64>"}`` -> the image in ``mode``, through
    ptserve's guarded decoder; not turned upright by EXIF, since fastai trains without it."""
    if isinstance(instance, bytes):
        where, data = f"files[{index}]", instance
    elif isinstance(instance, dict) and set(instance) == {"image"}:
        where = f"instances[{index}].image"
        if not isinstance(instance["image"], str):
            raise InvalidInput(f"{where}: expected a base64 string")
        data = decode_base64(instance["image"], where)
    else:
        raise InvalidInput(
            f'instances[{index}]: expected {{"image": "<base64>"}} (or upload the image as '
            "multipart/form-data)"
        )
    return open_image(data, mode, max_pixels, where, upright=False)


def grey_image(mode: str, height: int, width: int) -> dict[str, str]:
    """A mid-grey PNG instance, ``{"image": "<base64>"}``: the docs' and try-it page's example."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode == "L" else (128,) * 3).save(buffer, "PNG")
    return {"image": base64.b64encode(buffer.getvalue()).decode()}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _columns(names: list[str]) -> str:
    return ", ".join(f'"{n}": ...' for n in names[:4]) + (", ..." if len(names) > 4 else "")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    return repr(value)
