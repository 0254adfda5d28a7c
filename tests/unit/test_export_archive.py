"""torch.export archives: every way torch.export.load runs code from a file is refused before
torch sees the file, while ordinary exports load without flags."""

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim, export

from ptserve.errors import ModelLoadError
from ptserve.loading import load_model
from ptserve.loading.export_archive import example_problems, read_export
from ptserve.loading.export_program import program_problems
from ptserve.settings import Settings
from tests.hostile import Hostile, hostile_exports

# the entry each refusal must name
ENTRIES = {
    "pickled_weight": "data/weights/weight_2",
    "opaque_constant": "data/constants/opaque_obj_0",
    "torchbind_constant": "data/constants/custom_obj_0",
    "example_inputs": "data/sample_inputs/model.pt",
    "legacy_weights": "data/weights/model.pt",
    "symbolic_shape": "models/model.json: symbolic shape",
    "guard": "models/model.json: guard",
    "buffer_name": "models/model.json: buffer_name",
    "os_system_target": "models/model.json: it calls 'torch.serialization.os.system'",
    "aoti_package": "data/aotinductor/model/model.so",
    "duplicate_config": "two entries named duplicate_config/data/weights/model_weights_config",
    "pre_2_7_layout": "serialized_",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Hostile]:
    return hostile_exports(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", list(ENTRIES))
def test_hostile_export_is_refused_though_torch_would_run_it(
    name: str, hostile: dict[str, Hostile]
) -> None:
    attack = hostile[name]
    with pytest.raises(ModelLoadError) as err:
        load_model(Settings(model_path=attack.path))
    message = str(err.value)
    assert ENTRIES[name] in message
    assert "\n" not in message
    if name != "duplicate_config":  # an ambiguous archive is refused whatever the trust
        assert "--trust-pickle" in message
    assert not attack.marker.exists()
    if attack.control is None:
        return  # refused by policy; torch itself would not run this payload
    with contextlib.suppress(Exception):  # most fail after the payload ran
        attack.control(attack.path)
    assert attack.marker.exists(), "the control did not run the payload: the attack is stale"


def test_trust_pickle_is_an_explicit_opt_in(hostile: dict[str, Hostile], tmp_path: Path) -> None:
    attack = hostile_exports(tmp_path)["pickled_weight"]  # its own copy: this one runs
    with contextlib.suppress(ModelLoadError):  # the payload is no tensor: loading then fails
        load_model(Settings(model_path=attack.path, trust_pickle=True))
    assert attack.marker.exists()


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": self.a(x), "b": torch.softmax(self.b(x), -1)}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layer(self.embed(tokens)).mean(1)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda y: self.l(y), lambda y: y * 2, (x,))


class Halves(nn.Module):
    """Shape arithmetic: the export carries guards_code and symbolic expressions."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(x.shape[0] // 2, -1)
        return pairs.sum() + y[: x.shape[0]].sum() + torch.cat([x, y]).sum()


BATCH = Dim("batch")
ORDINARY: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]] = {
    "conv": (Conv(), (torch.randn(2, 3, 8, 8),), {"x": {0: BATCH}}),
    "dict_outputs": (Heads(), (torch.randn(2, 4),), {"x": {0: BATCH}}),
    "transformer": (
        Encoder(),
        (torch.randint(0, 50, (2, 5)),),
        {"tokens": {0: BATCH, 1: Dim("seq", max=64)}},
    ),
    "cond": (Branches(), (torch.randn(2, 4),), {"x": {0: BATCH}}),
    "gru": (nn.GRU(4, 5, batch_first=True), (torch.randn(2, 3, 4),), {"input": {0: BATCH}}),
    "guards": (
        Halves(),
        (torch.zeros(4, 3), torch.zeros(9, 3)),
        {"x": {0: 2 * Dim("b", min=2, max=64)}, "y": {0: Dim("c", min=8)}},
    ),
}


@pytest.mark.filterwarnings("ignore:The tensor attributes self._flat_weights")  # GRU, in torch
@pytest.mark.parametrize("name", list(ORDINARY))
def test_ordinary_exports_pass_the_checks_and_load(name: str, tmp_path: Path) -> None:
    module, args, dynamic = ORDINARY[name]
    torch.manual_seed(0)
    program = export(module.eval(), args, dynamic_shapes=dynamic)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(program, path)
    archive = read_export(path)
    assert archive.unsafe == []
    assert example_problems(archive) == []
    if name == "guards":
        assert archive.program is not None
        assert archive.program["guards_code"]
    if name != "guards":  # a batch of 4 or more, not per-sample: no ptserve signature
        loaded = load_model(Settings(model_path=path))
        with torch.inference_mode():
            ours, eager = loaded.model(*args), module(*args)
        for got, want in zip(tensors(ours), tensors(eager), strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def tensors(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def test_the_signature_is_read_from_the_program_json(tmp_path: Path) -> None:
    program = export(
        Encoder().eval(), (torch.randint(0, 50, (2, 5)),),
        dynamic_shapes={"tokens": {0: BATCH, 1: Dim("seq", max=64)}},
    )  # fmt: skip
    torch.export.save(program, tmp_path / "enc.pt2")
    (spec,) = read_export(tmp_path / "enc.pt2").signature().inputs
    assert (spec.name, spec.dtype, spec.shape) == ("tokens", "int64", (-1,))


def test_parameters_are_counted_from_the_weights_config(hostile: dict[str, Hostile]) -> None:
    archive = read_export(hostile["pickled_weight"].path.with_name("base.pt2"))
    assert archive.parameters == 8 * 3 + 3  # the buffer is not a parameter


@pytest.mark.parametrize(
    ("program", "problem"),
    [
        ({"name": "x y"}, "name 'x y' is not a Python identifier"),
        ({"name": "a.b"}, "is not a Python identifier"),
        ({"tensor_values": {"a-b": {}}}, "value name 'a-b'"),
        ({"forward_arg_names": ["x", "y)"]}, "are not Python identifiers"),
        ({"fqn": 'l"'}, "is not a dotted name"),
        ({"target": "torch.ops.mylib.op.default"}, "not a torch operator"),
        ({"target": "torch.ops.aten.from_file.default"}, "reads a file on the server"),
        ({"as_operator": "builtins.eval"}, "not a torch operator"),
        ({"expr_str": "Symbol('s0').__class__"}, "contains '.'"),
        ({"expr_str": "lambda: 1"}, "contains 'lambda'"),
        ({"expr_str": "Symbol(f'{1}')"}, "contains"),
        ({"expr_str": "(" * 200 + "1" + ")" * 200}, "not an expression torch writes"),
        ({"expr_str": "1\nimport os"}, "not an expression torch writes"),
        ({"guards_code": ["L['x'].size()[0].__class__ == 1"]}, "contains '__class__'"),
        ({"guards_code": ["torch.load('x') == 1"]}, "contains 'load'"),
        ({"in_spec": '[1, {"type": "x", "context": "{\\"__enum__\\": 1}"}]'}, "enum keys"),
        (
            {
                "out_spec": '[1, {"context": {"default_factory_module": "os",'
                ' "default_factory_name": "system"}}]'
            },
            "defaultdict factory 'os.system'",
        ),
        ({"custom_obj_values": {"x": {"name": "x", "class_fqn": "a.b"}}}, "TorchBind"),
        ({"metadata": {"custom": "[" * 1000 + "]" * 1000}}, "nested deeper"),
    ],
)
def test_program_strings_that_reach_an_interpreter_are_checked(
    program: dict[str, Any], problem: str
) -> None:
    problems = program_problems(program, "models/model.json")
    assert any(problem in p for p in problems), problems


def test_what_torch_writes_passes() -> None:
    program = {
        "graph_module": {"graph": {"nodes": [{"target": "_operator.getitem", "name": "getitem"},
                                             {"target": "torch.ops.higher_order.cond", "name": ""}],
                                   "tensor_values": {"x": {"sizes": [{"as_expr": {
                                       "expr_str": "Mul(Integer(2), Symbol('s77', positive=True,"
                                                   " integer=True))"}}]}}},
                         "module_call_graph": [{"fqn": "body.0", "signature": None}]},
        "guards_code": ["(L['x'].size()[0] // 2) != L['x'].size()[0]",
                        "math.floor(torch.sym_float(L['x'].size()[0])) >= 2"],
    }  # fmt: skip
    assert program_problems(program, "models/model.json") == []


def test_an_archive_without_example_inputs_loads(tmp_path: Path) -> None:
    from tests.hostile import archive_entries, exported, write_archive

    entries = archive_entries(exported(tmp_path / "base.pt2"))
    entries["data/sample_inputs/model.pt"] = b""  # what torch writes for a program without them
    write_archive(tmp_path / "bare.pt2", entries, root="bare")
    loaded = load_model(Settings(model_path=tmp_path / "bare.pt2"))
    assert loaded.signature.inputs[0].shape == (8,)
