"""torch.export archives (.pt2) read as data: what ``torch.export.load`` would unpickle or run,
the parameter count and the input signature, from the archive's index and JSON alone.

``torch.export.load`` (torch 2.13, ``torch/export/pt2_archive/_package.py``) runs a pickle, or
other code, when the archive asks it to:

- a weight or tensor constant whose config says ``use_pickle`` -> ``torch.load(weights_only=
  False)``; an opaque-object constant -> ``pickle.loads``; a TorchBind constant -> TorchScript's
  unpickler;
- the example inputs (``data/sample_inputs/<model>.pt``), and weights or constants in the legacy
  layout (``data/weights/<model>.pt``, ``data/constants/<model>.pt``, or a pre-2.7 archive's
  ``serialized_*.pt``) -> weights-only, then a full unpickle when that fails;
- an AOTInductor package (``data/aotinductor/``) -> shared libraries loaded into the process;
- the program JSON itself (see ``export_program``).

A plain ``torch.export.save`` of a module writes none of these except the example inputs,
which hold tensors only: they pass here, and are loaded weights-only by ptserve before torch
sees them (``example_problems``), so torch never falls back.
"""

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.export.pt2_archive import constants as pt2

from ptserve.errors import ModelLoadError
from ptserve.loading.archive import ZipIndex, open_zip
from ptserve.loading.detect import archive_globals
from ptserve.loading.export_program import program_problems
from ptserve.loading.limits import MAX_JSON_BYTES, read_json
from ptserve.signature import DTYPE_NAMES, Signature, TensorSpec

MAX_EXAMPLES_BYTES = 256 * 1024 * 1024
LEGACY_PICKLES = (
    "serialized_state_dict.pt",
    "serialized_constants.pt",
    "serialized_example_inputs.pt",
)
PAYLOAD_NAME = re.compile(r"(weight|tensor|custom_obj|opaque_obj)_[0-9]+")
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
DOTTED = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
WEIGHTS_ONLY_CAUSE = re.compile(r"WeightsUnpickler error: ([^\n]{0,200})")
PAYLOAD_KINDS = {"opaque_obj": "an opaque Python object", "custom_obj": "a TorchBind object"}


@dataclass
class ExportArchive:
    """What a .pt2 archive holds, read without loading it."""

    index: ZipIndex
    unsafe: list[str] = field(default_factory=list)  # "<entry>: why torch would run code"
    examples: list[str] = field(default_factory=list)  # example-input pickles torch loads
    parameters: int = 0
    program: dict[str, Any] | None = None  # the "model" program, which torch.export.load returns

    def signature(self) -> Signature:
        """The user inputs of the program, as its JSON states them (batch dimension dynamic).

        Raises ModelLoadError for a fixed batch or an input that is not a tensor.
        """
        path = self.index.path
        if self.program is None:
            raise ModelLoadError(f"{path}: the archive has no program named 'model'")
        try:
            return _signature(self.program, path)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ModelLoadError(f"{path}: unexpected program layout ({exc!r})") from None


def read_export(path: Path) -> ExportArchive:
    """Check a .pt2 archive's entries and programs; nothing in it is unpickled or run."""
    index = open_zip(path)
    names = index.entries
    archive = ExportArchive(index)
    legacy = [n for n in names if n.rpartition("/")[2] in LEGACY_PICKLES]
    if pt2.ARCHIVE_FORMAT_PATH not in names:
        entry = legacy[0] if legacy else "the archive"
        archive.unsafe.append(
            f"{entry}: a torch.export file from before torch 2.7's archive format, whose "
            "weights, constants and example inputs torch unpickles in full when weights-only "
            "loading fails; re-save it with a current torch.export.save"
        )
        return archive
    for name in names:
        if name.startswith(pt2.AOTINDUCTOR_DIR):
            archive.unsafe.append(f"{name}: AOTInductor compiled code, which torch loads")
            break
    for name in sorted(n for n in names if n.startswith(pt2.MODELS_DIR)):
        model = name[len(pt2.MODELS_DIR) :].removesuffix(".json")
        if not name.endswith(".json") or not MODEL_NAME.fullmatch(model):
            archive.unsafe.append(f"{name}: not a program torch writes")
            continue
        _read_model(archive, model, name)
    return archive


def _read_model(archive: ExportArchive, model: str, name: str) -> None:
    index = archive.index
    program = read_json(index.read(name, MAX_JSON_BYTES), f"{index.path}: {name}")
    archive.unsafe.extend(program_problems(program, name))
    if model == "model" and isinstance(program, dict):
        archive.program = program
    for legacy in (f"{pt2.WEIGHTS_DIR}{model}.pt", f"{pt2.CONSTANTS_DIR}{model}.pt"):
        if legacy in index.entries:
            archive.unsafe.append(
                f"{legacy}: weights or constants in the legacy layout, which torch unpickles in "
                "full when weights-only loading fails"
            )
    weights = pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model)
    constants = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model)
    for config, folder in ((weights, pt2.WEIGHTS_DIR), (constants, pt2.CONSTANTS_DIR)):
        if config in index.entries:
            _read_payloads(archive, config, folder)
    examples = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
    if examples in index.entries and index.size(examples):  # torch reads no bytes as none
        archive.examples.append(examples)
        data = index.read(examples, MAX_EXAMPLES_BYTES)
        refused = archive_globals(open_zip(Path(index.path), (examples, data)))
        if refused:
            archive.unsafe.append(
                f"{examples}: example inputs that import {', '.join(refused[:5])}; torch "
                "unpickles them in full when weights-only loading fails"
            )


def _read_payloads(archive: ExportArchive, config: str, folder: str) -> None:
    """A weights or constants config: no pickled payloads, names that cannot inject code."""
    index = archive.index
    parsed = read_json(index.read(config, MAX_JSON_BYTES), f"{index.path}: {config}")
    payloads = parsed.get("config") if isinstance(parsed, dict) else None
    if not isinstance(payloads, dict):
        archive.unsafe.append(f"{config}: not a payload config torch writes")
        return
    for fqn, meta in payloads.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        entry = f"{folder}{path_name}"
        if not isinstance(path_name, str) or not PAYLOAD_NAME.fullmatch(path_name):
            archive.unsafe.append(f"{config}: payload {fqn!r} has no plain entry name")
        elif meta.get("use_pickle") or not path_name.startswith(("weight_", "tensor_")):
            kind = PAYLOAD_KINDS.get(path_name.rsplit("_", 1)[0], "a pickle")
            archive.unsafe.append(
                f"{entry}: {fqn!r} is stored as {kind}, which torch.export.load unpickles in full"
            )
        elif not DOTTED.fullmatch(fqn):
            archive.unsafe.append(f"{config}: {fqn!r} is not a dotted name")
        elif folder == pt2.WEIGHTS_DIR and meta.get("is_param"):
            archive.parameters += _numel(meta.get("tensor_meta"))


def _numel(tensor_meta: Any) -> int:
    count = 1
    for size in (tensor_meta or {}).get("sizes", []):
        count *= int(size.get("as_int", 1)) if isinstance(size, dict) else 1
    return count


def _signature(program: dict[str, Any], path: str) -> Signature:
    graph = program["graph_module"]["graph"]
    values = graph["tensor_values"]
    specs = []
    for spec in program["graph_module"]["signature"]["input_specs"]:
        if "user_input" not in spec:
            continue
        arg = spec["user_input"]["arg"]
        if "as_tensor" not in arg:
            raise ModelLoadError(f"{path}: an input that is not a tensor ({sorted(arg)[0]})")
        name = arg["as_tensor"]["name"]
        meta = values[name]
        sizes = meta["sizes"]
        if not sizes or "as_int" in sizes[0]:
            batch = sizes[0]["as_int"] if sizes else "none"
            raise ModelLoadError(
                f"{path}: exported with a fixed batch of {batch}; export with "
                "dynamic_shapes={...: {0: Dim('batch')}} and an example batch of 2 or more"
            )
        shape = tuple(int(s["as_int"]) if "as_int" in s else -1 for s in sizes[1:])
        specs.append(TensorSpec(name, _dtype(meta["dtype"]), shape))
    return Signature(tuple(specs), source="torch.export input specs")


def _dtype(code: int) -> str:
    """The dtype name of torch.export's serialised scalar type ``code``."""
    from torch._export.serde.schema import ScalarType
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    dtype = _SERIALIZE_TO_TORCH_DTYPE[ScalarType(code)]
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def example_problems(archive: ExportArchive) -> list[str]:
    """Load each example-input pickle weights-only, as torch first tries to; one that fails
    would make torch.export.load unpickle it in full, so it is a problem to refuse."""
    problems = []
    for name in archive.examples:
        data = archive.index.read(name, MAX_EXAMPLES_BYTES)
        try:
            loaded = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:
            found = WEIGHTS_ONLY_CAUSE.search(str(exc))
            cause = found.group(1) if found else " ".join(str(exc).split())[:200]
            problems.append(
                f"{name}: example inputs that do not load weights-only ({cause}), which "
                "torch.export.load then unpickles in full"
            )
            continue
        if not isinstance(loaded, (tuple, dict)):
            problems.append(f"{name}: not example inputs ({type(loaded).__name__})")
    return problems
