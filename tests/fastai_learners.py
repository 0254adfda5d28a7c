"""A small fastai tabular Learner trained on iris as a DataFrame (needs the fastai extra)."""

import math
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


def train_tabular(folder: Path, missing: bool = False) -> TabularExport:
    """One epoch, fixed seed; exported to ``folder/export.pkl``. ``missing``: a tenth of two
    continuous columns missing (FillMissing fills them and adds ``_na`` columns), and two more
    categorical columns, of numbers and of booleans; the rows asked about then include missing
    and unseen values."""
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
    categorical = list(CATEGORICAL)
    if missing:
        rng = np.random.default_rng(1)
        for name in ("sepal_width", "petal_length"):
            frame.loc[rng.random(len(frame)) < 0.1, name] = np.nan
        frame["size"] = rng.choice([1, 2, 3], len(frame))
        frame["big"] = frame["sepal_length"] > 6
        categorical += ["size", "big"]
    dls = TabularDataLoaders.from_df(
        frame, path=folder, y_names="target", cat_names=list(categorical), cont_names=CONTINUOUS,
        procs=[Categorify, FillMissing, Normalize], bs=32,
    )  # fmt: skip
    learn = tabular_learner(dls, layers=[16])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    learn.export(folder / "export.pkl")
    picked = frame.iloc[::15][[*categorical, *CONTINUOUS]]
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in picked.to_dict("records")
    ]
    if missing:
        rows += [
            {**rows[0], "colour": "purple", "size": 7, "sepal_width": None},  # unseen, missing
            {**rows[1], "colour": None, "big": None, "petal_length": None},  # missing
        ]
    return TabularExport(folder / "export.pkl", learn, rows)


@dataclass(frozen=True)
class VisionExport:
    path: Path
    learn: Any  # the Learner as trained, for learn.predict
    images: list[Path]  # PNGs to ask about


def render_digits(folder: Path, count: int) -> list[Path]:
    """scikit-learn's first ``count`` 8x8 digits as 24x24 PNGs, ``<folder>/<digit>/<i>.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i, (pixels, digit) in enumerate(
        zip(digits.data[:count], digits.target[:count], strict=True)
    ):
        grey = (255 - pixels.reshape(8, 8) * 255 / 16).astype(np.uint8)
        path = folder / str(digit) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey, "L").resize((24, 24), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths


def train_vision(
    folder: Path, grey: bool = False, augmented: bool = False, multi_label: bool = False
) -> VisionExport:
    """A resnet18 ``vision_learner`` (random init), one short epoch on 300 digit images, exported
    to ``folder/export.pkl``. ``grey``: PILImageBW inputs and a lambda labeller (which
    cloudpickle stores as code, as a notebook's label function is); ``augmented``: read from a
    DataFrame (``from_df``), with ``aug_transforms`` and ImageNet ``Normalize`` as batch
    transforms, as most real exports have; ``multi_label``: each digit labelled with every
    one of "even", "odd", "small" (under 5) and "large" that applies (``MultiCategoryBlock``,
    sigmoid outputs), resized by padding; else RGB ``from_folder``."""
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        ImageDataLoaders,
        MultiCategoryBlock,
        Normalize,
        PILImageBW,
        RandomSplitter,
        Resize,
        aug_transforms,
        imagenet_stats,
        resnet18,
        set_seed,
        vision_learner,
    )

    set_seed(0)
    paths = render_digits(folder / "png", 300)
    if grey:
        block = DataBlock(
            blocks=(ImageBlock(cls=PILImageBW), CategoryBlock),
            get_y=lambda path: path.parent.name,
            splitter=RandomSplitter(0.2, seed=0),
            item_tfms=Resize(28),
        )
        dls = block.dataloaders(paths, bs=32, num_workers=0)
    elif multi_label:
        block = DataBlock(
            blocks=(ImageBlock, MultiCategoryBlock),
            get_y=digit_tags,
            splitter=RandomSplitter(0.2, seed=0),
            item_tfms=Resize(30, method="pad", pad_mode="zeros"),
        )
        dls = block.dataloaders(paths, bs=32, num_workers=0)
    elif augmented:
        import pandas as pd

        names = [str(p.relative_to(folder / "png")) for p in paths]
        frame = pd.DataFrame({"name": names, "label": [p.parent.name for p in paths]})
        batch_tfms = [
            *aug_transforms(size=32, min_scale=0.8),
            Normalize.from_stats(*imagenet_stats),
        ]
        dls = ImageDataLoaders.from_df(
            frame, path=folder / "png", valid_pct=0.2, seed=0, item_tfms=Resize(32),
            batch_tfms=batch_tfms, bs=32, num_workers=0,
        )  # fmt: skip
    else:
        dls = ImageDataLoaders.from_folder(
            folder / "png", valid_pct=0.2, seed=0, item_tfms=Resize(32), bs=32, num_workers=0
        )
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1 if grey else 3)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    learn.export(folder / "export.pkl")
    return VisionExport(folder / "export.pkl", learn, paths[::37][:8])


def digit_tags(path: Path) -> Any:  # fastai casts to a return annotation; list[str] breaks it
    """The multi-label learner's labels for a digit image (its folder names the digit)."""
    digit = int(path.parent.name)
    return ["even" if digit % 2 == 0 else "odd", "small" if digit < 5 else "large"]
