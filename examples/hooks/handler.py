"""A worked ``--handler`` for the bundled digits model: draw a digit as text, get a verdict.

    ptserve serve --handler examples/hooks/handler.py
    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"instances": [[
      "   ##   ", "  ####  ", "  #  ## ", "  #  ## ",
      "  #  ## ", "  #  ## ", "  # ##  ", "   ##   "]]}'
    {"predictions":[{"digit":"0","confidence":0.99...,"sure":true}],"model":"digits"}

An instance is 8 rows of 8 characters; a space is an empty pixel, anything else is ink.
Hooks run on a worker thread; a pydantic ValidationError or ``InvalidInput`` raised by a hook
answers 422 with the place of the problem, any other error 500 (logged with the request id).
"""

from typing import Annotated, Any

import numpy as np
from annotated_types import Len
from pydantic import TypeAdapter

INK = 16.0  # the digits data's darkest pixel
SURE = 0.9
Row = Annotated[str, Len(8, 8)]
DRAWINGS = TypeAdapter(list[Annotated[list[Row], Len(8, 8)]])
# One instance as a request sends it: the example in /docs and on the try-it page.
example = [
    "   ##   ",
    "  ####  ",
    "  #  ## ",
    "  #  ## ",
    "  #  ## ",
    "  #  ## ",
    "  # ##  ",
    "   ##   ",
]


def preprocess(instances: list[Any]) -> np.ndarray:
    """8 rows of 8 characters per instance -> a (batch, 64) float32 array of pixels 0-16."""
    drawings = DRAWINGS.validate_python(instances)
    ink = [[0.0 if c == " " else INK for row in rows for c in row] for rows in drawings]
    return np.asarray(ink, dtype=np.float32)


def postprocess(outputs: list[np.ndarray]) -> list[dict[str, Any]]:
    """Logits -> the digit, its softmax probability, and whether the model is sure."""
    (logits,) = outputs
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    return [
        {"digit": str(row.argmax()), "confidence": float(row.max()), "sure": bool(row.max() > SURE)}
        for row in probs
    ]
