"""``ptserve ray`` as a real command: it starts a local Ray cluster, serves through Ray's proxy,
and on SIGINT (Ctrl-C in a terminal signals the whole process group) or SIGTERM (what a process
manager sends the command) stops everything it started: no process of its session is left,
its Ray directory is gone, and nothing was written to $HOME."""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_digits

from tests.e2e.conftest import PTSERVE, REPO_ROOT, Server, child_env, free_port, wait_ready
from tests.e2e.ray_serve import processes
from tests.e2e.ray_serve.conftest import DEPLOY_TIMEOUT_S, STOP_TIMEOUT_S


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory for $HOME and $TMPDIR. Short, under the system temp dir: Ray's Unix
    socket paths are made below $TMPDIR and must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ptc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def kill_session(sid: int) -> None:
    """Clean up after a failed test: SIGKILL whatever is left of the session."""
    for pid, _ in processes.session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT-to-the-process-group", "SIGTERM-to-the-command"],
)
def test_ptserve_ray_stops_everything_it_started(
    scratch: Path, sig: signal.Signals, to_group: bool
) -> None:
    home, tmp = scratch / "home", scratch / "tmp"
    home.mkdir()
    tmp.mkdir()
    port = free_port()
    log_path = scratch / "ptserve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*PTSERVE, "ray", "--host", "127.0.0.1", "--port", str(port), "--log-format", "text"],
            cwd=REPO_ROOT,
            env=child_env({"HOME": str(home), "TMPDIR": str(tmp)}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(server, timeout=DEPLOY_TIMEOUT_S)
        digit = load_digits().data[:1].tolist()
        response = httpx.post(f"{server.base_url}/predict", json={"instances": digit}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "0"
        started = processes.session(process.pid)
        titles = [processes.command_line(pid) for pid, _ in started]
        assert any(title.startswith("ray::ServeReplica:ptserve:ptserve") for title in titles)
        assert any("gcs_server" in title for title in titles), titles
        (ray_dir,) = tmp.iterdir()
        assert ray_dir.name.startswith("ptserve-ray-")

        if to_group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, server.log()
        left = processes.wait_gone(started, STOP_TIMEOUT_S) | processes.session(process.pid)
        assert not left, [processes.command_line(pid) for pid, _ in left]
        assert list(tmp.iterdir()) == []  # the cluster's directory (logs, sockets) is removed
        assert list(home.iterdir()) == []
        assert f"received {sig.name}: stopping the replicas" in server.log()
    finally:
        kill_session(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
