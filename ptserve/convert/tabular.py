"""A converted tabular learner's preprocessing, in numpy: what fastai's FillMissing, Categorify
and Normalize procs do to a request's rows, from the manifest's plain data."""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptserve.convert.manifest import TabularPreprocessing
from ptserve.hooks import Arrays
from ptserve.learners.requests import Columns


@dataclass
class TabularRows:
    """Rows of named columns -> ``[x_cat int64, x_cont float32]``, batched."""

    spec: TabularPreprocessing
    columns: Columns = field(init=False)
    codes: dict[str, dict[Any, int]] = field(init=False)
    means: np.ndarray[Any, Any] = field(init=False)
    stds: np.ndarray[Any, Any] = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self.columns = Columns(
            {n: [c for c in spec.vocab[n][1:] if c is not None] for n in self.requested},
            list(spec.continuous),
            frozenset(spec.fill),
        )
        # Python's == is pandas' rule for matching a value to a category (1 == 1.0 == True);
        # code 0 (#na#) is for anything else, as fastai's Categorify gives.
        self.codes = {
            n: {c: code for code, c in enumerate(spec.vocab[n]) if code and c is not None}
            for n in spec.categorical
        }
        count = len(spec.continuous)
        norm = spec.normalize
        self.means = np.asarray(norm.means if norm else [0.0] * count, dtype=np.float64)
        self.stds = np.asarray(norm.stds if norm else [1.0] * count, dtype=np.float64)

    @property
    def requested(self) -> list[str]:
        """The categorical columns a request sends (FillMissing makes the ``_na`` ones)."""
        return [n for n in self.spec.categorical if n not in self.spec.indicators]

    @property
    def example(self) -> dict[str, Any]:
        """A typical row: each category's first value, each number's training mean."""
        return self.columns.example(dict(zip(self.spec.continuous, self.means, strict=True)))

    def preprocess(self, instances: list[Any]) -> Arrays:
        """Rows (``{"column": value}``) -> the model's two inputs; 422 naming a bad column."""
        for i, row in enumerate(instances):
            self.columns.check(row, f"instances[{i}]")
        spec = self.spec
        conts = np.array(
            [[_number(row[n]) for n in spec.continuous] for row in instances], dtype=np.float64
        ).reshape(len(instances), len(spec.continuous))
        missing = np.isnan(conts)
        for j, name in enumerate(spec.continuous):
            if name in spec.fill:
                conts[missing[:, j], j] = spec.fill[name]
        flagged = {n: missing[:, spec.continuous.index(c)] for n, c in spec.indicators.items()}
        cats = np.array(
            [
                [
                    self.codes[n].get(bool(flagged[n][i]) if n in flagged else row[n], 0)
                    for n in spec.categorical
                ]
                for i, row in enumerate(instances)
            ],
            dtype=np.int64,
        ).reshape(len(instances), len(spec.categorical))
        # fastai normalises in float64 and hands the model float32
        normalised = ((conts - self.means) / self.stds).astype(np.float32)
        return [cats, normalised]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
