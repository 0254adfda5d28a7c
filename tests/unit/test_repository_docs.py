"""docs/repository.md stays true: its ptserve.toml example is valid, its error lines are the real
ones, and its lists of per-model and server-wide keys are exactly the settings."""

import re
from pathlib import Path

from ptserve.model_config import MODEL_KEYS
from ptserve.repository import ModelProblem, ModelSource, scan
from ptserve.settings import Settings
from tests.repos import add_version, marked_net, write_config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "repository.md").read_text()


def blocks(language: str) -> list[str]:
    """The fenced code blocks of ``language`` ("" for none), in order."""
    found: list[str] = []
    current: list[str] = []
    inside: str | None = None
    for line in DOC.splitlines():
        if line.startswith("```"):
            if inside is None:
                inside, current = line[3:].strip(), []
            else:
                if inside == language:
                    found.append("\n".join(current) + "\n")
                inside = None
        elif inside is not None:
            current.append(line)
    return found


def keys_after(label: str) -> set[str]:
    paragraph = DOC.split(label, 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", paragraph))


def test_the_example_settings_file_is_valid(tmp_path: Path) -> None:
    (example,) = blocks("toml")
    write_config(tmp_path, "digits", example)
    (tmp_path / "digits" / "labels.txt").write_text("a\nb\n")
    add_version(tmp_path, "digits", 1, marked_net(1))
    model = scan(Settings(model_path=tmp_path))["digits"]
    assert isinstance(model, ModelSource), model
    assert model.config.settings.max_batch_size == 8
    assert model.policy.describe() == "latest 2"


def test_the_quoted_errors_are_the_real_ones(tmp_path: Path) -> None:
    quoted = next(b for b in blocks("") if "server-wide setting" in b).splitlines()
    add_version(tmp_path, "digits", 1, marked_net(1))
    for text, line in zip(("port = 9000\n", "max_bach_size = 3\n"), quoted, strict=True):
        write_config(tmp_path, "digits", text)
        model = scan(Settings(model_path=tmp_path))["digits"]
        assert isinstance(model, ModelProblem)
        assert model.reason == line


def test_the_key_lists_are_the_settings() -> None:
    per_model = keys_after("Settable per model:")
    server_wide = keys_after("Server-wide (refused here):")
    assert per_model == MODEL_KEYS
    assert server_wide == set(Settings.model_fields) - MODEL_KEYS
