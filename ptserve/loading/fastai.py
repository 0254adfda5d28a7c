"""Unpickle a fastai ``export.pkl`` without letting the file run code.

A fastai export is a pickle of a whole ``Learner``. It is read by
:func:`ptserve.loading.restricted.restricted_load`, where only allowlisted objects can be called,
with this allowlist:

* **fastai-family classes**: a *class* (never a function) defined in ``fastai``, ``fastcore``,
  ``fasttransform`` (or a pandas data structure: frame, series, index, array, dtype, block,
  scalar), from a module that fastai's learner packages import themselves (a pickle cannot
  make ptserve import a new module), except classes whose construction touches files,
  processes, threads or the network (:data:`DENIED`). Unpickling calls a class (its
  constructor or ``__new__``) and its ``__setstate__``; for these classes that only builds
  objects in memory.
* **torch.nn building blocks**: as for any pickle (``nn.Module`` subclasses in ``torch.nn``).
* **A curated set of other globals** (:data:`EXPLICIT`), each with the reason it is safe: the
  numpy and pandas reconstruction helpers, a few standard-library data classes, and the pure
  functions a Learner keeps (its metrics, optimiser and splitter).
* **Stand-ins** for the two dangerous globals exports use: ``getattr`` and cloudpickle's
  ``_builtin_type`` (for ``types.MethodType``). fastai pickles a bound method as
  ``MethodType(getattr(Class, "name"), obj)``; the stand-ins allow exactly the
  ``(class, method)`` pairs in :data:`METHODS`, bound to an instance of that class.

Anything else is refused before a byte is unpickled, naming the globals; ``--trust-module
fastai`` trusts the whole fastai package's code instead (its ``load_learner``, its shell helpers).
"""

import builtins
import concurrent.futures
import contextlib
import importlib
import inspect
import io
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptserve.errors import ModelLoadError
from ptserve.loading.detect import pickle_globals
from ptserve.loading.restricted import RefusedPickle, restricted_load
from ptserve.loading.safety import import_global, is_allowed

FAMILY = ("fastai", "fastcore", "fasttransform", "pandas")
# Imported before the allowlist is read: a global's module must be one of theirs (or one they
# import), so the pickle decides nothing about what gets imported.
ENTRY_POINTS = ("fastai.learner", "fastai.tabular.all")
OPTIONAL_ENTRY_POINTS = ("fastai.vision.all",)  # needs torchvision

DENIED = frozenset(
    {
        "fastcore.xtras.Config",  # creates its folder on construction
        "fastcore.parallel.ThreadPoolExecutor",  # thread and process pools
        "fastcore.parallel.ProcessPoolExecutor",
        "fastcore.aio.Debounce",  # schedules calls on an event loop
        "fastai.callback.core.GatherPredsCallback",  # may save predictions to files
    }
)
DENIED_BASES: tuple[type, ...] = (
    threading.Thread,
    concurrent.futures.Executor,
    io.IOBase,
    subprocess.Popen,
)

# Pure module-level functions a Learner stores (metrics, optimisers, splitters, losses):
# calling one computes on tensors, or builds an optimiser over parameters; nothing else.
PURE_FUNCTION_MODULES = ("fastai.metrics", "fastai.optimizer", "fastai.losses")

EXPLICIT: dict[str, str] = {
    # builtins: value types, and the Recorder's logger
    "builtins.bytes": "value type",
    "builtins.bytearray": "value type",
    "builtins.complex": "value type",
    "builtins.float": "value type",
    "builtins.int": "value type",
    "builtins.slice": "value type",
    "builtins.tuple": "value type",
    "builtins.list": "value type",
    "builtins.set": "value type",
    "builtins.frozenset": "value type",
    "builtins.range": "value type",
    "builtins.print": "the Recorder's logger; writes text to stdout, nothing else",
    # standard library data classes
    "collections.defaultdict": "a dict (FillMissing's fill values)",
    "collections.OrderedDict": "a dict",
    "inspect.Parameter": "signature data of fastcore-delegated functions",
    "inspect.Signature": "signature data",
    "inspect._ParameterKind": "an enum",
    "inspect._empty": "a marker class",
    "pathlib.PosixPath": "a path value; constructing one touches no file",
    "pathlib.WindowsPath": "a path value",
    "pathlib.PurePosixPath": "a path value",
    "random.Random": "a random generator's state",
    # numpy and pandas reconstruction helpers: build arrays, frames and indexes from data
    "numpy._core.multiarray._reconstruct": "allocates an empty ndarray",
    "numpy.core.multiarray._reconstruct": "allocates an empty ndarray (numpy < 2)",
    "numpy._core.multiarray.scalar": "a numpy scalar from its dtype and bytes",
    "numpy.core.multiarray.scalar": "a numpy scalar (numpy < 2)",
    "numpy.dtype": "a dtype",
    "numpy.ndarray": "an array",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked": "Cython unpickle helper of an array",
    "pandas._libs.internals._unpickle_block": "rebuilds a DataFrame block from arrays",
    "pandas.core.internals.blocks.new_block": "rebuilds a DataFrame block from arrays",
    "pandas.core.indexes.base._new_Index": "rebuilds an Index (of an allowlisted class)",
    # functions a Learner or its DataLoaders keep by reference
    "fastai.data.load._wif": "DataLoader worker init; ptserve runs no workers",
    "fastai.torch_core.trainable_params": "splitter: lists a module's trainable parameters",
    "fastai.torch_core.params": "splitter: lists a module's parameters",
    "fastai.layers.trunc_normal_": "initialiser of tensors",
}

# Bound methods an export may rebuild: (defining class, method name).
METHODS = frozenset({("fastai.data.core.FilteredBase", "dataloaders")})


def load_learner_safely(path: Path, trusted: Sequence[str]) -> Any:
    """Unpickle the Learner in ``path`` under the allowlist above (raises ModelLoadError)."""
    import_entry_points()
    names = pickle_globals(path)
    refused = [name for name in names if not allowed(name, trusted)]
    if refused:
        raise ModelLoadError(
            f"{path}: refusing to unpickle this fastai export; it would import "
            f"{', '.join(refused)}, which are not fastai classes or safe helpers. If you trust "
            "this file, allow the defining modules with --trust-module MODULE (--trust-module "
            "fastai trusts all of fastai's code), or load it without checks with --unsafe-pickle."
        )
    table: dict[str, object] = {name: resolve(name) for name in names}
    table["ptserve.loading.fastai.bind_method"] = bind_method  # callable via _builtin_type
    try:
        return restricted_load(path, table)
    except RefusedPickle as exc:
        raise ModelLoadError(f"{path}: refusing to unpickle this fastai export: {exc}") from None


def import_entry_points() -> None:
    """Import fastai's learner packages (vision only where torchvision is installed)."""
    for name in ENTRY_POINTS:
        importlib.import_module(name)
    for name in OPTIONAL_ENTRY_POINTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def allowed(name: str, trusted: Sequence[str]) -> bool:
    """Whether global ``name`` may appear in a fastai export (entry points imported first)."""
    if name in EXPLICIT or name in ("builtins.getattr", "cloudpickle.cloudpickle._builtin_type"):
        return True
    if is_allowed(name, trusted):
        return True
    obj = _lookup(name)
    if obj is None:
        return False
    if isinstance(obj, type):
        return _family_class(obj, name)
    defined_in = getattr(obj, "__module__", None)
    return inspect.isfunction(obj) and defined_in in PURE_FUNCTION_MODULES


def resolve(name: str) -> object:
    """The object a pickle gets for an allowed global (a stand-in for the dangerous two)."""
    if name == "builtins.getattr":
        return class_method
    if name == "cloudpickle.cloudpickle._builtin_type":
        return builtin_type
    obj = _lookup(name)
    if obj is None:
        obj = _import_anyway(name)  # a trusted module not imported yet
    return obj


def class_method(cls: object, name: str) -> Callable[..., Any]:
    """``getattr`` for pickles: only a method listed in :data:`METHODS`, looked up on its class."""
    if not isinstance(cls, type) or (_qualified(cls), name) not in METHODS:
        raise RefusedPickle(f"refused getattr({_describe(cls)}, {name!r})")
    method: Callable[..., Any] = builtins.getattr(cls, name)
    return method


def builtin_type(name: str) -> Callable[..., Any]:
    """cloudpickle's ``_builtin_type`` for pickles: only ``MethodType``, as :func:`bind_method`."""
    if name != "MethodType":
        raise RefusedPickle(f"refused cloudpickle._builtin_type({name!r})")
    return bind_method


def bind_method(func: object, obj: object) -> types.MethodType:
    """``types.MethodType`` for pickles: a :data:`METHODS` method bound to an instance of its
    class, as ``obj.method`` would give."""
    for qualified, name in METHODS:
        cls = _lookup(qualified)
        if not isinstance(cls, type) or not isinstance(obj, cls):
            continue
        method = cls.__dict__.get(name)
        if func is method and inspect.isfunction(method):
            return types.MethodType(method, obj)
    raise RefusedPickle(f"refused to bind {_describe(func)} to a {type(obj).__name__}")


def _family_class(cls: type, name: str) -> bool:
    package = cls.__module__.split(".")[0]
    if package not in FAMILY:
        return False
    if package == "pandas":  # its public classes all claim module "pandas", readers included
        return issubclass(cls, _pandas_data_classes())
    if name in DENIED or _qualified(cls) in DENIED:
        return False
    return not issubclass(cls, DENIED_BASES)


def _pandas_data_classes() -> tuple[type, ...]:
    """pandas' data structures: frames, series, indexes, arrays, dtypes, blocks and scalars
    (not its readers and writers, such as HDFStore, which open files)."""
    import pandas as pd
    from pandas.api.extensions import ExtensionArray, ExtensionDtype
    from pandas.core.internals.blocks import Block
    from pandas.core.internals.managers import BaseBlockManager

    return (
        pd.DataFrame, pd.Series, pd.Index, ExtensionArray, ExtensionDtype, Block,
        BaseBlockManager, pd.Timestamp, pd.Timedelta, pd.Period, pd.Interval,
        pd.tseries.offsets.BaseOffset,
    )  # fmt: skip


def _lookup(name: str) -> object | None:
    """The object ``name`` stands for, from an already imported module only."""
    module_name, _, attr = name.rpartition(".")
    module = sys.modules.get(module_name)
    return getattr(module, attr, None) if module is not None else None


def _import_anyway(name: str) -> object:
    try:
        return import_global(name)
    except ImportError as exc:
        raise ModelLoadError(str(exc)) from None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(obj: object) -> str:
    return _qualified(obj) if isinstance(obj, type) else type(obj).__name__
