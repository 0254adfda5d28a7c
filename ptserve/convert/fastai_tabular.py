"""A fastai tabular Learner's preprocessing as plain data, and rows to check the conversion on
(in the conversion's child process: fastai is loaded here)."""

import math
from typing import Any

import numpy as np

from ptserve.convert import ConversionError
from ptserve.convert.manifest import Category, Normalize, TabularPreprocessing, type_name

NA_CATEGORY = "#na#"
# Procs that touch only the target column(s): nothing a request sends.
TARGET_PROCS = {
    "fastai.data.transforms.Categorize",
    "fastai.data.transforms.MultiCategorize",
    "fastai.data.transforms.EncodedMultiCategorize",
    "fastai.data.transforms.RegressionSetup",
}
INPUT_PROCS = {
    "fastai.tabular.core.FillMissing",
    "fastai.tabular.core.Categorify",
    "fastai.data.transforms.Normalize",
}


def is_tabular(learn: Any) -> bool:
    """Whether ``learn`` is a tabular Learner (its data has categorical and continuous columns)."""
    return hasattr(learn.dls, "cat_names") and hasattr(learn.dls, "cont_names")


def tabular_preprocessing(learn: Any) -> TabularPreprocessing:
    """The procs of ``learn`` as data; ConversionError naming a proc it cannot represent."""
    dls = learn.dls
    procs = {type_name(p): p for p in dls.procs.fs}
    for name in procs:
        if name not in INPUT_PROCS | TARGET_PROCS:
            raise ConversionError(
                f"the tabular proc {name} is not one ptserve convert can represent "
                f"(supported: {', '.join(sorted(INPUT_PROCS))})"
            )
    fill_missing = procs.get("fastai.tabular.core.FillMissing")
    na_dict = dict(fill_missing.na_dict) if fill_missing is not None else {}
    indicators = (
        {f"{n}_na": n for n in na_dict if f"{n}_na" in dls.cat_names}
        if fill_missing is not None and fill_missing.add_col
        else {}
    )
    categorify = procs.get("fastai.tabular.core.Categorify")
    classes = categorify.classes if categorify is not None else {}
    missing_vocab = [n for n in dls.cat_names if n not in classes]
    if missing_vocab:
        raise ConversionError(
            f"the categorical column(s) {', '.join(missing_vocab)} have no Categorify vocabulary"
        )
    continuous = [str(n) for n in dls.cont_names]
    normalize = procs.get("fastai.data.transforms.Normalize")
    return TabularPreprocessing(
        kind="tabular",
        categorical=[str(n) for n in dls.cat_names],
        continuous=continuous,
        vocab={str(n): _vocab(n, classes[n]) for n in dls.cat_names},
        indicators=indicators,
        fill={str(n): float(v) for n, v in na_dict.items()},
        normalize=Normalize(
            means=[float(normalize.means[n]) for n in continuous],
            stds=[float(normalize.stds[n]) for n in continuous],
        )
        if normalize is not None
        else None,
    )


def _vocab(column: str, categories: Any) -> list[Category]:
    """A Categorify vocabulary as JSON values: code 0 is ``#na#``; NaN (which pandas never
    matches to a category) is kept as None so the codes stay in place."""
    vocab: list[Category] = []
    for code, category in enumerate(categories):
        value = category.item() if isinstance(category, np.generic) else category
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif code and not isinstance(value, str | bool | int | float):
            raise ConversionError(
                f"the categorical column {column!r} has categories of type "
                f"{type(value).__name__}; ptserve convert represents strings, numbers and booleans"
            )
        vocab.append(value)
    if not vocab or vocab[0] != NA_CATEGORY:
        raise ConversionError(f"the categorical column {column!r} has no #na# category first")
    return vocab


def sample_rows(spec: TabularPreprocessing, count: int) -> list[dict[str, Any]]:
    """Rows to check the conversion on, generated from the learner's own statistics (an export
    keeps no training rows): known, unseen and missing categories; numbers around the training
    mean, and missing ones where FillMissing fills them."""
    rng = np.random.default_rng(0)
    norm = spec.normalize
    means = norm.means if norm else [0.0] * len(spec.continuous)
    stds = norm.stds if norm else [1.0] * len(spec.continuous)
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for name, vocab in spec.vocab.items():
            if name not in spec.indicators:
                row[name] = _category([c for c in vocab[1:] if c is not None], rng)
        for name, mean, std in zip(spec.continuous, means, stds, strict=True):
            missing = name in spec.fill and rng.random() < 0.2
            row[name] = None if missing else round(mean + std * float(rng.normal()) * 1.5, 6)
        rows.append(row)
    return rows


def _category(known: list[Category], rng: np.random.Generator) -> Category:
    draw = rng.random()
    if draw < 0.1 or not known:
        return None  # missing: #na#
    if draw < 0.2 and not any(isinstance(c, bool) for c in known):  # unseen: #na# too
        numbers = [c for c in known if isinstance(c, int | float)]
        return max(numbers) + 1 if numbers else "ptserve-unseen-category"
    return known[int(rng.integers(len(known)))]
