"""A small fastai tabular Learner trained on iris as a DataFrame (needs the fastai extra)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CATEGORICAL = ["colour"]
CONTINUOUS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass(frozen=True)
class TabularExport:
    path: Path
    learn: Any  # the Learner as trained, for learn.predict
    rows: list[dict[str, Any]]  # request rows, JSON-ready


def iris_frame() -> Any:
    """Iris with readable column names, string targets and one synthetic categorical column."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame.columns = [*CONTINUOUS, "target"]
    frame["target"] = frame["target"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    frame["colour"] = np.random.default_rng(0).choice(["red", "green", "blue"], len(frame))
    return frame


def train_tabular(folder: Path) -> TabularExport:
    """One epoch, fixed seed; exported to ``folder/export.pkl``."""
    from fastai.tabular.all import (
        Categorify,
        FillMissing,
        Normalize,
        TabularDataLoaders,
        set_seed,
        tabular_learner,
    )

    set_seed(0)
    frame = iris_frame()
    dls = TabularDataLoaders.from_df(
        frame, path=folder, y_names="target", cat_names=CATEGORICAL, cont_names=CONTINUOUS,
        procs=[Categorify, FillMissing, Normalize], bs=32,
    )  # fmt: skip
    learn = tabular_learner(dls, layers=[16])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    learn.export(folder / "export.pkl")
    picked = frame.iloc[::15][[*CATEGORICAL, *CONTINUOUS]]
    rows = [
        {k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}
        for row in picked.to_dict("records")
    ]
    return TabularExport(folder / "export.pkl", learn, rows)
