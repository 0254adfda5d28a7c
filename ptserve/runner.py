"""Runs the model: on its inference thread(s) or inline, ``torch.inference_mode``, numpy in and
out."""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ptserve.errors import ModelLoadError
from ptserve.signature import TORCH_DTYPES, Signature, probe_advice, spec_from_tensor

if TYPE_CHECKING:
    from ptserve.threads import ThreadPlan

Arrays = list[np.ndarray[Any, Any]]
NUMPY_UNSAFE = (torch.bfloat16, torch.float16)


class Runner:
    """Calls the model on batches, on its inference threads (or inline on the event loop)."""

    def __init__(self, model: Callable[..., Any], device: str, signature: Signature) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtypes = [TORCH_DTYPES[spec.dtype] for spec in signature.inputs]
        self.output_names: list[str] = []
        # A model whose largest batch takes less than a thread hop runs on the event loop.
        self.inline = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ptserve-infer")

    def use(self, plan: "ThreadPlan") -> None:
        """Run as ``plan`` says: inline, or on that many inference threads (before serving)."""
        torch.set_num_threads(plan.torch_threads)
        self.inline = plan.execution == "inline"
        self._executor.shutdown(wait=True)
        self._executor = ThreadPoolExecutor(plan.inference, thread_name_prefix="ptserve-infer")

    def forward(self, arrays: Sequence[np.ndarray[Any, Any]]) -> Arrays:
        """One forward pass on a batch (blocking); one array per output, batch first."""
        with torch.inference_mode():
            return [_to_numpy(t) for t in self._call(arrays)]

    def run_blocking(
        self, fn: Callable[[Arrays], Arrays], arrays: Arrays
    ) -> "asyncio.Future[Arrays]":
        """Run ``fn(arrays)`` on the inference thread, or right here when ``inline`` is set;
        awaitable from the event loop either way."""
        loop = asyncio.get_running_loop()
        if not self.inline:
            return loop.run_in_executor(self._executor, fn, arrays)
        future: asyncio.Future[Arrays] = loop.create_future()
        try:
            future.set_result(fn(arrays))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def probe(self, signature: Signature, output_names: list[str] | None) -> Signature:
        """Run a batch of two example samples; return the signature with its outputs filled in.

        Raises ModelLoadError when the model rejects inputs of the signature's shape.
        """
        batch = [np.stack([sample, sample]) for sample in signature.example_sample()]
        try:
            with torch.inference_mode():
                outputs = self._call(batch)
        except Exception as exc:
            shapes = ", ".join(f"{s.name}{[2, *s.shape]} {s.dtype}" for s in signature.inputs)
            cause = " ".join(str(exc).split())[:300]
            advice = probe_advice(self.model, signature)
            raise ModelLoadError(
                f"shape probe failed: the model rejected {shapes}: {cause}; {advice}"
            ) from None
        names = output_names or self.output_names or _default_names(len(outputs))
        if len(names) != len(outputs):
            raise ModelLoadError(f"{len(names)} output names given for {len(outputs)} outputs")
        specs = []
        for name, tensor in zip(names, outputs, strict=True):
            if tensor.dim() == 0 or tensor.shape[0] != 2:
                raise ModelLoadError(
                    f"shape probe failed: output '{name}' has shape {list(tensor.shape)} for a "
                    "batch of 2; the model must return one row per sample"
                )
            specs.append(spec_from_tensor(name, tensor, frozenset()))
        self.output_names = list(names)
        return Signature(signature.inputs, tuple(specs), signature.source, signature.example)

    def close(self) -> None:
        """Stop the inference threads and let go of the model, so that its memory is freed as
        soon as nothing else holds it (a stopped model version; this runner cannot run again)."""
        self._executor.shutdown(wait=True)
        self.model = _released

    def _call(self, arrays: Sequence[np.ndarray[Any, Any]]) -> list[torch.Tensor]:
        # A read-only array (a view of gRPC's immutable bytes) is copied: torch tensors must be
        # writable, and a model may write to its inputs. Batches of several requests are
        # concatenated copies already.
        tensors = [
            torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device, dtype)
            for a, dtype in zip(arrays, self.dtypes, strict=True)
        ]
        return self._flatten(self.model(*tensors))

    def _flatten(self, raw: Any) -> list[torch.Tensor]:
        if isinstance(raw, torch.Tensor):
            return [raw]
        if isinstance(raw, dict):
            if not self.output_names:
                self.output_names = [str(k) for k in raw]
            return list(raw.values())
        if isinstance(raw, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in raw):
            return list(raw)
        raise TypeError(f"the model returned {type(raw).__name__}; expected tensors")


def _released(*inputs: Any) -> Any:
    raise RuntimeError("this model version was stopped")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    if tensor.dtype in NUMPY_UNSAFE:
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


def _default_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
