"""A model that cannot be served stops start-up: non-zero exit, one clear line, no traceback."""

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.artefacts import Artefact, save_malicious
from tests.e2e.conftest import CliResult, free_port, run_cli


@dataclass
class Case:
    """A broken model: how to make it, extra CLI flags and env, and the cause to report."""

    make: Callable[[Path, dict[str, Artefact]], Path]
    cause: str  # regex for the cause: exactly one line of output may match it
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # what that line must also say


def missing(folder: Path, _: dict[str, Artefact]) -> Path:
    return folder / "missing.pt"


def corrupt(folder: Path, _: dict[str, Artefact]) -> Path:
    path = folder / "corrupt.pt"
    path.write_bytes(b"\x13\x37" + np.random.default_rng(7).bytes(4094))
    return path


def truncated(folder: Path, made: dict[str, Artefact]) -> Path:
    whole = made["pickle"].path.read_bytes()
    path = folder / "truncated.pt"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def text_file(folder: Path, _: dict[str, Artefact]) -> Path:
    path = folder / "notes.txt"
    path.write_text("these are not weights\n")
    return path


def existing(fmt: str) -> Callable[[Path, dict[str, Artefact]], Path]:
    return lambda _, made: made[fmt].path


def malicious(folder: Path, _: dict[str, Artefact]) -> Path:
    path = folder / "evil.pt"
    save_malicious(path, folder / MARKER)
    return path


MARKER = "PWNED"  # what the malicious pickle would create beside itself
INFO = "info on the malicious pickle"
PARALLEL_RUNS = 4
TRUST = {"PTSERVE_TRUST_MODULES": '["tests.nets"]'}
CASES = {
    "missing file": Case(missing, r"no such"),
    "corrupt file": Case(corrupt, r"unknown model format|corrupt"),
    "truncated torch.save": Case(truncated, r"corrupt|truncated"),
    "unknown format": Case(text_file, r"unknown model format"),
    "model class not importable": Case(
        existing("state_dict"),
        r"cannot import",
        ["--model-class", "nosuch.module:Foo", "--input-shape", "8"],
        also=("nosuch.module:Foo",),
    ),
    # trust through the env var, so only the probe can fail
    "shape probe fails": Case(
        existing("pickle"), r"shape probe failed", ["--input-shape", "5"], TRUST, ("[2, 5]",)
    ),
    "custom class not trusted": Case(
        existing("pickle"),
        r"refusing to unpickle",
        ["--input-shape", "8"],
        also=("tests.nets.TinyNet", "--trust-module", "--trust-pickle"),
    ),
    "malicious pickle": Case(
        malicious, r"refusing to unpickle.*(posix|os)\.system", also=("--trust-pickle",)
    ),
}


@dataclass
class Outcome:
    """A broken model file and what ptserve said about it."""

    path: Path
    result: CliResult


@pytest.fixture(scope="module")
def outcomes(
    artefacts: dict[str, Artefact], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """``ptserve serve`` on every broken model, plus ``ptserve info`` on the malicious one.

    Each run is mostly torch's import time, so the runs go in parallel to keep the suite short.
    """
    jobs: dict[str, tuple[Path, list[str], dict[str, str]]] = {}
    for name, case in CASES.items():
        path = case.make(tmp_path_factory.mktemp("broken"), artefacts)
        jobs[name] = (path, ["serve", str(path), *case.flags, "--port", str(free_port())], case.env)
    evil = malicious(tmp_path_factory.mktemp("broken"), artefacts)
    jobs[INFO] = (evil, ["info", str(evil), "--json"], {})

    def attempt(job: tuple[Path, list[str], dict[str, str]]) -> Outcome:
        path, args, env = job
        return Outcome(path, run_cli(args, env=env))

    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return dict(zip(jobs, pool.map(attempt, jobs.values()), strict=True))


def error_line(result: CliResult, cause: str) -> str:
    """The one line of output that states ``cause``."""
    lines = [line for line in result.output.splitlines() if re.search(cause, line)]
    assert len(lines) == 1, f"expected one line matching {cause!r}:\n{result.output}"
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_load_failure_stops_startup_with_one_clear_line(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    case, path, result = CASES[name], outcomes[name].path, outcomes[name].result
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output
    line = error_line(result, case.cause)
    assert path.name in line, f"the error line does not name the file: {line!r}"
    for part in case.also:
        assert part in line, f"{part!r} missing from {line!r}"
    assert not (path.parent / MARKER).exists()


def test_info_lists_but_never_runs_a_malicious_pickle(outcomes: dict[str, Outcome]) -> None:
    path, result = outcomes[INFO].path, outcomes[INFO].result
    assert not (path.parent / MARKER).exists()
    assert result.returncode == 1, result.output  # serve would refuse it
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("ptserve: serve would refuse it: ")
    assert "--trust-pickle" in line
    facts = json.loads(result.stdout)
    assert facts["format"] == "pickle"
    assert any(re.fullmatch(r"(posix|os)\.system \(refused\)", i) for i in facts["imports"])
    assert facts["serve"].startswith("refused: ")
    assert "parameters" not in facts


def test_malicious_pickle_is_a_real_threat(tmp_path: Path) -> None:
    """Control: unpickled without checks, the file does create the marker, so the checks above
    that it does not exist mean something."""
    path = malicious(tmp_path, {})
    torch.load(path, weights_only=False)  # our own file; it only touches the marker
    assert (tmp_path / MARKER).exists()
