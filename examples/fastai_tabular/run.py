"""A fastai tabular Learner, end to end: train on a DataFrame, export, convert, serve, query.

    python examples/fastai_tabular/run.py          # about 40 s on 2 cores (needs ptserve[fastai])

Trains a small ``tabular_learner`` on scikit-learn's wine data set (as a pandas DataFrame, with
one categorical column made from the alcohol content), exports it with ``learn.export()``,
converts the export once into a pickle-free folder (``ptserve convert``: the model as a
``torch.export`` program, the preprocessing as data, checked against ``learn.predict``), starts
``ptserve serve`` on that folder on a free port and asks for a few rows' classes. By hand:

    ptserve convert examples/fastai_tabular/build/export.pkl examples/fastai_tabular/build/wine
    ptserve serve examples/fastai_tabular/build/wine      # no fastai needed from here on
    curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
        -d '{"instances": [{"strength": "high", "alcohol": 13.2, ...}]}'
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from sklearn.datasets import load_wine

from ptserve.launch import launched

OUT = Path(__file__).resolve().parent / "build"
CONTINUOUS = ["alcohol", "malic_acid", "ash", "flavanoids", "color_intensity", "proline"]


def wine() -> pd.DataFrame:
    """The wine data set with a categorical column and named classes."""
    frame = load_wine(as_frame=True).frame[[*CONTINUOUS, "target"]]
    frame["strength"] = pd.cut(frame["alcohol"], [0, 12.5, 13.5, 99], labels=["low", "mid", "high"])
    frame["strength"] = frame["strength"].astype(str)
    frame["target"] = frame["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return frame


def train(out: Path, epochs: int) -> list[dict[str, Any]]:
    """Train and export; return a few rows to ask about, JSON-ready."""
    from fastai.tabular.all import (
        Categorify,
        FillMissing,
        Normalize,
        TabularDataLoaders,
        accuracy,
        set_seed,
        tabular_learner,
    )

    set_seed(0)
    frame = wine()
    dls = TabularDataLoaders.from_df(
        frame, path=out, y_names="target", cat_names=["strength"], cont_names=CONTINUOUS,
        procs=[Categorify, FillMissing, Normalize], bs=32,
    )  # fmt: skip
    learn = tabular_learner(dls, layers=[32, 16], metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, 1e-2)
    learn.export(out / "export.pkl")
    rows = frame.sample(5, random_state=1)
    return [
        {
            "truth": r.pop("target"),
            "row": {k: v if isinstance(v, str) else float(v) for k, v in r.items()},
        }
        for r in rows.to_dict("records")
    ]


def convert(out: Path) -> Path:
    """``ptserve convert`` the export into ``out/wine`` (replacing an earlier one)."""
    folder = out / "wine"
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "ptserve", "convert", str(out / "export.pkl"), str(folder)]
    subprocess.run(command, check=True)
    return folder


def serve_and_query(folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Serve the converted folder and ask for ``rows``' predictions."""
    with launched(str(folder)) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/predict", json={"instances": [r["row"] for r in rows]})
        response.raise_for_status()
        predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asked = train(args.out, args.epochs)
    folder = convert(args.out)
    for question, answer in zip(asked, serve_and_query(folder, asked), strict=True):
        best = answer["probabilities"][answer["label"]]
        sys.stdout.write(
            f"{json.dumps(question['row'])}: truth {question['truth']}, "
            f"predicted {answer['label']} ({best:.2f})\n"
        )
