"""A new user's own models, served with the real CLI as the README and the messages say: classes
defined in the training script, a model with two inputs given by flags alone, and logs that a
person at a terminal can read."""

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import (
    PTSERVE,
    REPO_ROOT,
    child_env,
    free_port,
    run_cli,
    running,
    running_ptserve,
    stop_process,
)
from tests.guards import COMMAND_S, REQUEST_S, hang_guard
from tests.user_models import UserFolder, make_user_folder

# ptserve itself comes from the repo; the user's folder is never on the Python path.
NO_USER_PATH = {"PYTHONPATH": str(REPO_ROOT)}
# What pip's `ptserve` console script does. Unlike `python -m ptserve`, it does not put the
# current folder on the Python path: ptserve has to look there itself.
CONSOLE_SCRIPT = "import sys\nfrom ptserve.cli import main\nsys.exit(main())\n"


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> UserFolder:
    return make_user_folder(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def ptserve_command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    script = tmp_path_factory.mktemp("bin") / "ptserve"
    script.write_text(CONSOLE_SCRIPT)
    return [sys.executable, str(script)]


def predict(base_url: str, instances: list[Any]) -> np.ndarray:
    response = httpx.post(
        f"{base_url}/predict", json={"instances": instances}, timeout=hang_guard(REQUEST_S)
    )
    assert response.status_code == 200, response.text
    return np.array(response.json()["predictions"], dtype=np.float32)


@pytest.mark.parametrize(
    ("args", "from_the_models_folder"),
    [
        (["--trust-module", "netdef"], True),
        (["--trust-module", "netdef"], False),
        (["--model-class", "netdef:Net"], False),
        (["--trust-module", "train"], True),  # the training script itself (training is guarded)
        (["--trust-pickle", "--trust-module", "netdef"], False),
    ],
)
def test_a_model_whose_classes_the_training_script_defined(
    args: list[str],
    from_the_models_folder: bool,
    user: UserFolder,
    ptserve_command: list[str],
    tmp_path: Path,
) -> None:
    cwd, model = (user.folder, "model.pt") if from_the_models_folder else (REPO_ROOT, user.model)
    port = free_port()
    argv = [*ptserve_command, "serve", str(model), *args, "--port", str(port)]
    with running(argv, port, tmp_path / "log", NO_USER_PATH, cwd) as server:
        got = predict(server.base_url, user.expected["x"].tolist())
    np.testing.assert_allclose(got, user.expected["net"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            [],
            "cannot unpickle __main__.Net, __main__.Head: the classes were defined in the script that saved the model",
        ),
        (
            ["--trust-pickle"],
            "cannot unpickle __main__.Net, __main__.Head even with --trust-pickle",
        ),
    ],
)
def test_without_a_module_the_refusal_says_what_happened_and_how_out(
    args: list[str], says: str, user: UserFolder
) -> None:
    result = run_cli(["serve", "model.pt", *args], env=NO_USER_PATH, cwd=user.folder)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if says in line]
    assert "--trust-module netdef" in line
    assert "torch.export, TorchScript or a state_dict" in line


def test_a_two_input_model_served_with_flags_only(user: UserFolder, tmp_path: Path) -> None:
    assert not list(user.folder.glob("pair.example.*"))  # nothing but the flags says the shapes
    args = [str(user.folder / "pair.pt"), "--trust-module", "netdef", "--input-shape", "a=6", "b=3,4"]  # fmt: skip
    a, b = user.expected["a"], user.expected["b"]
    with running_ptserve(args, tmp_path / "log", NO_USER_PATH) as server:
        got = predict(
            server.base_url, [{"a": x.tolist(), "b": y.tolist()} for x, y in zip(a, b, strict=True)]
        )
        metadata = httpx.get(f"{server.base_url}/models/pair", timeout=hang_guard(REQUEST_S))
    np.testing.assert_allclose(got, user.expected["pair"], rtol=1e-5, atol=1e-6)
    inputs = metadata.json()["signature"]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [("a", [6]), ("b", [3, 4])]


def test_shape_and_name_counts_that_disagree_stop_at_once(user: UserFolder) -> None:
    args = ["serve", "pair.pt", "--trust-module", "netdef", "--input-names", "a", "b"]
    result = run_cli([*args, "--input-shape", "6"], cwd=user.folder)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "2 input names (a, b) but one input shape; give a shape per input, e.g. --input-shape "
        "a=DIMS b=DIMS\n"
    )
    without_shapes = run_cli(args[:4], cwd=user.folder)
    assert without_shapes.returncode != 0
    assert (
        "forward takes 2 inputs (a, b): give a shape per input with --input-shape a=DIMS b=DIMS"
        in (without_shapes.output)
    )


def stderr_of(args: list[str], terminal: bool) -> str:
    """What ``ptserve ARGS`` writes to stderr, a pseudo-terminal or a pipe, until it exits."""
    leader, follower = pty.openpty() if terminal else os.pipe()
    process = subprocess.Popen(
        [*PTSERVE, *args], cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=follower, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + hang_guard(COMMAND_S)
    try:
        while select.select([leader], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if not (chunk := _read(leader)):
                break
            chunks.append(chunk)
        else:
            pytest.fail(f"ptserve {' '.join(args)} still running: {b''.join(chunks)!r}")
        process.wait(timeout=hang_guard(COMMAND_S))
    finally:
        stop_process(process)
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # a pseudo-terminal whose other end closed
        return b""


def test_logs_are_text_on_a_terminal_and_json_in_a_pipe(tmp_path: Path) -> None:
    args = ["serve", str(tmp_path / "missing.pt")]
    on_terminal = stderr_of(args, terminal=True)
    in_pipe = stderr_of(args, terminal=False)
    assert (
        f"ERROR:    ptserve: cannot serve the model: {tmp_path}/missing.pt: no such" in on_terminal
    )
    assert '{"' not in on_terminal
    assert '"level":"error"' in in_pipe
    assert "no such model file" in in_pipe
    forced = stderr_of([*args, "--log-format", "json"], terminal=True)
    assert '"level":"error"' in forced  # --log-format wins over the guess
