"""``ptserve ray`` as a real command: it starts a local Ray cluster, serves through Ray's proxy,
and on SIGINT (Ctrl-C in a terminal signals the whole process group) or SIGTERM (what a process
manager sends the command) stops everything it started: no process of its session is left,
its Ray directory is gone, and nothing was written to $HOME. Joining a running cluster, it
takes down only its application."""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_digits

from tests.e2e.conftest import PTSERVE, REPO_ROOT, Server, child_env, free_port, wait_ready
from tests.e2e.ray_serve import processes
from tests.e2e.ray_serve.conftest import DEPLOY_TIMEOUT_S, STOP_TIMEOUT_S, RayCluster


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


def test_ptserve_ray_on_a_running_cluster_deletes_only_its_application(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """With --address the command joins the cluster; on SIGINT it deletes its application and
    leaves the cluster and Serve running."""
    import ray
    from ray import serve

    address = ray.get_runtime_context().gcs_address
    log_path = tmp_path / "ptserve.log"
    argv = [*PTSERVE, "ray", "--address", address, "--name", "joined", "--log-format", "text"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Serve already runs there: the application answers on the cluster's proxy (which may
        # still serve an earlier test's application until this one replaces it).
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        with ray_cluster.client() as http:
            while http.get("/v2/models/joined/ready").status_code != 200:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, log_path.read_text()
        assert "ptserve" not in serve.status().applications
        assert ray.is_initialized()  # this session's driver is still connected
    finally:
        kill_session(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
