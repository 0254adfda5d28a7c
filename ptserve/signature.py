"""What a model takes and gives: names, dtypes and per-sample shapes (-1 for a variable dim)."""

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptserve.arrays import read_arrays

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

    Read by ``ptserve.arrays`` within limits and never unpickled: an example file can never
    run code.
    """
    loaded = read_arrays(path)
    arrays = {(names or ["input"])[0]: loaded} if isinstance(loaded, np.ndarray) else loaded
    specs, samples = [], []
    for name, array in arrays.items():
        if array.ndim == 0:
            raise ValueError(f"example input {path.name}: '{name}' needs a batch dimension")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        specs.append(spec_from_tensor(name, tensor, frozenset()))
        samples.append(array[0])
    return Signature(tuple(specs), source=f"example file {path.name}", example=tuple(samples))


def forward_inputs(model: object) -> list[str] | None:
    """The names of the inputs the model's ``forward`` requires, in order; None when they
    cannot be told (``*args``, a loaded TorchScript method)."""
    positional = _positional_parameters(model)
    return None if positional is None else [p.name for p in positional if p.default is p.empty]


def check_forward(model: object, signature: Signature) -> str | None:
    """A warning when the model's ``forward`` takes other inputs than ``signature`` gives it
    (ptserve passes one positional argument per input, in order), else None; None too when
    forward's parameters cannot be told."""
    positional = _positional_parameters(model)
    if positional is None:
        return None
    takes = [p.name for p in positional]
    required = [p.name for p in positional if p.default is p.empty]
    names = [spec.name for spec in signature.inputs]
    plural = "input" if len(names) == 1 else "inputs"
    has = (
        f"the signature from the {signature.source} has {len(names)} {plural} ({', '.join(names)})"
    )
    if len(names) < len(required):
        return (
            f"forward takes {len(required)} inputs ({', '.join(required)}) but {has}; give a "
            f"shape per input, e.g. --input-shape {' '.join(n + '=DIMS' for n in required)}, "
            "or an example .npz with one array per input"
        )
    if len(names) > len(takes):
        return f"{has}, but forward takes {len(takes)} ({', '.join(takes)})"
    taken = takes[: len(names)]
    if names != taken and sorted(names) == sorted(taken):
        return (
            f"inputs go to forward in the order {', '.join(names)}, but its parameters are "
            f"{', '.join(taken)}: give them in forward's order (--input-names {' '.join(taken)})"
        )
    return None


def _positional_parameters(model: object) -> list[inspect.Parameter] | None:
    compiled_from = getattr(model, "_orig_mod", None)  # torch.compile's wrapper takes *args
    forward: Any = getattr(compiled_from or model, "forward", model)
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def probe_advice(model: object, signature: Signature) -> str:
    """What would fix a shape probe that failed with ``signature``: which flag or file."""
    mismatch = check_forward(model, signature)
    if mismatch is not None:
        return mismatch
    if signature.source == "settings":
        return "check --input-shape and --input-dtype (NAME=DIMS for each of several inputs)"
    return (
        f"the signature came from the {signature.source}; give the right one with "
        "--input-shape and --input-dtype, or with an example batch saved as "
        "<model stem>.example.npy (.npz with one array per input)"
    )
