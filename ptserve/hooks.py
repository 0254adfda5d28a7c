"""User hooks (``--handler``): custom pre- and post-processing around the model.

A handler is a Python file (``hooks.py``), a module (``my_pkg.hooks``) or an object in one
(``my_pkg.hooks:handler``; a class is instantiated with no arguments). It may define either or
both of::

    def preprocess(instances: list[Any]) -> Array | Sequence[Array] | Mapping[str, Array]
    def postprocess(outputs: list[np.ndarray]) -> list[Any]

(``Array``: a numpy array or a torch tensor.)

``preprocess`` gets the request's ``instances`` as parsed JSON (or, for a multipart upload, the
bytes of each file) and returns one batched array or tensor per model input, batch first, one
sample per instance (a mapping is matched to the inputs by name). ``postprocess`` gets the
model's outputs for the request, one numpy array per output, batch first, and returns one
JSON-serialisable prediction per sample. Both run on a worker thread, never on the event loop.
An optional ``example`` (one instance as a request sends it) becomes the request example in the
OpenAPI description, the Swagger UI and the try-it page. ``files = True`` says that
``preprocess`` takes files: the bytes of each file uploaded to ``/predict`` (multipart), and of
each element of the BYTES input ``instances`` over the Open Inference Protocol; without it,
instances are JSON values (over the protocol, one JSON text per element).

To refuse bad input with a 422, a hook raises :class:`ptserve.errors.InvalidInput` (or lets a
pydantic ``ValidationError`` through); anything else it raises is a 500 whose cause goes to the
log, with the request id.
"""

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import ValidationError

from ptserve.errors import HookFailure, ModelLoadError, ServeError
from ptserve.loading.formats import import_object
from ptserve.signature import Signature, numpy_dtype

log = logging.getLogger("ptserve")
Arrays = list[np.ndarray[Any, Any]]
Translate = Callable[[ValidationError, str], ServeError]


class Handler(Protocol):
    """What a handler may define; both methods are optional."""

    def preprocess(self, instances: list[Any]) -> Any:
        """The request's instances -> one batched array or tensor per model input."""

    def postprocess(self, outputs: Arrays) -> Sequence[Any]:
        """The model's batched outputs -> one JSON-serialisable prediction per sample."""


@dataclass(frozen=True)
class Hooks:
    """The hooks a handler defines."""

    source: str
    preprocess: Callable[[list[Any]], Any] | None
    postprocess: Callable[[Arrays], Any] | None
    example: Any = None  # one instance as a request sends it, for the docs and the page
    files: bool = False  # whether preprocess takes files (uploads; BYTES over V2) as instances


def load_hooks(target: str) -> Hooks:
    """Import the handler named by the ``handler`` setting; ModelLoadError when it cannot be."""
    if target.endswith(".py"):
        holder: Any = _import_file(Path(target))
    elif ":" in target:
        try:
            holder = import_object(target)
        except ModelLoadError as exc:
            raise ModelLoadError(str(exc).replace("model class", "handler", 1)) from None
        if inspect.isclass(holder):
            holder = holder()
    else:
        try:
            holder = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"handler {target}: cannot import it ({exc})") from None
    pre, post = getattr(holder, "preprocess", None), getattr(holder, "postprocess", None)
    for name, hook in (("preprocess", pre), ("postprocess", post)):
        if hook is not None and not callable(hook):
            raise ModelLoadError(f"handler {target}: {name} is not callable")
    if pre is None and post is None:
        raise ModelLoadError(f"handler {target}: defines neither preprocess nor postprocess")
    files = getattr(holder, "files", False)
    if not isinstance(files, bool):
        raise ModelLoadError(f"handler {target}: files must be True or False")
    return Hooks(target, pre, post, getattr(holder, "example", None), files)


def run_preprocess(
    hooks: Hooks, instances: list[Any], signature: Signature, translate: Translate
) -> Arrays:
    """Call the preprocess hook (blocking) and check its arrays against the signature: one
    sample per instance."""
    assert hooks.preprocess is not None
    produced = _guarded("preprocess", hooks.preprocess, instances, translate)
    try:
        arrays = _arrays(produced, signature)
        if len(arrays[0]) != len(instances):
            raise ValueError(f"{len(arrays[0])} samples for {len(instances)} instances")
    except (TypeError, ValueError) as exc:
        log.error("the preprocess hook of %s returned unusable inputs: %s", hooks.source, exc)
        raise HookFailure("the preprocess hook failed; the server log has details") from None
    return arrays


def run_postprocess(hooks: Hooks, outputs: Arrays, size: int, translate: Translate) -> list[Any]:
    """Call the postprocess hook (blocking); it must give one prediction per sample."""
    assert hooks.postprocess is not None
    predictions = _guarded("postprocess", hooks.postprocess, outputs, translate)
    if not isinstance(predictions, list | tuple) or len(predictions) != size:
        kind = type(predictions).__name__
        count = f" of {len(predictions)}" if isinstance(predictions, list | tuple) else ""
        log.error(
            "the postprocess hook of %s returned a %s%s; expected a list of %d predictions",
            hooks.source, kind, count, size,
        )  # fmt: skip
        raise HookFailure("the postprocess hook failed; the server log has details")
    return list(predictions)


def _guarded(name: str, hook: Callable[[Any], Any], value: Any, translate: Translate) -> Any:
    try:
        return hook(value)
    except ServeError:
        raise
    except ValidationError as exc:
        raise translate(exc, "instances") from None
    except Exception:
        log.exception("the %s hook raised", name)
        raise HookFailure(f"the {name} hook failed; the server log has details") from None


def _arrays(produced: Any, signature: Signature) -> Arrays:
    specs = signature.inputs
    if isinstance(produced, Mapping):
        missing = [s.name for s in specs if s.name not in produced]
        if missing:
            raise ValueError(f"no array for input(s) {', '.join(missing)}")
        produced = [produced[s.name] for s in specs]
    elif isinstance(produced, np.ndarray | torch.Tensor):
        produced = [produced]
    if not isinstance(produced, Sequence) or len(produced) != len(specs):
        raise ValueError(f"expected {len(specs)} array(s), one per model input")
    arrays = []
    for spec, value in zip(specs, produced, strict=True):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(value, dtype=numpy_dtype(spec.dtype))
        if array.ndim == 0 or not spec.matches(array.shape[1:]):
            raise ValueError(
                f"input '{spec.name}': shape {list(array.shape)} is not a batch of "
                f"{list(spec.shape)}"
            )
        arrays.append(array)
    if len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise ValueError("the inputs' batch sizes differ or are zero")
    return arrays


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"handler {path}: no such file")
    name = f"ptserve_handler_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"handler {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"handler {path}: importing it failed ({exc})") from None
    return module
