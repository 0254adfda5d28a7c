"""From raw model outputs to predictions: per-sample outputs, or labels with their scores
(softmax, sigmoid or the raw outputs), the k best, and every label over a threshold."""

import json
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ptserve.errors import InvalidInput, ModelLoadError
from ptserve.signature import Signature


def read_labels(path: Path) -> list[str]:
    """Labels from a text file (one per line) or a JSON list / ``{"0": "cat", ...}`` object."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read labels ({exc.strerror})") from None
    if path.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: labels are not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = [data[k] for k in sorted(data, key=int)]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ModelLoadError(f"{path}: expected a JSON list of label strings")
    return data


def find_labels(model_path: Path, given: Path | None) -> Path | None:
    """The labels file: the one given, else labels.txt or labels.json beside the model."""
    if given is not None:
        return given
    folder = model_path.resolve().parent
    return next((p for n in ("labels.txt", "labels.json") if (p := folder / n).is_file()), None)


Activation = Literal["softmax", "sigmoid", "none"]


def activate(outputs: np.ndarray[Any, Any], activation: Activation) -> np.ndarray[Any, Any]:
    """Label scores from a batch of outputs (one row per sample)."""
    if activation == "softmax":
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-outputs))  # type: ignore[no-any-return]
    return outputs


class Postprocessor:
    """Splits batched outputs into per-sample predictions."""

    def __init__(
        self,
        signature: Signature,
        labels: list[str] | None,
        top_k: int | None,
        activation: Activation = "softmax",
        threshold: float | None = None,
    ) -> None:
        self.names = [spec.name for spec in signature.outputs]
        self.labels = labels
        self.top_k = top_k
        self.activation: Activation = activation
        self.threshold = threshold
        if threshold is not None and labels is None:
            raise ModelLoadError("a threshold needs class labels (a labels file)")
        if labels is not None and top_k is not None and top_k > len(labels):
            raise ModelLoadError(f"top_k {top_k} is more than the model's {len(labels)} classes")
        if labels is not None:
            shapes = [spec.shape for spec in signature.outputs]
            if shapes != [(len(labels),)]:
                raise ModelLoadError(
                    f"{len(labels)} labels given, but the model's output per sample has shape "
                    f"{', '.join(str(list(s)) for s in shapes)}; labels need one output of "
                    f"shape [{len(labels)}]"
                )

    def check(self, top_k: int | None) -> None:
        """Refuse a request option this model cannot honour, before the model runs."""
        if top_k is None:
            return
        if self.labels is None:
            raise InvalidInput("top_k: this model has no class labels")
        if top_k > len(self.labels):
            raise InvalidInput(
                f"top_k: {top_k} is more than the model's {len(self.labels)} classes"
            )

    def scores(self, outputs: list[np.ndarray[Any, Any]]) -> list[Any]:
        """What labelled predictions need, for a whole batch at once (vectorised, on the
        inference thread): label scores, and as lists (cheaper to split and read than arrays)
        the best label's index and whether each row is finite. Nothing without labels."""
        if self.labels is None:
            return []
        logits = outputs[0]
        probs = activate(logits, self.activation)
        return [probs, probs.argmax(axis=-1).tolist(), np.isfinite(logits).all(axis=-1).tolist()]

    def __call__(self, outputs: list[np.ndarray[Any, Any]], top_k: int | None) -> list[Any]:
        """One prediction per sample. ``outputs``: the model's, optionally followed by what
        ``scores`` computed for them."""
        count = len(self.names)
        if self.labels is not None:
            # the batcher splits the scores as it splits outputs: best and finite stay lists
            probs, best, finite = outputs[count:] or self.scores(outputs[:count])
            return self._labelled(
                outputs[0], probs, cast(list[int], best), cast(list[bool], finite),
                top_k or self.top_k,
            )  # fmt: skip
        if count == 1:
            return list(outputs[0])
        return [
            dict(zip(self.names, row, strict=True)) for row in zip(*outputs[:count], strict=True)
        ]

    def _labelled(
        self,
        logits: np.ndarray[Any, Any],
        probs: np.ndarray[Any, Any],
        best: list[int],
        finite: list[bool],
        top_k: int | None,
    ) -> list[Any]:
        labels = self.labels
        assert labels is not None
        if not all(finite):  # a label picked from NaN scores would be made up
            raise InvalidInput(
                f"instances[{finite.index(False)}]: the model's output for this input is not "
                "finite (NaN or Infinity); the input is outside the range the model computes on"
            )
        predictions: list[Any] = []
        for i, b in enumerate(best):
            row = probs[i]
            prediction: dict[str, Any] = {"label": labels[b], "score": row[b], "output": logits[i]}
            if top_k:
                order = np.argsort(-row, kind="stable")[:top_k]
                prediction["top_k"] = [{"label": labels[j], "score": row[j]} for j in order]
            if self.threshold is not None:
                prediction["labels"] = [
                    label for label, score in zip(labels, row.tolist(), strict=True)
                    if score >= self.threshold
                ]  # fmt: skip
            predictions.append(prediction)
        return predictions
