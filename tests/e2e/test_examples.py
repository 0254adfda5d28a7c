"""The examples run with one command each."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, child_env, stop_process
from tests.guards import EXAMPLE_S, hang_guard


def run_example(name: str, *args: str) -> str:
    """Run ``examples/NAME/run.py ARGS`` to completion; its stdout (it must exit 0)."""
    script = REPO_ROOT / "examples" / name / "run.py"
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,  # its server goes with it when stopped
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=hang_guard(EXAMPLE_S))
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
    stdout = run_example("fastai_tabular", "--out", str(tmp_path))
    assert (tmp_path / "export.pkl").is_file()
    answers = re.findall(r"truth (\w+), predicted (\w+) \(", stdout)
    assert len(answers) == 5, stdout
    assert sum(truth == label for truth, label in answers) >= 4, stdout


def test_fastai_vision_example_trains_exports_serves_and_classifies(tmp_path: Path) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    pytest.importorskip(
        "torchvision",
        reason="fastai vision learners need torchvision: run bash scripts/test-vision.sh",
    )
    stdout = run_example("fastai_vision", "--out", str(tmp_path), "--images", "600")
    assert (tmp_path / "export.pkl").is_file()
    answers = re.findall(r"^\d+-digit-(\d)\.png: predicted (\d)$", stdout, re.MULTILINE)
    assert len(answers) == 8, stdout
    assert sum(truth == label for truth, label in answers) >= 6, stdout
    base64_answer = re.search(r"^(\d+-digit-\d\.png) as base64: predicted (\d)$", stdout, re.M)
    assert base64_answer is not None, stdout
    assert f"{base64_answer[1]}: predicted {base64_answer[2]}" in stdout  # same answer both ways
