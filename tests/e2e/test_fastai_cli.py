"""fastai exports through the real CLI: hostile exports refused by ``serve`` and ``info`` with
nothing run; a trusted export served with ``--trust-pickle``; ``ptserve convert`` then ``ptserve
serve OUT_DIR`` in an environment where fastai cannot be imported."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import NEEDS_FASTAI
from tests.e2e.conftest import REPO_ROOT, CliResult, child_env, free_port, run_cli, running_ptserve
from tests.fastai_learners import TabularExport
from tests.hostile_exports import VARIANTS, Hostile, build_hostile

pytest.importorskip("fastai", reason=NEEDS_FASTAI)

PARALLEL_RUNS = 4
CONVERT_TIMEOUT_S = 600.0  # a hang guard: a conversion takes 15-40 s on a busy 2-core machine
# The fastai family: importing any of them fails where fastai is "not installed".
FASTAI_PACKAGES = ("fastai", "fastcore", "fasttransform", "fastprogress", "fastdownload", "plum")


@pytest.fixture(scope="module")
def outcomes(
    tabular: TabularExport, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Hostile, CliResult, CliResult]]:
    """``ptserve serve`` and ``ptserve info --json`` on every hostile export (in parallel: each
    run is mostly torch's import)."""
    hostile = build_hostile(tabular.path, tmp_path_factory.mktemp("hostile-cli"))

    def attempt(export: Hostile) -> tuple[Hostile, CliResult, CliResult]:
        serve = run_cli(["serve", str(export.path), "--port", str(free_port())])
        return export, serve, run_cli(["info", str(export.path), "--json"])

    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return dict(zip(hostile, pool.map(attempt, hostile.values()), strict=True))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_serve_and_info_refuse_a_hostile_export_and_run_nothing(
    name: str, outcomes: dict[str, tuple[Hostile, CliResult, CliResult]]
) -> None:
    export, serve, info = outcomes[name]
    assert serve.returncode != 0, serve.output
    assert "Traceback" not in serve.output + info.output
    lines = [line for line in serve.output.splitlines() if "refusing to load" in line]
    assert len(lines) == 1, serve.output
    assert f"ptserve convert {export.path} OUT_DIR" in lines[0]
    assert "--trust-pickle" in lines[0]
    assert info.returncode == 1, info.output  # serve would refuse it
    (line,) = info.stderr.splitlines()
    assert line.startswith("ptserve: serve would refuse it: ")
    assert "refusing to load a fastai Learner export" in line
    facts = json.loads(info.stdout)
    assert facts["format"] == "fastai"
    assert "refused without --trust-pickle" in facts["safety"]
    assert facts["serve"].startswith("refused: ")
    assert not export.marker.exists(), export.runs


def learn_predict(export: TabularExport, row: dict[str, Any]) -> list[float]:
    import pandas as pd

    with export.learn.no_bar():
        _, _, probs = export.learn.predict(pd.Series(row, dtype=object))
    return [float(p) for p in probs]


def assert_predictions_equal_learn_predict(export: TabularExport, base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.post("/predict", json={"instances": export.rows})
    assert response.status_code == 200, response.text
    for row, prediction in zip(export.rows, response.json()["predictions"], strict=True):
        probs = list(prediction["probabilities"].values())
        assert probs == pytest.approx(learn_predict(export, row), abs=1e-4)


def test_a_trusted_export_serves_with_trust_pickle(tabular: TabularExport, tmp_path: Path) -> None:
    with running_ptserve([str(tabular.path), "--trust-pickle"], tmp_path / "log") as server:
        assert_predictions_equal_learn_predict(tabular, server.base_url)
    assert "with --trust-pickle: the file can run any code" in server.log()


def without_fastai(folder: Path) -> dict[str, str]:
    """An environment in which importing any fastai package fails, as if not installed."""
    for name in FASTAI_PACKAGES:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: the folder must serve without it')\n"
        )
    paths = [str(folder), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_convert_then_serve_the_folder_without_fastai(
    tabular_missing: TabularExport, tmp_path: Path
) -> None:
    out = tmp_path / "iris"
    converted = run_cli(["convert", str(tabular_missing.path), str(out)], timeout=CONVERT_TIMEOUT_S)
    assert converted.returncode == 0, converted.output
    assert re.search(
        r"check: 64 generated rows; .* by at most \S+ \(tolerance 0\.0001\)", converted.stdout
    )
    assert f"serve it with: ptserve serve {out}" in converted.stdout
    env = without_fastai(tmp_path / "blocked")
    blocked = subprocess.run(
        [sys.executable, "-c", "import fastai"], env=child_env(env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "fastai is blocked" in blocked.stderr  # the check means something
    with running_ptserve([str(out)], tmp_path / "log", env) as server:
        assert_predictions_equal_learn_predict(tabular_missing, server.base_url)
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            meta = client.get(f"/models/{out.name}").json()
    assert meta["format"] == "converted"


def test_convert_fails_in_one_line(tabular: TabularExport, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    taken = run_cli(["convert", str(tabular.path), str(tmp_path / "taken")])
    assert taken.returncode == 1
    assert taken.stderr == f"ptserve: {tmp_path / 'taken'}: already exists; name a new folder\n"


def test_the_parent_process_never_imports_fastai(tabular: TabularExport, tmp_path: Path) -> None:
    """The conversion's fastai work happens in its child: the process running the command
    has no fastai module loaded afterwards."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom ptserve.convert.command import convert\n"
        f"convert(Path({str(tabular.path)!r}), Path({str(tmp_path / 'out')!r}))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('fastai', 'fastcore'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=CONVERT_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "ptserve.json").is_file()
