"""A handler whose instances are bytes, as a BYTES tensor of the Open Inference Protocol carries
them to a ``--handler`` model: each is ``b"x,y"``; predictions are ``{"sum": x + y}``."""

from typing import Any

import numpy as np

files = True  # instances are files: raw bytes, not JSON values


def preprocess(instances: list[bytes]) -> np.ndarray:
    """``b"1,2"`` -> ``[1.0, 2.0]``; anything else makes the hook fail (a 500)."""
    return np.array(
        [[float(v) for v in bytes(i).decode().split(",")] for i in instances], np.float32
    )


def postprocess(outputs: list[np.ndarray]) -> list[Any]:
    return [{"sum": float(row.sum())} for row in outputs[0]]
