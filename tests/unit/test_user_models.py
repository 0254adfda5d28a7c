"""A user's own models: classes defined in the training script (the pickle names
``__main__.Net``), several inputs, constructor arguments, and forward's parameters."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.errors import ModelLoadError
from ptserve.loading import load_model
from ptserve.settings import Settings
from ptserve.signature import Signature, TensorSpec, check_forward, probe_advice
from tests.nets import TinyNet, TwoInputs
from tests.user_models import UserFolder, make_user_folder

USER_MODULES = ("netdef", "train", "helpers")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> UserFolder:
    return make_user_folder(tmp_path_factory.mktemp("user"))


@pytest.fixture(autouse=True)
def fresh_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test imports the user's modules anew and leaves the import path as it found it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in USER_MODULES:
        sys.modules.pop(name, None)


def outputs(model: Any, *inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(*(torch.from_numpy(x) for x in inputs)).numpy()


def refusal(settings: Settings) -> str:
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_script_class_is_refused_with_what_happened_and_the_ways_out(user: UserFolder) -> None:
    message = refusal(Settings(model_path=user.model))
    assert message.startswith(f"{user.model}: cannot unpickle __main__.Net, __main__.Head: ")
    assert "the classes were defined in the script that saved the model" in message
    assert "--trust-module netdef" in message
    assert 'if __name__ == "__main__"' in message
    assert "torch.export, TorchScript or a state_dict" in message
    assert "netdef" not in sys.modules  # refused before anything was imported


@pytest.mark.parametrize(
    "settings",
    [
        {"trust_modules": ["netdef"]},
        {"trust_modules": ["train"]},  # the script itself: its training is guarded
        {"model_class": "netdef:Net"},
        {"trust_modules": ["netdef"], "trust_pickle": True},
    ],
)
def test_a_script_class_resolves_through_the_module_given(
    settings: dict[str, Any], user: UserFolder
) -> None:
    """Run from elsewhere (the repo root): the model's folder is searched."""
    loaded = load_model(Settings(model_path=user.model, **settings))
    module = settings.get("trust_modules", ["netdef"])[0]
    assert type(loaded.model).__module__ == module
    assert loaded.signature.inputs[0].shape == (6,)
    got = outputs(loaded.model, user.expected["x"])
    np.testing.assert_allclose(got, user.expected["net"], rtol=1e-6)


def test_the_current_folder_is_searched_too(
    user: UserFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    (elsewhere / "model.pt").write_bytes(user.model.read_bytes())  # no netdef.py beside it
    monkeypatch.chdir(user.folder)
    loaded = load_model(Settings(model_path=elsewhere / "model.pt", trust_modules=["netdef"]))
    np.testing.assert_allclose(
        outputs(loaded.model, user.expected["x"]), user.expected["net"], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"trust_modules": ["__main__"]}, "the classes were defined in the script that saved"),
        (
            {"trust_pickle": True},
            "cannot unpickle __main__.Net, __main__.Head even with --trust-pickle",
        ),
        ({"trust_modules": ["json"]}, "no trusted module (json) defines Net; pass the module"),
        ({"trust_modules": ["nosuchmodule"]}, "cannot import the trusted module nosuchmodule"),
    ],
)
def test_no_module_to_resolve_script_classes_through_says_so(
    settings: dict[str, Any], message: str, user: UserFolder
) -> None:
    assert message in refusal(Settings(model_path=user.model, **settings))


def test_a_trusted_module_lends_only_what_it_defines(tmp_path: Path) -> None:
    """A crafted pickle naming ``__main__.system`` (or ``helpers.system``), served with a trusted
    module that merely imports ``os.system``, is refused without running it."""
    attacker, victim = tmp_path / "attacker", tmp_path / "victim"
    attacker.mkdir()
    victim.mkdir()
    marker = victim / "PWNED"
    command = f"touch {marker}"
    script = (
        "import torch\nfrom helpers import system as imported\n\n"
        "def system(command):\n    pass\n\n"
        f"class Script:\n    def __reduce__(self):\n        return (system, ({command!r},))\n\n"
        f"class Helper:\n    def __reduce__(self):\n        return (imported, ({command!r},))\n\n"
        "torch.save({'w': torch.zeros(2), 'p': Script()}, 'script.pt')\n"
        "torch.save({'w': torch.zeros(2), 'p': Helper()}, 'helper.pt')\n"
    )
    (attacker / "helpers.py").write_text("def system(command):\n    pass\n")
    (attacker / "attack.py").write_text(script)
    subprocess.run([sys.executable, "attack.py"], cwd=attacker, check=True)
    (victim / "helpers.py").write_text("from os import system\n")
    for name in ("script.pt", "helper.pt"):
        (victim / name).write_bytes((attacker / name).read_bytes())
        message = refusal(Settings(model_path=victim / name, trust_modules=["helpers"]))
        assert "system: it is posix's, not defined in a trusted module" in message, message
    assert not marker.exists()
    # Control: with names resolved by lookup alone, the same file runs its command.
    with torch.serialization.safe_globals([(os.system, "helpers.system")]):
        torch.load(victim / "helper.pt", weights_only=True, map_location="cpu")
    assert marker.exists()


def test_a_shape_per_named_input_from_settings(tmp_path: Path) -> None:
    torch.save(TwoInputs(), tmp_path / "two.pt")
    settings = Settings(
        model_path=tmp_path / "two.pt",
        trust_modules=["tests.nets"],
        input_shape=["extra=3", "image=4"],
        input_names=["image", "extra"],
        input_dtype=["extra=float64"],
    )
    signature = load_model(settings).signature
    assert [(s.name, s.dtype, s.shape) for s in signature.inputs] == [
        ("image", "float32", (4,)),
        ("extra", "float64", (3,)),
    ]
    assert signature.source == "settings"


def test_several_inputs_and_no_shape_ask_for_one_per_input(tmp_path: Path) -> None:
    """The first layer is an nn.Linear, but forward takes two inputs: no single-input guess."""
    torch.save(TwoInputs(), tmp_path / "two.pt")
    message = refusal(Settings(model_path=tmp_path / "two.pt", trust_modules=["tests.nets"]))
    assert message == (
        f"{tmp_path / 'two.pt'}: the input shapes are unknown; forward takes 2 inputs (image, "
        "extra): give a shape per input with --input-shape image=DIMS extra=DIMS (DIMS like "
        "3,224,224), or save an example batch beside the model as two.example.npz with one "
        "array per input"
    )


def test_input_names_must_match_the_inputs_the_file_gives(tmp_path: Path) -> None:
    torch.save(TinyNet(), tmp_path / "tiny.pt")
    settings = Settings(
        model_path=tmp_path / "tiny.pt", trust_modules=["tests.nets"], input_names=["a", "b"]
    )
    assert "2 input names given (a, b) but the first nn.Linear layer gives 1 input (input)" in (
        refusal(settings)
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {},
            "netdef:Pair(**{}) failed: Pair.__init__() missing 1 required positional argument: 'hidden'; give the constructor's arguments with --model-kwargs '{\"hidden\": ...}'",
        ),
        ({"model_kwargs": {"hidden": 7}}, "size mismatch for a.weight"),
        (
            {"model_kwargs": {"hidden": 7}},
            "were the weights saved from a model built with other arguments? Give those with --model-kwargs",
        ),
    ],
)
def test_constructor_problems_point_at_model_kwargs(
    settings: dict[str, Any], message: str, user: UserFolder
) -> None:
    path = user.folder / "pair_weights.pt"
    assert message in refusal(Settings(model_path=path, model_class="netdef:Pair", **settings))


def spec(name: str) -> TensorSpec:
    return TensorSpec(name, "float32", (3,))


@pytest.mark.parametrize(
    ("names", "warning"),
    [
        (["image", "extra"], None),
        (
            ["image"],
            "forward takes 2 inputs (image, extra) but the signature from the settings has 1 input (image); give a shape per input, e.g. --input-shape image=DIMS extra=DIMS",
        ),
        (
            ["a", "b", "c"],
            "the signature from the settings has 3 inputs (a, b, c), but forward takes 2 (image, extra)",
        ),
        (
            ["extra", "image"],
            "inputs go to forward in the order extra, image, but its parameters are image, extra: give them in forward's order (--input-names image extra)",
        ),
        (["x", "y"], None),  # other names, same count: positions decide
    ],
)
def test_check_forward_compares_forwards_parameters_with_the_signature(
    names: list[str], warning: str | None
) -> None:
    signature = Signature(tuple(spec(n) for n in names))
    found = check_forward(TwoInputs(), signature)
    assert (found if warning is None else (found or "")[: len(warning)]) == warning


def test_check_forward_cannot_tell_for_varargs_and_says_nothing() -> None:
    class Varargs(torch.nn.Module):
        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return inputs[0]

    assert check_forward(Varargs(), Signature((spec("a"), spec("b"), spec("c")))) is None
    assert check_forward(torch.compile(TwoInputs()), Signature((spec("a"),))) is not None


def test_probe_advice_names_the_flag_that_gave_the_signature() -> None:
    net = TinyNet()
    from_settings = Signature((spec("input"),), source="settings")
    guessed = Signature((spec("input"),), source="first nn.Linear layer")
    assert probe_advice(net, from_settings).startswith("check --input-shape and --input-dtype")
    assert probe_advice(net, guessed).startswith(
        "the signature came from the first nn.Linear layer; give the right one with --input-shape"
    )
