"""A fastai tabular Learner: rows of named columns in, validated against the learner's columns.

``learn.dls.test_dl`` applies the training-time procs (Categorify, FillMissing, Normalize) to a
request's rows; ``learn.model`` takes ``(x_cat, x_cont)``.
"""

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptserve.hooks import Arrays
from ptserve.learners.requests import Columns
from ptserve.signature import Signature, TensorSpec

NA_CATEGORY = "#na#"


@dataclass
class TabularLearner:
    """Validates rows against a tabular Learner's columns and turns them into model inputs."""

    learn: Any
    columns: Columns = field(init=False)
    lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        dls = self.learn.dls
        procs = dls.procs
        # FillMissing adds "<col>_na" categorical columns itself; a request does not send them
        na_dict = getattr(getattr(procs, "fill_missing", None), "na_dict", {})
        added = {f"{n}_na" for n in na_dict}
        classes = getattr(getattr(procs, "categorify", None), "classes", {})
        categorical = {
            n: [_plain(c) for c in classes.get(n, []) if c != NA_CATEGORY]
            for n in dls.cat_names
            if n not in added
        }
        self.columns = Columns(categorical, list(dls.cont_names), frozenset(na_dict))

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
        return self.columns.example(means)

    def preprocess(self, instances: list[Any]) -> Arrays:
        """Rows (``{"column": value}``) -> ``[x_cat int64, x_cont float32]``, batched."""
        import pandas as pd

        for i, row in enumerate(instances):
            self.columns.check(row, f"instances[{i}]")
        frame = pd.DataFrame(instances, columns=self.columns.names)
        with self.lock:  # fastai's procs were written for one caller at a time
            processed = self.learn.dls.test_dl(frame).dataset
        return [
            np.asarray(processed.cats.to_numpy(), dtype=np.int64).reshape(len(frame), -1),
            np.asarray(processed.conts.to_numpy(), dtype=np.float32).reshape(len(frame), -1),
        ]


def _plain(category: Any) -> Any:
    """A numpy scalar category as the Python value JSON carries."""
    return category.item() if isinstance(category, np.generic) else category
