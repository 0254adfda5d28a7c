"""A torch.export program (``models/<name>.json`` in a .pt2 archive) checked as data.

Deserialising a program runs Python built from its strings, so each kind of string that
reaches an interpreter must be the harmless form torch itself writes (torch 2.13's
``torch/_export/serde/serialize.py`` and ``torch/export/_unlift.py``):

- symbolic shapes (``expr_str``) go through ``sympy.sympify``, which evaluates them as Python:
  only sympy's own constructors, symbol names and numbers are accepted;
- ``guards_code`` is Python that ``ExportedProgram.module()`` compiles and runs: only
  comparisons and arithmetic on input sizes are accepted;
- node, value and argument names, and the dotted names of weights and submodules, are pasted
  into the generated ``forward``: only identifiers are accepted;
- node targets are looked up as attributes of ``torch``, ``operator`` and ``math`` (reaching,
  say, ``torch.serialization.os.system``): only torch operators (aten, prims, higher-order) and
  the arithmetic builtins torch's verifier allows are accepted, and never ``aten.from_file``,
  which reads a file of the server's;
- pytree specs may import a module by name (enum keys, a defaultdict's factory): refused,
  except the builtin factories;
- TorchBind objects are unpickled by TorchScript's unpickler: refused.
"""

import functools
import io
import math
import re
import tokenize
from collections.abc import Callable, Iterator
from typing import Any

import sympy
import torch.utils._sympy.functions as sympy_functions

from ptserve.errors import ModelLoadError
from ptserve.loading.limits import read_json

MAX_EXPRESSION = 100_000  # characters of one symbolic expression or guard
MAX_NESTING = 100  # parentheses in one expression (sympy's parser recurses on them)

IDENTIFIER_FIELDS = frozenset({"name", "as_name", "user_input_name"})
IDENTIFIER_KEYS = frozenset(
    {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"}
)
IDENTIFIER_LISTS = frozenset({"forward_arg_names", "field_names"})
# objects whose keys are data (names, expressions), not fields of the schema
MAPS = IDENTIFIER_KEYS | {
    "range_constraints", "opset_version", "treespec_namedtuple_fields", "as_string_to_argument",
    "metadata", "custom_obj_values",
}  # fmt: skip
DOTTED_FIELDS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
)
DOTTED = re.compile(r"(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?")
TORCHBIND = frozenset({"custom_obj_values", "as_custom_obj", "custom_obj", "class_fqn"})
OPERATOR_NAMESPACES = frozenset({"aten", "prims", "higher_order", "quantized_decomposed"})
FORBIDDEN_OPERATORS = frozenset({"torch.ops.aten.from_file"})  # reads a server file
SAFE_FACTORIES = frozenset({"list", "dict", "set", "tuple", "int", "float", "str", "bool"})

# what sympy.sympify may meet in an expression: sympy's classes, torch's sympy functions
SYMPY_NAMES = frozenset(
    {
        name
        for module in (sympy, sympy_functions)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, sympy.Basic)
    }
    | {"oo", "zoo", "nan", "int_oo", "true", "false", "True", "False"}
)
SYMBOL = re.compile(r"[a-z]+[0-9]+")  # torch's symbol names: s0, u1, zuf0
QUOTED = re.compile(r"""(['"])(?:[A-Za-z_][A-Za-z0-9_]*|[-+0-9.eE]+)\1""")

# what ShapeGuardPythonPrinter writes into guards_code
GUARD_NAMES = frozenset(
    {"L", "and", "or", "not", "if", "else", "True", "False", "None", "math", "torch",
     "abs", "max", "min", "round", "int", "float", "IsNonOverlappingAndDenseIndicator",
     "cast_symbool_to_symint_guardless"}
)  # fmt: skip
GUARD_ATTRIBUTES = {
    "math": frozenset(n for n in dir(math) if not n.startswith("_")),
    "torch": frozenset({"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "_sym_sqrt"}),
    None: frozenset({"size", "stride", "storage_offset", "numel", "dim"}),  # of an input
}
EXPRESSION_OPS = frozenset(
    {"(", ")", ",", "+", "-", "*", "/", "//", "**", "%", "=", "==", "!=", "<", "<=", ">", ">=",
     "&", "|", "~", "^", "<<", ">>"}
)  # fmt: skip
GUARD_OPS = EXPRESSION_OPS - {"="} | {"[", "]", "."}


def program_problems(program: Any, where: str) -> list[str]:
    """Why the parsed program ``program`` could run code if torch deserialised it, one line
    each ("<where>: ..."); empty when it holds only what torch writes for a program."""
    problems = list(dict.fromkeys(_walk(program)))
    if isinstance(program, dict):
        for guard in program.get("guards_code") or []:
            problems.extend(_guard_problems(guard))
    return [f"{where}: {problem}" for problem in problems[:5]]


def _walk(value: Any, key: str | None = None) -> Iterator[str]:
    """Problems in ``value`` (found under ``key`` of its parent), depth first. The depth is
    bounded by the JSON reader."""
    if isinstance(value, dict):
        is_map = key in MAPS
        for name, child in value.items():
            if key in IDENTIFIER_KEYS and not _identifier(name):
                yield f"value name {_show(name)} is not a Python identifier"
            if not is_map:
                yield from _field(name, child)
            yield from _walk(child, None if is_map else name)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child, key)


def _field(name: str, value: Any) -> Iterator[str]:
    """Problems in one field of a program object, by what torch does with the field."""
    if name in TORCHBIND and value:
        yield "it holds TorchBind objects, which torch unpickles"
    elif name in IDENTIFIER_FIELDS and value not in (None, "") and not _identifier(value):
        yield f"{name} {_show(value)} is not a Python identifier"
    elif name in IDENTIFIER_LISTS and value is not None:
        if not isinstance(value, list) or not all(_identifier(v) for v in value):
            yield f"{name} {_show(value)} are not Python identifiers"
    elif name in DOTTED_FIELDS and not (isinstance(value, str) and DOTTED.fullmatch(value)):
        yield f"{name} {_show(value)} is not a dotted name"
    elif name in ("target", "as_operator") and isinstance(value, str):
        yield from _operator_problems(value)
    elif name == "expr_str":
        yield from _expression_problems(value)
    elif name in ("in_spec", "out_spec") and value is not None:
        yield from _treespec_problems(value)
    elif name == "as_string_to_argument" and isinstance(value, dict):
        bad = [k for k in value if not DOTTED.fullmatch(k)]
        yield from (f"argument key {_show(k)} is not a dotted name" for k in bad)
    elif name == "metadata" and isinstance(value, dict):
        for entry in ("custom", "from_node"):  # JSON inside JSON, parsed by torch
            if isinstance(value.get(entry), str):
                yield from _json_problems(value[entry], entry)


def _operator_problems(target: str) -> Iterator[str]:
    parts = target.split(".")
    if target in builtin_operators():
        return
    if ".".join(parts[:4]) in FORBIDDEN_OPERATORS:
        yield f"it calls {target}, which reads a file on the server"
    elif (
        parts[:2] == ["torch", "ops"]
        and len(parts) in (4, 5)
        and parts[2] in OPERATOR_NAMESPACES
        and all(_identifier(p) for p in parts)
    ):
        return
    else:
        yield f"it calls {_show(target)}, which is not a torch operator"


@functools.cache
def builtin_operators() -> frozenset[str]:
    """The non-operator targets torch's verifier allows (arithmetic on sizes), as the
    serialiser names them (``_operator.add``, ``math.ceil``, ``torch.sym_max``)."""
    from torch._export.serde.serialize import _SYM_OPS
    from torch._export.verifier import Verifier

    allowed: list[Callable[..., Any]] = [*Verifier().allowed_builtin_ops(), *_SYM_OPS]
    return frozenset(f"{fn.__module__}.{fn.__name__}" for fn in allowed)


def _expression_problems(text: Any) -> Iterator[str]:
    tokens = _tokens(text)
    if tokens is None:
        yield f"symbolic shape {_show(text)} is not an expression torch writes"
        return
    for i, (kind, string) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == tokenize.NAME:
            ok = string in SYMPY_NAMES or SYMBOL.fullmatch(string) is not None
            ok = ok or (following == "=" and _identifier(string) and not string.startswith("_"))
        elif kind == tokenize.OP:
            ok = string in EXPRESSION_OPS
        elif kind == tokenize.STRING:
            ok = QUOTED.fullmatch(string) is not None
        else:
            ok = kind == tokenize.NUMBER
        if not ok:
            yield f"symbolic shape {_show(text)} contains {_show(string)}"
            return


def _guard_problems(text: Any) -> Iterator[str]:
    tokens = _tokens(text)
    if tokens is None:
        yield f"guard {_show(text)} is not an expression torch writes"
        return
    for i, (kind, string) in enumerate(tokens):
        before = tokens[i - 1] if i else (tokenize.OP, "")
        if kind == tokenize.NAME and before[1] == ".":
            owner = tokens[i - 2][1] if i >= 2 and tokens[i - 2][1] in GUARD_ATTRIBUTES else None
            ok = string in GUARD_ATTRIBUTES[owner]
        elif kind == tokenize.NAME:
            ok = string in GUARD_NAMES
        elif kind == tokenize.OP:
            ok = string in GUARD_OPS
            if string == ".":  # only after a value or the math/torch modules
                ok = before[1] in (")", "]", "math", "torch")
        elif kind == tokenize.STRING:
            ok = QUOTED.fullmatch(string) is not None
        else:
            ok = kind == tokenize.NUMBER
        if not ok:
            yield f"guard {_show(text)} contains {_show(string)}"
            return


def _tokens(text: Any) -> list[tuple[int, str]] | None:
    """The Python tokens of a one-line expression (nothing is evaluated), or None when it is
    not one, too long or too deeply parenthesised."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION:
        return None
    try:
        raw = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    while raw and raw[-1].type in (tokenize.NEWLINE, tokenize.ENDMARKER):
        raw.pop()  # the end of the one line
    tokens = [(t.type, t.string) for t in raw]
    depth = 0
    for kind, string in tokens:
        if kind in (
            tokenize.NEWLINE,
            tokenize.NL,
            tokenize.COMMENT,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            return None
        depth += (string in "([") - (string in ")]") if kind == tokenize.OP else 0
        if depth > MAX_NESTING:
            return None
    return tokens


def _treespec_problems(spec: Any) -> Iterator[str]:
    if not isinstance(spec, str):
        yield "a pytree spec that is not text"
        return
    try:
        parsed = read_json(spec.encode(), "pytree spec")
    except ModelLoadError as exc:
        yield str(exc)
        return
    pending = [parsed]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and "__enum__" in item:
            yield "a pytree spec with enum keys, which torch imports by name"
        elif isinstance(item, dict):
            if "__enum__" in item:
                yield "a pytree spec with enum keys, which torch imports by name"
            factory = (item.get("default_factory_module"), item.get("default_factory_name"))
            if factory != (None, None) and (
                factory[0] != "builtins" or factory[1] not in SAFE_FACTORIES
            ):
                shown = _show(".".join(map(str, factory)))
                yield f"a pytree spec with a defaultdict factory {shown}, which torch imports"
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _json_problems(text: str, name: str) -> Iterator[str]:
    try:
        read_json(text.encode(), f"node metadata {name}")
    except ModelLoadError as exc:
        yield str(exc)


def _identifier(value: Any) -> bool:
    """A name that cannot leave the place in generated code it is pasted into (a keyword such
    as ``from``, an aten argument's name, can at worst make the code not compile)."""
    return isinstance(value, str) and value.isidentifier()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
