from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.errors import ModelLoadError
from ptserve.loading import load_model
from ptserve.settings import Settings
from tests.artefacts import Artefact, save_malicious, save_plain_mlp

FORMATS = ["pickle", "state_dict", "safetensors", "torchscript", "export"]


def run(model: Any, inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_and_computes_the_same(fmt: str, artefacts: dict[str, Artefact]) -> None:
    artefact = artefacts[fmt]
    loaded = load_model(Settings(model_path=artefact.path, **artefact.settings))
    assert loaded.facts.format == fmt
    np.testing.assert_allclose(run(loaded.model, artefact.inputs), artefact.expected, atol=1e-6)
    assert loaded.signature.inputs[0].shape == (8,)
    if fmt != "export":  # exported programs are called through a graph module
        assert loaded.parameters == 8 * 16 + 16 + 16 * 3 + 3


def test_export_signature_comes_from_the_artefact(artefacts: dict[str, Artefact]) -> None:
    loaded = load_model(Settings(model_path=artefacts["export"].path))
    assert loaded.signature.source == "torch.export input specs"
    (spec,) = loaded.signature.inputs
    assert (spec.name, spec.dtype, spec.shape) == ("x", "float32", (8,))


def test_export_with_a_fixed_batch_is_refused_with_advice(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 1)
    torch.export.save(torch.export.export(net, (torch.zeros(4, 3),)), tmp_path / "fixed.pt2")
    with pytest.raises(ModelLoadError, match=r"fixed batch of 4.*Dim\('batch'\)"):
        load_model(Settings(model_path=tmp_path / "fixed.pt2"))


def test_model_is_in_eval_mode(artefacts: dict[str, Artefact]) -> None:
    net = torch.load(artefacts["pickle"].path, weights_only=False).train()
    path = artefacts["pickle"].path.with_name("training.pt")
    torch.save(net, path)
    loaded = load_model(Settings(model_path=path, **artefacts["pickle"].settings))
    assert isinstance(loaded.model, torch.nn.Module)
    assert not loaded.model.training


def test_plain_sequential_needs_no_trust_and_infers_its_input(tmp_path: Path) -> None:
    artefact = save_plain_mlp(tmp_path / "mlp.pt")
    loaded = load_model(Settings(model_path=artefact.path))
    assert loaded.signature.source == "first nn.Linear layer"
    assert loaded.signature.inputs[0].shape == (8,)
    np.testing.assert_allclose(run(loaded.model, artefact.inputs), artefact.expected, atol=1e-6)


def test_custom_class_pickle_is_refused_without_trust(artefacts: dict[str, Artefact]) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(Settings(model_path=artefacts["pickle"].path, input_shape=[8]))
    message = str(err.value)
    assert "tests.nets.TinyNet" in message
    assert "--trust-module" in message
    assert "--trust-pickle" in message
    assert "torch.nn.modules.linear.Linear" not in message  # building blocks are allowed


def test_model_class_setting_trusts_its_module(artefacts: dict[str, Artefact]) -> None:
    settings = Settings(
        model_path=artefacts["pickle"].path, input_shape=[8], model_class="tests.nets:TinyNet"
    )
    assert load_model(settings).facts.format == "pickle"


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelLoadError) as err:
        load_model(Settings(model_path=tmp_path / "evil.pt", input_shape=[2]))
    assert "system" in str(err.value)
    assert "--trust-pickle" in str(err.value)
    assert not marker.exists()


def test_trust_pickle_is_an_explicit_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    save_malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelLoadError, match=r"not a torch\.nn\.Module"):
        load_model(Settings(model_path=tmp_path / "evil.pt", trust_pickle=True))
    assert marker.exists()  # the opt-in really disables the checks


@pytest.mark.parametrize(
    ("settings", "cause"),
    [
        ({}, "--model-class"),
        ({"model_class": "nosuch.module:Net"}, "cannot import it"),
        ({"model_class": "tests.nets"}, "module:Class"),
        ({"model_class": "tests.nets:TinyNet", "model_kwargs": {"hidden": 5}}, "do not fit"),
        ({"model_class": "tests.nets:TinyNet", "model_kwargs": {"bogus": 1}}, "failed"),
    ],
)
def test_state_dict_problems_are_one_clear_line(
    settings: dict[str, Any], cause: str, artefacts: dict[str, Artefact]
) -> None:
    with pytest.raises(ModelLoadError, match=cause) as err:
        load_model(Settings(model_path=artefacts["state_dict"].path, input_shape=[8], **settings))
    assert "\n" not in str(err.value)


def test_unknown_input_shape_says_how_to_give_it(artefacts: dict[str, Artefact]) -> None:
    with pytest.raises(ModelLoadError, match="--input-shape"):
        load_model(Settings(model_path=artefacts["torchscript"].path))


def test_example_file_beside_the_model_gives_the_signature(
    artefacts: dict[str, Artefact], tmp_path: Path
) -> None:
    model = tmp_path / "net.pt"
    model.write_bytes(artefacts["torchscript"].path.read_bytes())
    np.save(tmp_path / "net.example.npy", np.ones((3, 8), dtype=np.float64))
    loaded = load_model(Settings(model_path=model))
    (spec,) = loaded.signature.inputs
    assert (spec.dtype, spec.shape) == ("float64", (8,))
    assert loaded.signature.source == "example file net.example.npy"


def test_unavailable_device_is_refused(artefacts: dict[str, Artefact]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model(Settings(model_path=artefacts["export"].path, device="cuda"))
