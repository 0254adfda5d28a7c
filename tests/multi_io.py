"""A model with two named inputs and two named outputs (``tests.nets.TwoInputs``), saved for
serving, with its in-process outputs to compare against."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.nets import TwoInputs

SETTINGS: dict[str, Any] = {"trust_modules": ["tests.nets"]}


def save_two_inputs(folder: Path) -> Path:
    """Save a seeded TwoInputs as ``two.pt`` with the example batch that gives its signature:
    ``image`` float32 [4] and ``extra`` float32 [3]; outputs ``sum`` [2] and ``norm`` [1]."""
    torch.manual_seed(0)
    torch.save(TwoInputs().eval(), folder / "two.pt")
    np.savez(
        folder / "two.example.npz",
        image=np.ones((1, 4), np.float32),
        extra=np.ones((1, 3), np.float32),
    )
    return folder / "two.pt"


def two_inputs_expected(
    path: Path, image: np.ndarray[Any, Any], extra: np.ndarray[Any, Any]
) -> dict[str, np.ndarray[Any, Any]]:
    """The saved model's outputs, computed in-process."""
    net = torch.load(path, weights_only=False)
    with torch.inference_mode():
        outputs = net(torch.from_numpy(image), torch.from_numpy(extra))
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def two_inputs_batch(rows: int = 3) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A batch of ``rows`` samples: (image, extra)."""
    rng = np.random.default_rng(7)
    image = rng.normal(size=(rows, 4)).astype(np.float32)
    extra = rng.normal(size=(rows, 3)).astype(np.float32)
    return image, extra
