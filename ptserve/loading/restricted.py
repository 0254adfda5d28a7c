"""A restricted unpickler for pickles that torch's weights-only unpickler cannot read (fastai
exports fill a ``defaultdict``, which it refuses).

It keeps the weights-only rules that matter: a global is only what the allowlist maps its name
to, and only allowlisted objects are ever *called* (REDUCE, NEWOBJ). An attribute fetched or a
method bound while unpickling is data: it can be stored, never called, by the unpickler.
Protocol 0/1 instance opcodes (INST, OBJ), which call what they find, are refused outright.
"""

import _compat_pickle
import functools
import pickle
import random
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch


class RefusedPickle(pickle.UnpicklingError):
    """The pickle tried something the allowlist does not permit."""


def restricted_load(
    path: Path,
    allowed: Mapping[str, object],
    references: Collection[str] = (),
    classes: Collection[str] = (),
) -> Any:
    """``torch.load`` of ``path`` where globals resolve through ``allowed`` only.

    ``allowed`` maps ``module.name`` to the object that name stands for (possibly a safer
    stand-in); torch's own weights-only globals are added to it. The names in ``references``
    are data: the pickle may store them, never call them. The classes in ``classes`` are only
    instantiated as pickle rebuilds plain objects (``cls.__new__``, then their state), never
    called: their ``__init__`` would run on the pickle's arguments.
    """
    module = SimpleNamespace(
        Unpickler=unpickler_class(allowed, references, classes),
        load=pickle.load,
        __name__="ptserve-restricted",
    )
    return torch.load(path, weights_only=False, pickle_module=module, map_location="cpu")


def unpickler_class(
    allowed: Mapping[str, object], references: Collection[str] = (), classes: Collection[str] = ()
) -> type:
    """The restricted Unpickler class for ``allowed`` plus torch's weights-only globals; the
    names in ``references`` can be stored, never called; those in ``classes`` only rebuilt."""
    table = {**torch._weights_only_unpickler._get_allowed_globals(), **allowed}
    skipped = {*references, *classes}
    callables = {
        id(obj): obj for name, obj in table.items() if callable(obj) and name not in skipped
    }
    rebuildable = {
        **callables,
        **{id(table[name]): table[name] for name in classes if name in table},
    }
    global_ids = frozenset(id(obj) for obj in table.values())

    def rebuild_from_type(func: object, new_type: object, args: Any, state: Any) -> Any:
        """torch's ``_rebuild_from_type_v2`` calls ``func(*args)``: only an allowlisted func,
        and a type from the allowlist."""
        if callables.get(id(func)) is not func:
            raise RefusedPickle(f"refused to call {_name(func)}: it is not on the allowlist")
        if id(new_type) not in global_ids or not isinstance(new_type, type):
            raise RefusedPickle(f"refused tensor type {_name(new_type)}")
        _check_state(new_type, state)  # torch sets it on the tensor attribute by attribute
        return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)  # type: ignore[no-untyped-call]

    def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any) -> Any:
        """torch's ``_rebuild_parameter_with_state``: no backward hooks, state checked."""
        if hooks:
            raise RefusedPickle("refused a parameter with backward hooks")
        _check_state(torch.nn.Parameter, state)
        return torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)  # type: ignore[no-untyped-call]

    for name, checked in (
        (REBUILD_FROM_TYPE, rebuild_from_type),
        (REBUILD_PARAMETER, rebuild_parameter),
    ):
        callables.pop(id(table[name]), None)
        table[name] = checked
        callables[id(checked)] = checked

    class Unpickler(_RestrictedUnpickler):
        globals_table = table
        callable_ids: ClassVar[Mapping[int, object]] = callables
        class_ids: ClassVar[Mapping[int, object]] = rebuildable
        global_ids: ClassVar[frozenset[int]] = frozenset(id(obj) for obj in table.values())

    return Unpickler


REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
REBUILD_PARAMETER = "torch._utils._rebuild_parameter_with_state"


# The pure-Python unpickler: unlike the C one, its opcodes can be overridden one by one.
_PurePythonUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined,unused-ignore]


class _RestrictedUnpickler(_PurePythonUnpickler):  # type: ignore[misc]
    """The pure-Python unpickler, restricted."""

    globals_table: ClassVar[Mapping[str, object]] = {}
    callable_ids: ClassVar[Mapping[int, object]] = {}
    class_ids: ClassVar[Mapping[int, object]] = {}
    global_ids: ClassVar[frozenset[int]] = frozenset()
    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(_PurePythonUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full not in self.globals_table:
            raise RefusedPickle(f"refused global {full}")
        return self.globals_table[full]

    def _callable(self, func: object) -> Any:
        if self.callable_ids.get(id(func)) is not func:
            raise RefusedPickle(f"refused to call {_name(func)}: it is not on the allowlist")
        return func

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._callable(self.stack[-1])(*args)

    def _class(self, cls: object) -> Any:
        if self.class_ids.get(id(cls)) is not cls or not isinstance(cls, type):
            raise RefusedPickle(f"refused to instantiate {_name(cls)}: it is not on the allowlist")
        return cls

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args, {})

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def _new(self, cls: object, args: Any, kwargs: Any) -> None:
        allowed = self._class(cls)
        self.append(allowed.__new__(allowed, *args, **kwargs))

    # The methods the opcodes below call are looked up on the object's *class* (allowlisted
    # code), never on the instance: a pickle can put anything in an instance's __dict__.

    def load_build(self) -> None:
        # BUILD sets attributes on the object under its state; on an allowlisted global (a
        # class, a function) that would rewrite code the whole process shares.
        state = self.stack.pop()
        inst = self.stack[-1]
        if id(inst) in self.global_ids:
            raise RefusedPickle(f"refused to set attributes on {_name(inst)}")
        if isinstance(inst, torch.nn.Module) and isinstance(state, dict):
            hooks = [key for key in state if "hooks" in key and state[key]]
            if hooks:  # called by forward (or by saving, loading, backward) with the inputs
                raise RefusedPickle(f"refused a {type(inst).__name__} with {', '.join(hooks)}")
        _check_state(type(inst), state)
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is not None:
            setstate(inst, state)
            return
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if state:
            inst.__dict__.update(state)
        for key, value in (slots or {}).items():
            setattr(inst, key, value)

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, obj: object, items: list[Any]) -> None:
        extend = getattr(type(obj), "extend", None)
        if extend is not None:
            extend(obj, items)
            return
        append = getattr(type(obj), "append", None)
        if append is None:
            raise RefusedPickle(f"refused to append to a {type(obj).__name__}")
        for item in items:
            append(obj, item)

    def load_additems(self) -> None:
        items = self.pop_mark()
        obj = self.stack[-1]
        add = getattr(type(obj), "add", None)
        if add is None:
            raise RefusedPickle(f"refused to add items to a {type(obj).__name__}")
        for item in items:
            add(obj, item)

    def load_refused(self) -> None:
        raise RefusedPickle("refused a protocol 0/1 instance opcode (INST or OBJ)")

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.INST[0]] = load_refused
    dispatch[pickle.OBJ[0]] = load_refused


# Value types that keep state of their own shape (their __setstate__ is not __dict__.update).
OWN_STATE: tuple[type, ...] = (
    np.ndarray,
    np.dtype,
    np.generic,
    torch.Tensor,
    functools.partial,
    random.Random,
)

# Callable dunders that are followed, never called (``inspect.unwrap`` reads __wrapped__).
FOLLOWED_DUNDERS = frozenset({"__wrapped__"})


def _check_state(cls: type, state: object) -> None:
    """Refuse state for an object of ``cls`` that would make code run later.

    * Its shape: a dict, or a (dict, slots dict) pair, except for the value types that keep
      their own (arrays, dtypes, frames, tensors, partials, random generators): a list of pairs
      would pass ``__dict__.update`` unchecked. Their dicts are checked all the same.
    * Dunders: a callable one (numpy calls an instance's ``__array__``, copy its
      ``__reduce_ex__``), or ``__annotations__`` holding text (``typing.get_type_hints``
      evaluates strings). Names, docs, signatures and annotations made of types are data.
    * A class stored where ``cls`` has a method of that name: whoever calls the method would
      run that class's ``__init__`` instead.
    """
    own = issubclass(cls, OWN_STATE) or cls.__module__.startswith("pandas.")
    parts = state if isinstance(state, tuple) and (own or len(state) == 2) else (state,)
    dicts = [part for part in parts if isinstance(part, dict)]
    if not own and len(dicts) != sum(part is not None for part in parts):
        raise RefusedPickle(f"refused {type(state).__name__} state for a {cls.__name__}")
    for part in dicts:
        for key, value in part.items():
            if not isinstance(key, str):
                raise RefusedPickle(f"refused a non-string attribute name on a {cls.__name__}")
            if not (key.startswith("__") and key.endswith("__")):
                if isinstance(value, type) and callable(_class_attribute(cls, key)):
                    raise RefusedPickle(f"refused a class in place of {cls.__name__}.{key}")
                continue
            if key == "__annotations__":
                if not isinstance(value, dict) or any(isinstance(v, str) for v in value.values()):
                    raise RefusedPickle(f"refused annotations as text on a {cls.__name__}")
            elif callable(value) and key not in FOLLOWED_DUNDERS:
                raise RefusedPickle(f"refused a callable {key} on a {cls.__name__}")


def _class_attribute(cls: type, name: str) -> object:
    return next((vars(c)[name] for c in cls.__mro__ if name in vars(c)), None)


def _name(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
