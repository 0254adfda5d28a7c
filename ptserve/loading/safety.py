"""The pickle allowlist: torch.nn building blocks plus modules the operator trusts.

A class defined in the script that saved the model is named ``__main__.Net`` in the pickle;
the ``__main__`` of a ptserve process is ptserve itself, so such names resolve to the trusted
module that defines them (``--trust-module netdef`` gives ``netdef.Net``).
"""

import importlib
import pickle
import types
from collections.abc import Sequence

import torch

from ptserve.errors import ModelLoadError

NN = "torch.nn."
MAIN = "__main__"
SCRIPT = MAIN + "."


def is_allowed(name: str, trusted: Sequence[str]) -> bool:
    """Whether the global ``module.attr`` may be imported while unpickling a model."""
    if name.startswith(SCRIPT):  # resolved through a trusted module, never ptserve's __main__
        return bool(_modules(trusted))
    module = name.rpartition(".")[0]
    return _within(module, trusted) or (module.startswith(NN) and _is_nn_module_class(name))


def resolve_allowed(
    names: Sequence[str], trusted: Sequence[str], file: str
) -> list[object | tuple[object, str]]:
    """Import the globals a pickle needs, or refuse the file naming the ones not allowed; a
    ``__main__`` global comes as ``(the trusted module's object, "__main__.X")``, the form
    torch's weights-only unpickler takes for an object saved under another name."""
    refused = [name for name in names if not is_allowed(name, trusted)]
    if refused:
        raise ModelLoadError(f"{file}: {refusal(refused)}")
    resolved: list[object | tuple[object, str]] = []
    for name in names:
        if name.startswith(SCRIPT):
            resolved.append((from_trusted(name, trusted), name))
        else:
            resolved.append(_defined_in(import_global(name), trusted, name))
    return resolved


def refusal(refused: Sequence[str]) -> str:
    """Why a pickle is refused, and the ways out, in one line."""
    script = [name for name in refused if name.startswith(SCRIPT)]
    others = [name for name in refused if not name.startswith(SCRIPT)]
    reasons = []
    if others:
        reasons.append(
            f"refusing to unpickle; it would import {', '.join(others)}, which are not torch.nn "
            "building blocks. If you trust this file, allow the defining modules with "
            "--trust-module MODULE, or load it without checks with --trust-pickle."
        )
    if script:
        reasons.append(script_refusal(script))
    return " ".join(reasons)


def script_refusal(names: Sequence[str], even: str = "") -> str:
    """The refusal for classes defined in the script that saved the model."""
    classes = ", ".join(name.removeprefix(SCRIPT) for name in names)
    what = "the class was" if len(names) == 1 else "the classes were"
    return (
        f"cannot unpickle {', '.join(names)}{even}: {what} defined in the script that saved the "
        f"model, and ptserve cannot import that script. Either copy {classes} (without the "
        "training code) into a module beside the model, e.g. netdef.py, and pass --trust-module "
        "netdef (or name the script's own module, e.g. --trust-module train, if its training "
        'runs only under if __name__ == "__main__": importing it runs it); or re-save the model '
        'with torch.export, TorchScript or a state_dict (README: "Serving your own model").'
    )


def from_trusted(name: str, trusted: Sequence[str]) -> object:
    """The object a ``__main__.X`` global names: ``X`` from the first trusted module that
    defines it; ImportError when none does."""
    qualname = name.removeprefix(SCRIPT)
    modules = _modules(trusted)
    for module_name in modules:
        try:
            found: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(
                f"cannot import the trusted module {module_name} ({exc}); it is looked for in "
                "the current folder, the model's folder and the Python path"
            ) from exc
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is not None:
            return _defined_in(found, modules, name)
    raise ImportError(
        f"{name} was defined in the script that saved the model, and no trusted module "
        f"({', '.join(modules) or 'none given'}) defines {qualname}; pass the module that does "
        "with --trust-module MODULE"
    )


def script_pickle(names: Sequence[str], trusted: Sequence[str], file: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load(weights_only=False)`` (``--trust-pickle``) that
    resolves ``__main__`` globals through the trusted modules, as the weights-only path does;
    refuses a pickle of such globals when no module is trusted to hold them."""
    script = [name for name in names if name.startswith(SCRIPT)]
    if script and not _modules(trusted):
        raise ModelLoadError(f"{file}: {script_refusal(script, ' even with --trust-pickle')}")

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module == MAIN:
                return from_trusted(SCRIPT + name, trusted)
            return super().find_class(module, name)

    module = types.ModuleType("ptserve_script_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    return module


def _defined_in(found: object, trusted: Sequence[str], name: str) -> object:
    """``found``, when a trusted module (or torch.nn, for its building blocks) defines it.
    Names a module only imports (``from os import system``) are refused: ``torch.save`` names
    each class and function by the module that defines it, so only a crafted file names them
    otherwise."""
    module = getattr(found, "__module__", None)
    building_block = isinstance(found, type) and issubclass(found, torch.nn.Module)
    if isinstance(module, str) and (
        _within(module, trusted) or (building_block and module.startswith(NN))
    ):
        return found
    raise ImportError(
        f"refusing {name}: it is {module or type(found).__name__}'s, not defined in a trusted "
        "module; a pickle may use what a trusted module defines, not what it imports"
    )


def _within(module: str, trusted: Sequence[str]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in trusted)


def _modules(trusted: Sequence[str]) -> list[str]:
    """Trusted modules a ``__main__`` global can come from (ptserve's own ``__main__`` is not
    the script that saved the model)."""
    return [t for t in trusted if t != MAIN]


def _is_nn_module_class(name: str) -> bool:
    try:
        obj = import_global(name)
    except ImportError:
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def import_global(name: str) -> object:
    """The object ``module.attr`` names; ImportError when it cannot be imported."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot import {name}: {exc}") from exc
