"""The two benchmark models and their request bodies, built with fixed seeds.

Both models are whole pickled ``nn.Sequential`` objects made only of ``torch.nn`` building
blocks, so ptserve can load them without trust flags.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from torch import nn

MODEL_NAMES: tuple[str, ...] = ("mlp", "conv")
SEED = 0


@dataclass(frozen=True)
class ModelArtifact:
    """A saved benchmark model and the request body that carries one sample."""

    name: str
    path: Path
    body_path: Path
    v2_body_path: Path
    v2_header_length: int
    input_shape: tuple[int, ...]
    parameters: int
    body_bytes: int
    description: str


def build_mlp() -> nn.Sequential:
    """Linear(64, 64)-ReLU-Linear(64, 10): a forward costs tens of microseconds."""
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def build_conv() -> nn.Sequential:
    """A small conv net on 3x64x64 costing about 3 ms of CPU per sample (one thread)."""
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16 * 16, 10),
    )


def mlp_sample() -> list[float]:
    """The first scikit-learn digit: 64 raw pixel values in 0..16."""
    data: np.ndarray = load_digits().data
    return [float(v) for v in data[0]]


def conv_sample() -> list[Any]:
    """A 3x64x64 random image (fixed seed) rounded to 4 decimals, as nested lists."""
    rng = np.random.default_rng(SEED)
    values: list[Any] = np.round(rng.random((3, 64, 64)), 4).tolist()
    return values


_BUILDERS: dict[str, tuple[Callable[[], nn.Sequential], Callable[[], list[Any]], str]] = {
    "mlp": (build_mlp, mlp_sample, "Linear(64,64)-ReLU-Linear(64,10); sample = 64 floats"),
    "conv": (
        build_conv,
        conv_sample,
        "Conv(3,32)-Conv(32,32)-Pool-Conv(32,64)-Pool-Linear(16384,10); sample = 3x64x64",
    ),
}


def create_model(name: str, directory: Path) -> ModelArtifact:
    """Build model ``name``, save it with ``torch.save`` and write its one-sample body."""
    build, sample_fn, description = _BUILDERS[name]
    model = build().eval()
    sample = sample_fn()
    shape = tuple(torch.tensor(sample).shape)
    path = directory / f"{name}.pt"
    torch.save(model, path)
    body = json.dumps({"instances": [sample]}, separators=(",", ":")).encode()
    body_path = directory / f"{name}.body.json"
    body_path.write_bytes(body)
    v2_body_path = directory / f"{name}.body.v2"
    v2_header_length = write_v2_binary_body(v2_body_path, sample)
    return ModelArtifact(
        name=name,
        path=path,
        body_path=body_path,
        v2_body_path=v2_body_path,
        v2_header_length=v2_header_length,
        input_shape=shape,
        parameters=sum(p.numel() for p in model.parameters()),
        body_bytes=len(body),
        description=description,
    )


def write_v2_binary_body(path: Path, sample: object) -> int:
    """An Open Inference Protocol request with the sample as a binary FP32 tensor (and the
    output asked for in binary); returns the JSON header's length."""
    tensor = torch.tensor(sample, dtype=torch.float32).unsqueeze(0).numpy()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    path.write_bytes(header + tensor.tobytes())
    return len(header)


def load_sample_batch(model: ModelArtifact, batch_size: int) -> torch.Tensor:
    """The body's sample repeated ``batch_size`` times, as a float32 tensor."""
    sample = json.loads(model.body_path.read_bytes())["instances"][0]
    one = torch.tensor(sample, dtype=torch.float32).unsqueeze(0)
    return one.repeat(batch_size, *([1] * (one.dim() - 1)))
