from pathlib import Path

import pytest
from pydantic import ValidationError

from ptserve.cli import build_parser
from ptserve.settings import EXAMPLE_MODEL, Settings


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
        from_cli("--input-dtype", "float99")
    assert "float99" in capsys.readouterr().err
