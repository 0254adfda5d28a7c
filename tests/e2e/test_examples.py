"""The examples run with one command each."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, child_env, stop_process
from tests.guards import EXAMPLE_S, hang_guard

# The fastai examples train, convert (a child process importing fastai) and serve: on a busy
# 2-core machine that is many times the cost of importing fastai, measured just before.
IMPORTS_PER_FASTAI_EXAMPLE = 60
MIN_FASTAI_TIMEOUT_S = 300.0


def fastai_example_timeout(module: str) -> float:
    """A hang guard for a fastai example, derived from this machine's pace right now: how
    long a fresh interpreter takes to import ``module``."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=600)
    pace = time.monotonic() - started
    return max(MIN_FASTAI_TIMEOUT_S, IMPORTS_PER_FASTAI_EXAMPLE * pace)


def run_example(name: str, *args: str, timeout: float | None = None) -> str:
    """Run ``examples/NAME/run.py ARGS`` to completion; its stdout (it must exit 0)."""
    script = REPO_ROOT / "examples" / name / "run.py"
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,  # its server goes with it when stopped
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout or hang_guard(EXAMPLE_S))
    finally:
        stop_process(process)
    assert process.returncode == 0, stderr
    return stdout


def test_image_classifier_example_trains_exports_serves_and_classifies(tmp_path: Path) -> None:
    stdout = run_example("image_classifier", "--out", str(tmp_path), "--epochs", "3")
    assert (tmp_path / "digits_cnn.pt2").is_file()
    answers = re.findall(r"^\d+-digit-(\d)\.png: predicted (\d)$", stdout, re.MULTILINE)
    assert len(answers) == 8
    assert sum(truth == label for truth, label in answers) >= 6, stdout


def test_fastai_tabular_example_trains_exports_serves_and_predicts(tmp_path: Path) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    timeout = fastai_example_timeout("fastai.tabular.all")
    stdout = run_example("fastai_tabular", "--out", str(tmp_path), timeout=timeout)
    assert (tmp_path / "export.pkl").is_file()
    assert (tmp_path / "wine" / "ptserve.json").is_file()  # served converted
    answers = re.findall(r"truth (\w+), predicted (\w+) \(", stdout)
    assert len(answers) == 5, stdout
    assert sum(truth == label for truth, label in answers) >= 4, stdout


def test_fastai_vision_example_trains_exports_serves_and_classifies(tmp_path: Path) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    pytest.importorskip(
        "torchvision",
        reason="fastai vision learners need torchvision: run bash scripts/test-vision.sh",
    )
    timeout = fastai_example_timeout("fastai.vision.all")
    stdout = run_example(
        "fastai_vision", "--out", str(tmp_path), "--images", "600", timeout=timeout
    )
    assert (tmp_path / "export.pkl").is_file()
    assert (tmp_path / "digits" / "ptserve.json").is_file()  # served converted
    answers = re.findall(r"^\d+-digit-(\d)\.png: predicted (\d)$", stdout, re.MULTILINE)
    assert len(answers) == 8, stdout
    assert sum(truth == label for truth, label in answers) >= 6, stdout
    base64_answer = re.search(r"^(\d+-digit-\d\.png) as base64: predicted (\d)$", stdout, re.M)
    assert base64_answer is not None, stdout
    assert f"{base64_answer[1]}: predicted {base64_answer[2]}" in stdout  # same answer both ways
