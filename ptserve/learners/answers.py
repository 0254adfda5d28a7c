"""Answers as ``learn.predict`` gives them, from probabilities and decoded outputs."""

from typing import Any

import numpy as np


def learner_answers(
    vocab: list[str] | None, probabilities: np.ndarray[Any, Any], decoded: np.ndarray[Any, Any]
) -> list[dict[str, Any]]:
    """One answer per sample: ``{"label", "probabilities"}`` for a classifier (``decoded``
    holds class indices), ``{"labels", "probabilities"}`` for multi-label (``decoded`` holds
    one flag per class), ``{"prediction": [...]}`` without a vocabulary (regression)."""
    if vocab is None:
        return [{"prediction": row.tolist()} for row in decoded]
    answers: list[dict[str, Any]] = []
    for p, d in zip(probabilities.tolist(), decoded, strict=True):
        scores = dict(zip(vocab, p, strict=True))
        if np.ndim(d) == 0:
            answers.append({"label": vocab[int(d)], "probabilities": scores})
        else:  # multi-label: every label decoded as present
            labels = [v for v, on in zip(vocab, np.asarray(d).tolist(), strict=True) if on]
            answers.append({"labels": labels, "probabilities": scores})
    return answers
