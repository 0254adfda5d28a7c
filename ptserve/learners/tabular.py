"""A fastai tabular Learner: rows of named columns in, validated against the learner's columns.

``learn.dls.test_dl`` applies the training-time procs (Categorify, FillMissing, Normalize) to a
request's rows; ``learn.model`` takes ``(x_cat, x_cont)``.
"""

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptserve.errors import InvalidInput, ModelLoadError
from ptserve.hooks import Arrays
from ptserve.signature import Signature, TensorSpec

NA_CATEGORY = "#na#"


@dataclass
class TabularLearner:
    """Validates rows against a tabular Learner's columns and turns them into model inputs."""

    learn: Any
    categorical: dict[str, list[Any]] = field(init=False)
    continuous: list[str] = field(init=False)
    lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        dls = self.learn.dls
        _check_columns(dls)
        procs = dls.procs
        # FillMissing adds "<col>_na" categorical columns itself; a request does not send them
        added = {f"{n}_na" for n in getattr(getattr(procs, "fill_missing", None), "na_dict", {})}
        classes = getattr(getattr(procs, "categorify", None), "classes", {})
        self.categorical = {
            n: [c for c in classes.get(n, []) if c != NA_CATEGORY]
            for n in dls.cat_names
            if n not in added
        }
        self.continuous = list(dls.cont_names)

    @classmethod
    def of(cls, learn: Any) -> "TabularLearner | None":
        """The tabular view of ``learn``, or None for another kind of Learner."""
        dls = learn.dls
        return cls(learn) if hasattr(dls, "cat_names") and hasattr(dls, "cont_names") else None

    @property
    def signature(self) -> Signature:
        """``x_cat`` (category codes) and ``x_cont`` (normalised numbers), per row."""
        dls = self.learn.dls
        return Signature(
            (
                TensorSpec("x_cat", "int64", (len(dls.cat_names),)),
                TensorSpec("x_cont", "float32", (len(dls.cont_names),)),
            ),
            source="fastai tabular learner",
        )

    @property
    def example(self) -> dict[str, Any]:
        """A typical row: each category's first value, each number's training mean."""
        means = getattr(getattr(self.learn.dls.procs, "normalize", None), "means", {})
        row: dict[str, Any] = {
            n: (c[0].item() if hasattr(c[0], "item") else c[0]) if c else ""
            for n, c in self.categorical.items()
        }
        row.update({n: round(float(means.get(n, 0.0)), 3) for n in self.continuous})
        return row

    @property
    def columns(self) -> list[str]:
        """The columns a request's instance must have: categorical, then continuous."""
        return [*self.categorical, *self.continuous]

    def preprocess(self, instances: list[Any]) -> Arrays:
        """Rows (``{"column": value}``) -> ``[x_cat int64, x_cont float32]``, batched."""
        import pandas as pd

        for i, row in enumerate(instances):
            self.check_row(row, f"instances[{i}]")
        frame = pd.DataFrame(instances, columns=self.columns)
        with self.lock:  # fastai's procs were written for one caller at a time
            processed = self.learn.dls.test_dl(frame).dataset
        return [
            np.asarray(processed.cats.to_numpy(), dtype=np.int64).reshape(len(frame), -1),
            np.asarray(processed.conts.to_numpy(), dtype=np.float32).reshape(len(frame), -1),
        ]

    def check_row(self, row: Any, where: str) -> None:
        """InvalidInput naming the instance and column for a missing, unknown or mistyped one."""
        if not isinstance(row, dict):
            raise InvalidInput(
                f"{where}: expected an object of columns like {{{_columns(self.columns)}}}, "
                f"got {_describe(row)}"
            )
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise InvalidInput(f"{where}: missing column(s) {', '.join(map(repr, missing))}")
        unknown = [c for c in row if c not in self.categorical and c not in self.continuous]
        if unknown:
            raise InvalidInput(
                f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; the learner's "
                f"columns are {', '.join(map(repr, self.columns))}"
            )
        for name in self.continuous:
            value = row[name]
            if not _number(value) or not math.isfinite(value):
                raise InvalidInput(f"{where}.{name}: expected a number, got {_describe(value)}")
        for name, categories in self.categorical.items():
            value = row[name]
            if not categories:  # nothing seen in training: any category maps to #na#
                if not isinstance(value, str) and not _number(value):
                    raise InvalidInput(
                        f"{where}.{name}: expected a category, got {_describe(value)}"
                    )
                continue
            textual = all(isinstance(c, str) for c in categories)
            if textual and not isinstance(value, str):
                raise InvalidInput(
                    f"{where}.{name}: expected a category (a string such as "
                    f"{categories[0]!r}), got {_describe(value)}"
                )
            if not textual and not _number(value):
                raise InvalidInput(f"{where}.{name}: expected a number, got {_describe(value)}")


def _check_columns(dls: Any) -> None:
    """The learner's column tables must be plain data before anything is called on them (a
    crafted export could put any object where fastai keeps a dict)."""
    procs = dls.procs
    classes = getattr(getattr(procs, "categorify", None), "classes", {})
    na_dict = getattr(getattr(procs, "fill_missing", None), "na_dict", {})
    names = [*dls.cat_names, *dls.cont_names, *classes, *na_dict]
    plain = isinstance(classes, dict) and isinstance(na_dict, dict)
    if not plain or not all(type(n) is str for n in names):
        raise ModelLoadError("a fastai tabular learner whose column tables are not plain data")
    for name, categories in classes.items():
        if not all(np.isscalar(c) for c in categories):
            raise ModelLoadError(f"a fastai tabular learner with non-value categories in {name!r}")


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
