"""Start-up that fails fast: a busy port is refused before the model loads, and a stop signal
during start-up (a slow load) ends it at once, with one line and no traceback."""

import os
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import PTSERVE, REPO_ROOT, child_env, free_port, run_cli, stop_process
from tests.e2e.processes import group_alive
from tests.e2e.traffic import wait_for

SLOW_LOAD_S = 120  # the handler's load: far longer than any wait here, so an exit is prompt


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_fails_before_the_model_loads(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", "--port", str(port), "--workers", workers])
    assert result.returncode == 3
    lines = [line for line in result.output.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, result.output
    assert f"127.0.0.1:{port}" in lines[0]
    assert "ddress already in use" in lines[0]
    assert "--port" in lines[0]
    assert "Traceback" not in result.output
    # nothing was started or loaded: no worker, no lifespan, no model
    for later in ("starting 2 workers", "Waiting for application startup", "loaded "):
        assert later not in result.output


def slow_handler(folder: Path) -> Path:
    path = folder / "slow_handler.py"
    path.write_text(
        textwrap.dedent(f"""
        import sys
        import time

        print("slow load begins", file=sys.stderr, flush=True)
        time.sleep({SLOW_LOAD_S})


        def postprocess(outputs):
            return outputs
        """)
    )
    return path


@pytest.mark.parametrize(
    ("workers", "stop"),
    [("1", signal.SIGINT), ("1", signal.SIGTERM), ("2", signal.SIGINT)],
)
def test_a_signal_during_start_up_ends_it_at_once(
    tmp_path: Path, workers: str, stop: signal.Signals
) -> None:
    """SIGINT goes to the whole process group, as a terminal's Ctrl-C does."""
    log_path = tmp_path / "log"
    argv = [*PTSERVE, "serve", "--handler", str(slow_handler(tmp_path)), "--workers", workers,
            "--port", str(free_port()), "--log-format", "text"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for("the slow load", lambda: log_path.read_text().count("slow load") == int(workers))
        if stop == signal.SIGINT:
            os.killpg(process.pid, stop)
        else:
            process.send_signal(stop)
        code = process.wait(timeout=SLOW_LOAD_S / 2)  # a hang guard: the load lasts longer
        wait_for("no process left", lambda: not group_alive(process.pid))
    finally:
        stop_process(process)
    output = log_path.read_text()
    assert code == 128 + stop, output
    assert f"interrupted by {stop.name} during start-up" in output
    assert "Traceback" not in output
    assert "Application startup complete" not in output
