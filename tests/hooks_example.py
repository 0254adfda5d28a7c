"""Handlers for hook tests, importable as ``tests.hooks_example`` or ``...:Scaled``."""

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter

from ptserve.errors import InvalidInput


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float
    y: float


POINTS = TypeAdapter(list[Point])


def preprocess(instances: list[Any]) -> np.ndarray:
    """``{"x": 1, "y": 2}`` instances -> a (batch, 2) array; ``"boom"`` crashes on purpose."""
    if "boom" in instances:
        raise RuntimeError("the hook crashed")
    if "nope" in instances:
        raise InvalidInput("instances: 'nope' is not a point")
    points = POINTS.validate_python(instances)
    return np.array([[p.x, p.y] for p in points], dtype=np.float32)


def postprocess(outputs: list[np.ndarray]) -> list[Any]:
    """One ``{"sum": ...}`` per sample; a sum of exactly 13 returns too few predictions."""
    (values,) = outputs
    if (values == 13).any():
        return []
    return [{"sum": float(row.sum())} for row in values]


class Scaled:
    """An object handler with only a postprocess hook."""

    def postprocess(self, outputs: list[np.ndarray]) -> list[Any]:
        return [float(v) * 10 for v in outputs[0][:, 0]]
