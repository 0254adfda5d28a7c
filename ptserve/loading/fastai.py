"""Unpickle a fastai ``export.pkl`` without letting the file run code.

A fastai export is a pickle of a whole ``Learner``. It is read by
:func:`ptserve.loading.restricted.restricted_load`, where only allowlisted objects can be called,
with this allowlist:

* **Classes** (``class``): the fastai-family classes tabular and vision exports contain,
  listed one by one (:data:`FASTAI_CLASSES`), the nn.Module building blocks of fastai's and
  torchvision's model modules (:data:`MODEL_MODULES`, minus :data:`CALLING_MODULES`), and
  fastai's image augmentations. Objects of them are rebuilt (``__new__``, then their state),
  the class is never called: an ``__init__`` would run on the pickle's arguments. A class is
  listed when it only holds data or computes on tensors, images or frames; classes that look
  things up by a stored name or call what they hold with stored arguments (fastcore's
  ``bind``, ``_Self``) are not: they would let a pickle walk from a function to the builtins.
  nn.Modules carrying hooks, callable dunders and text annotations in any object's state are
  refused (``ptserve.loading.restricted``).
* **Constructors** (``constructor``, called): :data:`CONSTRUCTORS` (numpy and pandas
  reconstruction helpers, value types, a few standard-library data classes, each with the
  reason it is safe), pandas data structures, modules the operator trusts, and checked
  stand-ins (:class:`ReferencePartial`, :func:`value_defaultdict`).
* **Training only** (:data:`TRAINING_ONLY`, and the functions of :data:`PURE_FUNCTION_MODULES`
  and :data:`MODEL_BUILDER_MODULES`): callbacks, metrics, optimiser, splitter, architecture
  builder, logger. ptserve never trains, so they load as inert placeholders
  (:class:`TrainingOnly`, :class:`Unavailable`).
* **References** (:data:`REFERENCES`): functions used at inference, which the pickle may store,
  never call; fastai calls them later on data ptserve gives it, so each is harmless on any input.
* **Stand-ins** (:data:`STAND_INS`) for the dangerous globals exports use. fastai pickles a
  bound method as ``MethodType(getattr(Class, "name"), obj)``: ``getattr`` and cloudpickle's
  ``_builtin_type`` allow exactly the ``(class, method)`` pairs in :data:`METHODS` (and a
  classmethod of an allowlisted class bound to it). cloudpickle stores some functions as code
  (``_make_function``): ptserve never builds one; it takes the code's name and gives the
  installed function when that is a reference or in :data:`STORED_METHODS`, else an
  :class:`Unavailable` placeholder that fails when called. Its other helpers (cells, module
  imports, the ``reduce(or_, types)`` of an annotation) get inert or type-only stand-ins.

Anything else is refused before a byte is unpickled, naming the globals; ``--trust-module
fastai`` trusts the whole fastai package's code instead (its ``load_learner``, its shell helpers).
"""

import builtins
import collections
import contextlib
import functools
import importlib
import inspect
import logging
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ptserve.errors import ModelLoadError
from ptserve.loading.detect import pickle_globals
from ptserve.loading.restricted import RefusedPickle, restricted_load
from ptserve.loading.safety import import_global, is_allowed

log = logging.getLogger("ptserve")

# Imported before the allowlist is read: a global's module must be one of theirs (or one they
# import), so the pickle decides nothing about what gets imported.
ENTRY_POINTS = ("fastai.learner", "fastai.tabular.all")
OPTIONAL_ENTRY_POINTS = ("fastai.vision.all",)  # needs torchvision

# The fastai-family classes tabular and vision exports contain, each reviewed: it only holds
# data, or it computes on tensors, images or frames, or it calls callables the pickle gave it
# (which can only be other allowlisted objects, each safe with any arguments). Not listed, on
# purpose: classes that look up attributes or items by a stored name, import by name, or
# format strings (fastcore's bind, _Self, Func, PartialFormatter, fastai's AttrGetter,
# ItemGetter, Lambda, plum's ModuleType, ...): with them, a pickle could walk from a function
# to the builtins. Other classes need --trust-module.
FASTAI_CLASSES = frozenset(
    {
        # learners, data loaders, datasets
        "fastai.learner.Learner", "fastai.tabular.learner.TabularLearner",
        "fastai.data.core.DataLoaders", "fastai.data.core.TfmdDL", "fastai.data.core.Datasets",
        "fastai.data.core.FilteredBase", "fastai.data.core.TfmdLists",
        "fastai.data.load._FakeLoader",
        "fastai.tabular.core.TabularPandas", "fastai.tabular.core.TabWeightedDL",
        "fastai.tabular.core.ReadTabBatch", "fastai.tabular.data.TabularDataLoaders",
        # transforms and procs
        "fasttransform.transform.Pipeline", "fasttransform.transform.Transform",
        "fastai.data.transforms.Categorize", "fastai.data.transforms.CategoryMap",
        "fastai.data.transforms.MultiCategorize", "fastai.data.transforms.OneHotEncode",
        "fastai.data.transforms.EncodedMultiCategorize", "fastai.data.transforms.RegressionSetup",
        "fastai.data.transforms.IntToFloatTensor", "fastai.data.transforms.Normalize",
        "fastai.data.transforms.ToTensor", "fastai.data.transforms.ColReader",  # r[col] only
        "fastai.tabular.core.Categorify", "fastai.tabular.core.FillMissing",
        "fastai.tabular.core.FillStrategy",
        # tensor and image types
        "fastai.torch_core.TensorBase", "fastai.torch_core.TensorCategory",
        "fastai.torch_core.TensorMultiCategory", "fastai.torch_core.TensorImage",
        "fastai.torch_core.TensorImageBW", "fastai.torch_core.TensorMask",
        "fastai.vision.core.PILImage", "fastai.vision.core.PILImageBW",
        # losses (their activation and decodes turn outputs into predictions)
        "fastai.losses.BaseLoss", "fastai.losses.CrossEntropyLossFlat",
        "fastai.losses.BCEWithLogitsLossFlat", "fastai.losses.BCELossFlat",
        "fastai.losses.MSELossFlat", "fastai.losses.L1LossFlat",
        "fastai.losses.LabelSmoothingCrossEntropyFlat", "fastai.losses.FocalLossFlat",
        # containers
        "fastcore.foundation.L", "fastcore.basics.fastuple",
        # plum's dispatch tables (fasttransform's Transforms): they call stored functions
        "plum._function.Function", "plum._method.Method", "plum._method.MethodList",
        "plum._resolver.Resolver", "plum._signature.Signature", "plum._util.Missing",
    }
)  # fmt: skip
# Modules whose nn.Module classes are model building blocks (fastai's tabular and vision
# heads, torchvision's architectures), except the two that call a stored function.
MODEL_MODULES = ("fastai.layers", "fastai.tabular.model", "fastai.vision", "torchvision.models")
CALLING_MODULES = frozenset(
    {"fastai.layers.Lambda", "fastai.layers.PartialLambda", "fastai.layers.Debugger"}
)
# What a Learner keeps for training only: ptserve never trains, so these become inert
# placeholders (classes: TrainingOnly, functions: Unavailable) and none of their code runs.
TRAINING_ONLY = frozenset(
    {
        "fastai.callback.core.TrainEvalCallback", "fastai.callback.progress.ProgressCallback",
        "fastai.learner.Recorder", "fastai.learner.CastToTensor", "fastai.learner.AvgLoss",
        "fastai.learner.AvgMetric", "fastai.learner.AvgSmoothLoss", "fastai.metrics.AccumMetric",
        "builtins.print", "fastai.data.load._wif", "fastai.torch_core.trainable_params",
        "fastai.torch_core.params", "fastai.layers.trunc_normal_",
        "fastai.vision.learner._resnet_split",
    }
)  # fmt: skip
# Image augmentations (aug_transforms, Resize, crops) and their helpers: compute on images.
AUGMENT_MODULE = "fastai.vision.augment"

# Called while unpickling: each only builds a value in memory from the pickle's data.
CONSTRUCTORS: dict[str, str] = {
    # builtins: value types
    "builtins.bytes": "value type",
    "builtins.bytearray": "value type",
    "builtins.complex": "value type",
    "builtins.float": "value type",
    "builtins.int": "value type",
    "builtins.str": "value type",
    "builtins.slice": "value type",
    "builtins.tuple": "value type",
    "builtins.list": "value type",
    "builtins.set": "value type",
    "builtins.frozenset": "value type",
    "builtins.range": "value type",
    # standard library data classes
    "collections.OrderedDict": "a dict",
    "inspect.Parameter": "signature data of fastcore-delegated functions",
    "inspect.Signature": "signature data",
    "inspect._ParameterKind": "an enum",
    "inspect._empty": "a marker class",
    "pathlib.Path": "a path value; constructing one touches no file",
    "pathlib.PosixPath": "a path value",
    "pathlib.WindowsPath": "a path value",
    "pathlib.PurePosixPath": "a path value",
    "random.Random": "a random generator's state",
    "PIL.Image.Resampling": "an enum (Resize's resampling filters)",
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
}

# Kept by reference and never called while unpickling. fastai may call some of them later,
# on the data ptserve gives it (a pipeline's functions), so each is harmless on any input.
REFERENCES: dict[str, str] = {
    "builtins.print": "the Recorder's logger; writes text to stdout",
    "typing.Any": "an annotation",
    "PIL.Image.Image": "a type in a transform's input types",
    "fastai.data.load._wif": "DataLoader worker init; ptserve runs no workers",
    "fastai.data.transforms.parent_label": "a label function: a path's folder name, as text",
    "fastai.vision.core.load_image": "opens an image by path; ptserve passes decoded images",
    "fastai.imports.noop": "returns its argument",
    "fastcore.basics.noop": "returns its argument",
    "fastcore.basics.merge": "merges dicts",
    "fastai.torch_core.trainable_params": "splitter: lists a module's trainable parameters",
    "fastai.torch_core.params": "splitter: lists a module's parameters",
    "fastai.layers.trunc_normal_": "initialiser of tensors",
    "fastai.vision.learner._resnet_split": "splitter: groups a ResNet's parameters",
    "fastai.vision.augment.flip_mat": "an augmentation's affine matrix from tensors",
    "fastai.vision.augment.rotate_mat": "an augmentation's affine matrix from tensors",
    "fastai.vision.augment.zoom_mat": "an augmentation's affine matrix from tensors",
}
# Module-level functions of these modules are references too: metrics, optimisers and losses
# compute on tensors (or build an optimiser over parameters), nothing else.
PURE_FUNCTION_MODULES = ("fastai.metrics", "fastai.optimizer", "fastai.losses")
# A vision Learner keeps its architecture's builder (``learn.arch``); ptserve never calls it.
MODEL_BUILDER_MODULES = ("torchvision.models",)

# Methods cloudpickle stores as code (plum's dispatch hides them from pickle's by-name lookup),
# given back as the installed method; fastai calls them on the data ptserve gives it.
STORED_METHODS: dict[str, str] = {
    "fastai.vision.core.PILBase.create": "PILImage.create: a fastai image from a decoded image",
}

# Bound methods an export may rebuild: (defining class, method name).
METHODS = frozenset(
    {
        ("fastai.data.core.FilteredBase", "dataloaders"),
        ("fastai.torch_core.TensorImage", "lighting"),  # brightness/contrast augmentations
    }
)

# Stand-ins for the globals exports use that would be dangerous as themselves; see the module
# docstring. Filled in below the functions they name.
STAND_INS: dict[str, Callable[..., Any]] = {}
MAKE_FUNCTION = "cloudpickle.cloudpickle._make_function"  # one StoredFunctions per load


def load_learner_safely(path: Path, trusted: Sequence[str]) -> Any:
    """Unpickle the Learner in ``path`` under the allowlist above (raises ModelLoadError)."""
    import_entry_points()
    names = pickle_globals(path)
    kinds = {name: kind(name, trusted) for name in names}
    refused = [name for name, k in kinds.items() if k is None]
    vision = [n for n in refused if n.startswith(("fastai.vision.", "torchvision."))]
    if vision and "fastai.vision.all" not in sys.modules:
        raise ModelLoadError(
            f"{path}: a fastai vision learner ({vision[0]}); serving it needs torchvision, "
            "which cannot be imported here. Install it beside a matching torch, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1 (see the README's fastai section)"
        )
    if refused:
        raise ModelLoadError(
            f"{path}: refusing to unpickle this fastai export; it would import "
            f"{', '.join(refused)}, which are not fastai classes or safe helpers. If you trust "
            "this file, allow the defining modules with --trust-module MODULE (--trust-module "
            "fastai trusts all of fastai's code), or load it without checks with --trust-pickle."
        )
    table: dict[str, object] = {name: resolve(name, trusted) for name in names}
    for helper in HELPERS:  # returned by stand-ins, called by the pickle
        table[f"{__name__}.{helper.__name__}"] = helper
    references = [name for name, k in kinds.items() if k == "reference"]
    classes = [name for name, k in kinds.items() if k == "class"]
    try:
        learn = restricted_load(path, table, references, classes)
    except RefusedPickle as exc:
        raise ModelLoadError(f"{path}: refusing to unpickle this fastai export: {exc}") from None
    stored = table.get(MAKE_FUNCTION)
    if isinstance(stored, StoredFunctions) and stored.unavailable:
        log.warning(
            "%s carries the code of %s; ptserve never runs code from a model file, so calling "
            "it fails (fine when inference does not call it, as for a label function)",
            path, ", ".join(sorted(set(stored.unavailable))),
        )  # fmt: skip
    return learn


def import_entry_points() -> None:
    """Import fastai's learner packages (vision only where torchvision is installed)."""
    for name in ENTRY_POINTS:
        importlib.import_module(name)
    for name in OPTIONAL_ENTRY_POINTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def allowed(name: str, trusted: Sequence[str]) -> bool:
    """Whether global ``name`` may appear in a fastai export (entry points imported first)."""
    return kind(name, trusted) is not None


Kind = Literal["constructor", "class", "reference"]


def kind(name: str, trusted: Sequence[str]) -> Kind | None:
    """How a fastai export may use global ``name``: call it (``constructor``), rebuild objects
    of it without calling it (``class``: ``__new__`` and state, never ``__init__``), only store
    it (``reference``), or not at all (None)."""
    if name in CONSTRUCTORS or name in STAND_INS or name == MAKE_FUNCTION:
        return "constructor"
    if any(name.startswith(f"{module}.") for module in trusted):
        return "constructor"
    if name in REFERENCES:
        return "reference"
    obj = _lookup(name)
    if isinstance(obj, type):
        if _pandas_class(obj):  # its data structures are pickled as calls: Index(data), ...
            return "constructor"
        rebuilt = training_only(name) or _family_class(obj, name) or is_allowed(name, ())
        return "class" if rebuilt else None
    if not inspect.isfunction(obj):
        return None
    module = obj.__module__
    if module in PURE_FUNCTION_MODULES or (
        module.startswith(MODEL_BUILDER_MODULES) and not name.rpartition(".")[2].startswith("_")
    ):
        return "reference"
    return None


def resolve(name: str, trusted: Sequence[str]) -> object:
    """The object a pickle gets for an allowed global (a stand-in for the dangerous ones)."""
    if name == MAKE_FUNCTION:
        return StoredFunctions(trusted)
    if name in STAND_INS:
        return STAND_INS[name]
    obj = _lookup(name)
    if training_only(name):
        if isinstance(obj, type):
            return TrainingOnly
        module, _, qualname = name.rpartition(".")
        return Unavailable(module, qualname)
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
    """cloudpickle's ``_builtin_type`` for pickles: ``MethodType`` as :func:`bind_method` and
    ``CodeType`` as :func:`code_reference`, nothing else."""
    if name == "MethodType":
        return bind_method
    if name == "CodeType":
        return code_reference
    raise RefusedPickle(f"refused cloudpickle._builtin_type({name!r})")


def bind_method(func: object, obj: object) -> types.MethodType:
    """``types.MethodType`` for pickles: a :data:`METHODS` method bound to an instance of its
    class, as ``obj.method`` would give, or a classmethod of an allowlisted class bound to it
    (``PILImage.create``)."""
    if isinstance(obj, type) and inspect.isfunction(func) and _classmethod_of(obj, func):
        return types.MethodType(func, obj)
    for qualified, name in METHODS:
        cls = _lookup(qualified)
        if not isinstance(cls, type) or not isinstance(obj, cls):
            continue
        method = cls.__dict__.get(name)
        if func is method and inspect.isfunction(method):
            return types.MethodType(method, obj)
    raise RefusedPickle(f"refused to bind {_describe(func)} to a {type(obj).__name__}")


# cloudpickle stores some functions as their code (fastai's PILBase.create, which plum's
# dispatch hides from pickle, or a label function defined in a notebook). ptserve never builds
# a function from a file: the stand-ins below read the code's name only, and give the
# installed function of that name when it is allowlisted, else an Unavailable placeholder.


@dataclass(frozen=True)
class CodeReference:
    """What ptserve keeps of a code object in a pickle: its name, never its bytecode."""

    qualname: str


@dataclass(frozen=True)
class Unavailable:
    """A function whose code was in the export and is not an allowlisted installed function;
    calling it fails (label functions are stored but never called at inference)."""

    module: str
    qualname: str

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{self.module}.{self.qualname} is stored as code in the model file, and ptserve "
            "does not run code from model files; make it importable and pass --trust-module "
            f"{self.module}, or load the file with --trust-pickle if you trust it"
        )


@dataclass(frozen=True)
class ModuleReference:
    """A module named in a stored function's globals (never imported on the pickle's word)."""

    name: str


class Cell:
    """A closure cell of a stored function (its contents are never used)."""


def code_reference(*args: object) -> CodeReference:
    """``types.CodeType(...)`` for pickles: the name (3.11+: the qualified name) only."""
    names = [a for a in args[11:13] if isinstance(a, str)]
    if not names:
        raise RefusedPickle("refused a code object without a name")
    return CodeReference(names[-1])


@dataclass
class StoredFunctions:
    """cloudpickle's ``_make_function`` for one load: the installed, allowlisted function the
    code names, else an :class:`Unavailable` placeholder (listed in ``unavailable``)."""

    trusted: Sequence[str]
    unavailable: list[str] = field(default_factory=list)

    def __call__(self, code: object, globals_: object, *rest: object) -> Callable[..., Any]:
        if not isinstance(code, CodeReference) or not isinstance(globals_, dict):
            raise RefusedPickle("refused cloudpickle._make_function without a code object")
        module = str(globals_.get("__name__", "__main__"))
        installed = _installed_function(module, code.qualname, self.trusted)
        if installed is not None:
            return installed
        self.unavailable.append(f"{module}.{code.qualname}")
        return Unavailable(module, code.qualname)


def function_state(func: object, state: object) -> None:
    """cloudpickle's ``_function_setstate``: checked, then dropped (an installed function is
    shared by the whole process; a placeholder has no use for globals)."""
    if not isinstance(func, Unavailable) and not inspect.isfunction(func):
        raise RefusedPickle(f"refused to set the state of {_describe(func)}")
    slots = state[1] if isinstance(state, tuple) and len(state) == 2 else None
    if not isinstance(slots, dict):
        raise RefusedPickle("refused a malformed function state")
    claimed = (slots.get("__module__"), slots.get("__qualname__"))
    actual = (
        (func.module, func.qualname)
        if isinstance(func, Unavailable)
        else (func.__module__, func.__qualname__)
    )
    if claimed != actual and claimed != (None, None):
        raise RefusedPickle(f"refused state for {actual[0]}.{actual[1]} naming {claimed}")


def module_reference(name: object) -> ModuleReference:
    """cloudpickle's ``subimport``, which would import any module: a name only."""
    return ModuleReference(str(name))


def cell(*contents: object) -> Cell:
    """cloudpickle's ``_make_empty_cell`` and ``_make_cell``: the contents are dropped."""
    return Cell()


def type_union(left: object, right: object) -> object:
    """``operator.or_`` for pickles: the union of two types (a stored annotation), only."""
    if not (_a_type(left) and _a_type(right)):
        raise RefusedPickle(f"refused operator.or_ on {_describe(left)}, {_describe(right)}")
    return left | right  # type: ignore[operator]


def union_of(func: object, items: object, *initial: object) -> object:
    """``functools.reduce`` for pickles: only to fold types with :func:`type_union`."""
    if func is not type_union or not isinstance(items, tuple | list):
        raise RefusedPickle(f"refused functools.reduce with {_describe(func)}")
    return functools.reduce(type_union, items, *initial)


class ReferencePartial(functools.partial):  # type: ignore[type-arg]
    """``functools.partial`` for pickles (a metric with its threshold): only of a function the
    export may store, so a partial can never call a class or another partial; its state (which
    can swap the function) is checked the same way."""

    def __new__(cls, func: object, /, *args: object, **kwargs: object) -> "ReferencePartial":
        _check_partial(func)
        return super().__new__(cls, func, *args, **kwargs)  # type: ignore[arg-type]

    def __setstate__(self, state: Any) -> None:
        _check_partial(state[0] if isinstance(state, tuple) and state else None)
        functools.partial.__setstate__(self, state)  # type: ignore[attr-defined]


def _check_partial(func: object) -> None:
    inference = inspect.isfunction(func) and any(
        func is _lookup(name) for name in REFERENCES if not training_only(name)
    )
    if not inference and not isinstance(func, Unavailable):
        raise RefusedPickle(f"refused functools.partial of {_describe(func)}")


VALUE_FACTORIES = (int, float, bool, str, bytes, list, dict, set, tuple)


def value_defaultdict(factory: object = None, *args: object) -> collections.defaultdict[Any, Any]:
    """``collections.defaultdict`` for pickles: its factory runs on every missing key, so only
    a value type may be one (FillMissing keeps ``defaultdict(int)``-like tables)."""
    if factory is not None and factory not in VALUE_FACTORIES:
        raise RefusedPickle(f"refused a defaultdict whose default factory is {_describe(factory)}")
    return collections.defaultdict(factory, *args)


class TrainingOnly:
    """What a training-only class (a callback, a metric) becomes: an object that keeps nothing
    of its pickled state and has no behaviour."""

    def __setstate__(self, state: object) -> None:
        """Drop the state."""


def training_only(name: str) -> bool:
    """Whether global ``name`` is kept for training only and loads as an inert placeholder."""
    obj = _lookup(name)
    qualified = _qualified(obj) if isinstance(obj, type) else name
    return qualified in TRAINING_ONLY or _training_only_function(name, obj)


def _training_only_function(name: str, obj: object) -> bool:
    """Whether ``name`` is a function a Learner keeps for training only (its metrics, optimiser,
    splitter, architecture builder, logger): ptserve replaces it with an Unavailable."""
    if name in TRAINING_ONLY:
        return True
    if not inspect.isfunction(obj):
        return False
    module = obj.__module__
    return module in PURE_FUNCTION_MODULES or module.startswith(MODEL_BUILDER_MODULES)


STAND_INS.update(
    {
        "collections.defaultdict": value_defaultdict,
        "functools.partial": ReferencePartial,
        "builtins.getattr": class_method,
        "cloudpickle.cloudpickle._builtin_type": builtin_type,
        "cloudpickle.cloudpickle._function_setstate": function_state,
        "cloudpickle.cloudpickle.subimport": module_reference,
        "cloudpickle.cloudpickle._make_empty_cell": cell,
        "cloudpickle.cloudpickle._make_cell": cell,
        "_operator.or_": type_union,
        "functools.reduce": union_of,
    }
)
HELPERS = (bind_method, code_reference)


def _installed_function(
    module: str, qualname: str, trusted: Sequence[str]
) -> Callable[..., Any] | None:
    """The installed function ``module.qualname`` if the allowlist admits it as stored code: a
    reference, one of :data:`STORED_METHODS`, or anything in a trusted module (``--trust-module``).
    Other methods of allowlisted classes are not admitted: ``Path.unlink`` is one."""
    name = f"{module}.{qualname}"
    listed = name in STORED_METHODS or (kind(name, ()) == "reference" and not training_only(name))
    if not listed and not is_allowed(name, trusted):  # never a stand-in's real function
        return None
    holder: object = sys.modules.get(module)
    for part in qualname.split("."):
        holder = vars(holder).get(part) if hasattr(holder, "__dict__") else None
        if isinstance(holder, classmethod | staticmethod):
            holder = holder.__func__
    if not inspect.isfunction(holder) or holder.__qualname__ != qualname:
        return None
    return holder


def _classmethod_of(cls: type, func: object) -> bool:
    """Whether ``func`` is a classmethod of ``cls``, an allowlisted class."""
    if not _family_class(cls, _qualified(cls)):
        return False
    return any(
        isinstance(m := vars(c).get(getattr(func, "__name__", "")), classmethod)
        and m.__func__ is func
        for c in cls.__mro__
    )


def _a_type(value: object) -> bool:
    return value is None or isinstance(value, type | types.UnionType | types.GenericAlias)


def _family_class(cls: type, name: str) -> bool:
    """Whether ``cls`` is an allowlisted fastai-family class (see :data:`FASTAI_CLASSES`)."""
    qualified = _qualified(cls)
    if qualified in FASTAI_CLASSES or name in FASTAI_CLASSES:
        return True
    module = cls.__module__
    if issubclass(cls, torch.nn.Module):
        return module.startswith(MODEL_MODULES) and qualified not in CALLING_MODULES
    return module == AUGMENT_MODULE


def _pandas_class(cls: type) -> bool:
    """A pandas data structure (frame, series, index, array, dtype, block, scalar), not one of
    its readers and writers (HDFStore opens files): all claim module ``pandas``."""
    return cls.__module__.split(".")[0] == "pandas" and issubclass(cls, _pandas_data_classes())


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
