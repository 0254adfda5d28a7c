"""What a model takes and gives: names, dtypes and per-sample shapes (-1 for a variable dim)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype a request's values are decoded into (bfloat16 travels as float32)."""
    return np.dtype("float32" if dtype == "bfloat16" else dtype)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; ``shape`` is per sample, without the batch dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def example(self) -> np.ndarray[Any, Any]:
        """A zero sample of this spec, variable dims set to 1."""
        return np.zeros([d if d >= 0 else 1 for d in self.shape], dtype=numpy_dtype(self.dtype))

    def matches(self, sample_shape: tuple[int, ...]) -> bool:
        """Whether one sample of ``sample_shape`` fits this spec."""
        return len(sample_shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, sample_shape, strict=True)
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """A model's inputs and, once probed, its outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()
    source: str = "settings"
    example: tuple[np.ndarray[Any, Any], ...] | None = field(default=None, compare=False)

    def example_sample(self) -> tuple[np.ndarray[Any, Any], ...]:
        """One valid sample per input: the saved example when there is one, else zeros."""
        if self.example is not None:
            return self.example
        return tuple(spec.example() for spec in self.inputs)

    def describe(self) -> dict[str, Any]:
        return {
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
            "source": self.source,
        }


def spec_from_tensor(name: str, batch: torch.Tensor, variable: frozenset[int]) -> TensorSpec:
    """The per-sample spec of a batched tensor; dims listed in ``variable`` become -1."""
    shape = tuple(-1 if i + 1 in variable else int(d) for i, d in enumerate(batch.shape[1:]))
    return TensorSpec(name, DTYPE_NAMES.get(batch.dtype, str(batch.dtype)), shape)


def read_example(path: Path, names: list[str] | None = None) -> Signature:
    """A signature from an example batch saved as ``.npy`` (one input) or ``.npz`` (named inputs).

    Loaded with ``allow_pickle=False``: an example file can never run code.
    """
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        arrays = {(names or ["input"])[0]: loaded}
    else:
        arrays = {key: loaded[key] for key in loaded.files}
    specs, samples = [], []
    for name, array in arrays.items():
        if array.ndim == 0:
            raise ValueError(f"example input {path.name}: '{name}' needs a batch dimension")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        specs.append(spec_from_tensor(name, tensor, frozenset()))
        samples.append(array[0])
    return Signature(tuple(specs), source=f"example file {path.name}", example=tuple(samples))
