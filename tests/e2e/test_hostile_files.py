"""The real CLI on every hostile file: ``ptserve info`` and ``ptserve serve`` refuse each in one
line naming the file, exit non-zero, print no traceback, and run nothing from it (the
controls in ``tests/unit`` show plain torch would)."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import CliResult, free_port, run_cli
from tests.hostile import (
    hostile_exports,
    hostile_fastai,
    hostile_pickle,
    hostile_safetensors,
    markers_in,
    reads_server_file,
)

PARALLEL_RUNS = 4  # each run is mostly torch's import
SERVED_SAFETENSORS = ("deep_nesting",)  # the header bomb; the rest: same parser, in-process


@dataclass
class Run:
    """A hostile file and what one command said about it."""

    path: Path
    result: CliResult


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def runs(folder: Path) -> dict[str, Run]:
    files: dict[str, tuple[Path, list[str]]] = {
        name: (attack.path, []) for name, attack in hostile_exports(folder).items()
    }
    files["pickle"] = (hostile_pickle(folder).path, [])
    files["fastai"] = (hostile_fastai(folder).path, [])
    secret = folder / "secret"
    secret.write_bytes(b"\x07")
    files["torchscript"] = (reads_server_file(folder, secret).path, ["--input-shape", "1"])
    for name, path in hostile_safetensors(folder).items():
        files[f"safetensors {name}"] = (path, ["--model-class", "tests.nets:TinyNet"])
    jobs: dict[str, tuple[Path, list[str]]] = {}
    for name, (path, flags) in files.items():
        jobs[f"info {name}"] = (path, ["info", str(path), *flags])
        if not name.startswith("safetensors") or name.endswith(SERVED_SAFETENSORS):
            jobs[f"serve {name}"] = (path, ["serve", str(path), *flags, "--port", str(free_port())])

    def attempt(job: tuple[Path, list[str]]) -> Run:
        path, args = job
        return Run(path, run_cli(args))

    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return dict(zip(jobs, pool.map(attempt, jobs.values()), strict=True))


def test_every_hostile_file_is_refused_in_one_line_and_runs_nothing(
    runs: dict[str, Run], folder: Path
) -> None:
    assert len(runs) >= 35
    for command, run in runs.items():
        result = run.result
        assert result.returncode != 0, f"{command}:\n{result.output}"
        assert "Traceback" not in result.output, f"{command}:\n{result.output}"
        refusals = [line for line in result.stderr.splitlines() if str(run.path) in line]
        assert refusals, f"{command}: no line names the file:\n{result.output}"
        if command.startswith("info"):
            (line,) = result.stderr.splitlines()
            assert line.startswith("ptserve: "), line
    assert markers_in(folder) == []
