"""``ptserve info`` reads a file as data: its verdict matches serve's, hostile files are refused
with nothing run, and the model is loaded only when asked (``--load``)."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.errors import ModelLoadError
from ptserve.inspect import arity_warning, describe_file
from ptserve.loading import load_model
from ptserve.settings import Settings
from ptserve.signature import Signature, TensorSpec
from tests.artefacts import Artefact
from tests.hostile import (
    Hostile,
    hostile_exports,
    hostile_fastai,
    hostile_pickle,
    hostile_safetensors,
    markers_in,
    reads_server_file,
)
from tests.nets import TwoInputs


@pytest.mark.parametrize("fmt", ["pickle", "state_dict", "safetensors", "torchscript", "export"])
def test_a_servable_file_gets_no_refusal_and_is_not_loaded(
    fmt: str, artefacts: dict[str, Artefact], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("info loaded the model")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(torch.jit, "load", never)
    monkeypatch.setattr(torch.export, "load", never)
    artefact = artefacts[fmt]
    described = describe_file(Settings(model_path=artefact.path, **artefact.settings))
    assert described.refusal is None, described.refusal
    assert described.facts["format"] == fmt
    assert described.facts["inputs"] == ["x: float32 [8] per sample" if fmt == "export"
                                         else "input: float32 [8] per sample"]  # fmt: skip
    assert described.facts["serve"].startswith("would load")
    assert "outputs" not in described.facts


def test_the_export_signature_and_parameters_are_read_from_the_archive(
    artefacts: dict[str, Artefact],
) -> None:
    facts = describe_file(Settings(model_path=artefacts["export"].path)).facts
    assert facts["parameters"] == 8 * 16 + 16 + 16 * 3 + 3
    assert facts["signature source"] == "torch.export input specs"


def test_safetensors_weights_are_counted_from_the_header(artefacts: dict[str, Artefact]) -> None:
    artefact = artefacts["safetensors"]
    facts = describe_file(Settings(model_path=artefact.path, **artefact.settings)).facts
    assert facts["weights"] == f"{8 * 16 + 16 + 16 * 3 + 3} values in 4 tensors"


@pytest.mark.parametrize(
    ("fmt", "settings", "cause"),
    [
        (
            "pickle",
            {"input_shape": [8]},
            "refusing to unpickle; it would import tests.nets.TinyNet",
        ),
        ("state_dict", {}, "--model-class"),
        ("safetensors", {}, "--model-class"),
        ("torchscript", {}, "the input shape is unknown"),
    ],
)
def test_the_refusal_is_serves_own(
    fmt: str, settings: dict[str, Any], cause: str, artefacts: dict[str, Artefact]
) -> None:
    path = artefacts[fmt].path
    described = describe_file(Settings(model_path=path, **settings))
    assert described.refusal is not None
    assert cause in described.refusal
    with pytest.raises(ModelLoadError) as err:  # serve says the same
        load_model(Settings(model_path=path, **settings))
    assert cause in str(err.value)
    assert described.facts["serve"] == f"refused: {described.refusal}"


def test_a_plain_sequential_pickle_says_its_shape_is_known_once_loaded(tmp_path: Path) -> None:
    from tests.artefacts import save_plain_mlp

    artefact = save_plain_mlp(tmp_path / "mlp.pt")
    described = describe_file(Settings(model_path=artefact.path))
    assert described.refusal is None
    assert "first nn.Linear" in described.facts["inputs"]
    loaded = describe_file(Settings(model_path=artefact.path), load=True)
    assert loaded.facts["inputs"] == ["input: float32 [8] per sample"]
    assert loaded.facts["outputs"] == ["output: float32 [3] per sample"]
    assert loaded.facts["parameters"] == 8 * 4 + 4 + 4 * 3 + 3
    assert loaded.facts["serve"] == "loads and answers the shape probe"


def test_load_applies_serves_rules(artefacts: dict[str, Artefact]) -> None:
    described = describe_file(Settings(model_path=artefacts["pickle"].path), load=True)
    assert described.refusal is not None
    assert "tests.nets.TinyNet" in described.refusal
    assert "parameters" not in described.facts


def test_the_example_beside_the_model_gives_the_signature(
    artefacts: dict[str, Artefact], tmp_path: Path
) -> None:
    model = tmp_path / "net.pt"
    model.write_bytes(artefacts["torchscript"].path.read_bytes())
    np.save(tmp_path / "net.example.npy", np.zeros((2, 8), dtype=np.float64))
    facts = describe_file(Settings(model_path=model)).facts
    assert facts["inputs"] == ["input: float64 [8] per sample"]
    assert facts["signature source"] == "example file net.example.npy"


class Pair(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return (a + b) * scale


def test_a_forward_with_more_inputs_than_the_signature_is_warned(tmp_path: Path) -> None:
    torch.save(TwoInputs(), tmp_path / "two.pt")
    settings = Settings(
        model_path=tmp_path / "two.pt", trust_modules=["tests.nets"], input_shape=[4]
    )
    described = describe_file(settings, load=True)
    assert described.refusal is not None
    assert "shape probe failed" in described.refusal  # forward wants two tensors...
    (warning,) = described.facts["warnings"]  # ...and info says so
    assert "forward takes 2 inputs (image, extra) but the signature has 1" in warning
    assert "--input-names" in warning
    one = Signature((TensorSpec("a", "float32", (4,)),))
    two = Signature((*one.inputs, TensorSpec("b", "float32", (4,))))
    for model in (Pair(), torch.jit.script(Pair())):
        assert arity_warning(model, one) is not None
        assert arity_warning(model, two) is None  # scale has a default


# Hostile files: info refuses every one, and nothing in them runs.


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hostile(hostile_folder: Path) -> dict[str, Hostile]:
    made = hostile_exports(hostile_folder)
    made["pickle"] = hostile_pickle(hostile_folder)
    made["fastai"] = hostile_fastai(hostile_folder)
    secret = hostile_folder / "secret"
    secret.write_bytes(b"\x07")
    made["torchscript_reads_file"] = reads_server_file(hostile_folder, secret)
    return made


@pytest.mark.parametrize(
    "name",
    [
        "pickled_weight", "opaque_constant", "torchbind_constant", "example_inputs",
        "legacy_weights", "symbolic_shape", "guard", "buffer_name", "os_system_target",
        "aoti_package", "duplicate_config", "pre_2_7_layout", "pickle", "fastai",
        "torchscript_reads_file",
    ],
)  # fmt: skip
def test_info_refuses_a_hostile_file_and_runs_nothing(
    name: str, hostile: dict[str, Hostile], hostile_folder: Path
) -> None:
    attack = hostile[name]
    settings = Settings(
        model_path=attack.path, input_shape=[1] if name.startswith("torch") else None
    )
    for load in (False, True):
        try:
            refusal = describe_file(settings, load=load).refusal
        except ModelLoadError as exc:  # not even readable as a model
            refusal = str(exc)
        assert refusal is not None
        assert "\n" not in refusal
    assert markers_in(hostile_folder) == []


def test_info_refuses_hostile_safetensors_in_one_line(tmp_path: Path) -> None:
    for path in hostile_safetensors(tmp_path).values():
        settings = Settings(model_path=path, model_class="tests.nets:TinyNet")
        try:
            refusal = describe_file(settings).refusal
        except ModelLoadError as exc:
            refusal = str(exc)
        assert refusal is not None
        assert "\n" not in refusal


def test_trust_pickle_is_reported_as_the_risk_it_is(hostile: dict[str, Hostile]) -> None:
    settings = Settings(model_path=hostile["pickle"].path, trust_pickle=True)
    described = describe_file(settings)
    assert described.refusal is None
    assert described.facts["serve"] == "would load with --trust-pickle: the file can run any code"
    assert not hostile["pickle"].marker.exists()  # described, not loaded
