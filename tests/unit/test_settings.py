from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from ptserve.cli import build_parser
from ptserve.settings import EXAMPLE_MODEL, Group, Settings, group_of, unknown_environment


def from_cli(*argv: str) -> Settings:
    args = vars(build_parser().parse_args(["serve", *argv]))
    del args["command"]
    return Settings(**args)


def test_defaults_serve_the_bundled_example_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_cli()
    assert settings.model_path == EXAMPLE_MODEL
    assert EXAMPLE_MODEL.is_file()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.model_name == "digits"


def test_cli_beats_env_beats_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ptserve.toml"
    config.write_text('port = 7001\nmax_instances = 7\nname = "from-file"\ntop_k = 2\n')
    monkeypatch.setenv("PTSERVE_PORT", "7002")
    monkeypatch.setenv("PTSERVE_MAX_INSTANCES", "8")
    settings = from_cli("--config", str(config), "--port", "7003")
    assert settings.port == 7003  # CLI
    assert settings.max_instances == 8  # env over file
    assert (settings.name, settings.top_k) == ("from-file", 2)  # file over defaults


def test_yaml_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ptserve.yaml"
    config.write_text("input_shape: [3, 64, 64]\ntrust_modules: [mypkg.models]\n")
    monkeypatch.setenv("PTSERVE_CONFIG", str(config))
    settings = Settings()
    assert settings.input_shape == [3, 64, 64]
    assert settings.trust_modules == ["mypkg.models"]


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "ptserve.toml"
    config.write_text("prot = 8001\n")
    with pytest.raises(ValidationError, match="prot"):
        Settings(config=config)


def test_cli_options_map_onto_settings() -> None:
    settings = from_cli(
        "m.pt", "--input-shape", "3", "64", "64", "--input-dtype", "float16",
        "--trust-module", "a.b", "--trust-module", "c", "--model-kwargs", '{"hidden": 4}',
        "--trust-pickle", "--labels", "l.txt", "--format", "export",
    )  # fmt: skip
    assert settings.model_path == Path("m.pt")
    assert settings.input_shape == [3, 64, 64]
    assert settings.input_dtype == "float16"
    assert settings.trust_modules == ["a.b", "c"]
    assert settings.model_kwargs == {"hidden": 4}
    assert settings.trust_pickle is True
    assert settings.format == "export"


@pytest.mark.parametrize(
    "argv",
    [["--input-shape", "3", "0"], ["--port", "70000"], ["--max-instances", "0"], ["--name", "a/b"]],
)
def test_invalid_values_fail_at_start(argv: list[str]) -> None:
    with pytest.raises(ValidationError):
        from_cli(*argv)


def test_cli_rejects_a_bad_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        from_cli("--format", "pikle")
    assert "invalid choice: 'pikle'" in capsys.readouterr().err


def test_an_unknown_dtype_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="unknown dtype 'float99'; one of float32"):
        from_cli("--input-dtype", "float99")


@pytest.mark.parametrize(
    ("argv", "shape", "dtype"),
    [
        (["--input-shape", "3", "64", "64"], [3, 64, 64], None),
        (["--input-shape", "3,64,64", "--input-dtype", "int64"], [3, 64, 64], "int64"),
        (["--input-shape", "a=6", "b=3,4"], {"a": [6], "b": [3, 4]}, None),
        (
            ["--input-shape", "a=6", "b=-1,4", "--input-dtype", "b=int64"],
            {"a": [6], "b": [-1, 4]},
            {"b": "int64"},
        ),
        (["--input-shape", "x=6", "--input-dtype", "float16"], {"x": [6]}, "float16"),
    ],
)
def test_one_shape_or_a_shape_per_named_input(
    argv: list[str], shape: object, dtype: object
) -> None:
    settings = from_cli(*argv)
    assert (settings.input_shape, settings.input_dtype) == (shape, dtype)


def test_several_inputs_from_a_config_file_and_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ptserve.toml"
    config.write_text('input_shape = {a = [6], b = [3, 4]}\ninput_dtype = {b = "int64"}\n')
    from_file = Settings(config=config)
    assert from_file.input_shape == {"a": [6], "b": [3, 4]}
    assert from_file.input_dtype == {"b": "int64"}
    assert from_file.declared_inputs == ["a", "b"]
    monkeypatch.setenv("PTSERVE_INPUT_SHAPE", "a=6 b=3,4")  # the CLI's syntax...
    monkeypatch.setenv("PTSERVE_INPUT_DTYPE", "float64")
    monkeypatch.setenv("PTSERVE_INPUT_NAMES", "a b")
    from_env = Settings()
    assert from_env.input_shape == {"a": [6], "b": [3, 4]}
    assert (from_env.input_dtype, from_env.input_names) == ("float64", ["a", "b"])
    monkeypatch.setenv("PTSERVE_INPUT_SHAPE", '{"a": [6], "b": [3, 4]}')  # ...or JSON
    monkeypatch.setenv("PTSERVE_INPUT_NAMES", '["b", "a"]')
    assert Settings().declared_inputs == ["b", "a"]  # the names give forward's order


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--input-shape", "6", "--input-names", "a", "b"],
            "2 input names (a, b) but one input shape; give a shape per input, e.g. --input-shape a=DIMS b=DIMS",
        ),
        (
            ["--input-shape", "a=6", "b=3", "--input-names", "a", "c"],
            "input_names (a, c) and input_shape (a, b) name different inputs",
        ),
        (["--input-shape", "a=6", "4"], "give NAME=VALUE for every input"),
        (["--input-shape", "a=6", "a=4"], "an input is named twice"),
        (
            ["--input-shape", "a=6", "--input-dtype", "b=int64"],
            "input_dtype names b, which is not an input (a)",
        ),
        (
            ["--input-shape", "6", "--input-dtype", "int64", "float32"],
            "give one dtype for every input, or NAME=DTYPE for each",
        ),
        (["--input-shape", "a=3,0"], "dims must be positive"),
        (["--input-shape", "3x64"], "dims must be whole numbers"),
        (["--input-names", "a", "a"], "input_names repeats a name"),
    ],
)
def test_signature_flags_that_disagree_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        from_cli(*argv)
    assert message in str(raised.value)


def test_every_setting_is_in_a_help_section() -> None:
    assert {
        name: group_of(f) for name, f in Settings.model_fields.items() if group_of(f) == "other"
    } == {}
    assert set(get_args(Group)) >= {
        "model",
        "signature",
        "batching",
        "server",
        "security",
        "observability",
    }


def test_unknown_ptserve_variables_get_a_warning_naming_the_closest_setting() -> None:
    environ = {
        "PTSERVE_PROT": "8001", "PTSERVE_INPUT_SHAP": "6", "PTSERVE_PORT": "8002",
        "ptserve_host": "0.0.0.0", "PTSERVE_XYZZY": "1", "OTHER_PORT": "1",
    }  # fmt: skip
    assert unknown_environment(environ) == [
        "PTSERVE_INPUT_SHAP is not a ptserve setting and is ignored; did you mean PTSERVE_INPUT_SHAPE?",
        "PTSERVE_PROT is not a ptserve setting and is ignored; did you mean PTSERVE_PORT?",
        "PTSERVE_XYZZY is not a ptserve setting and is ignored",
    ]
