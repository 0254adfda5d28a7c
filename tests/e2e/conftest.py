"""End-to-end helpers: real ptserve processes on a free loopback port, always stopped.

Every process is started in its own session so that stopping it (SIGINT to the process
group, then SIGKILL after a grace period) also stops anything it spawned. SIGINT, as Ctrl-C
would: it drains without SIGTERM's delay for load balancers (tests of that send SIGTERM). Readiness is
polled on ``GET /health/ready``; a process that exits while we wait fails the test at once.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artefacts import Artefact, build_all
from tests.guards import COMMAND_S, SERVER_START_S, hang_guard

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: not a failure, only how soon to insist
PTSERVE = (sys.executable, "-m", "ptserve")


@dataclass
class Server:
    """A running server process and where to reach it."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


@dataclass
class CliResult:
    """A finished command: exit status and its stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without stray PTSERVE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTSERVE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def settings_flags(settings: Mapping[str, Any]) -> list[str]:
    """CLI flags for an artefact's settings dict (``trust_modules`` is ``--trust-module``)."""
    flags: list[str] = []
    for key, value in settings.items():
        if key == "trust_modules":
            for module in value:
                flags += ["--trust-module", module]
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGINT the process group, then SIGKILL it if it outlives the grace period."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_GRACE_S)


def wait_ready(server: Server, timeout: float | None = None) -> None:
    """Poll ``/health/ready`` until 200; fail fast if the process exits, bounded by ``timeout``
    (default: a hang guard for a server's start-up, stretched when the machine is busy)."""
    timeout = timeout or hang_guard(SERVER_START_S)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                pytest.fail(f"server exited with {code} before ready:\n{server.log()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health/ready").status_code == 200:
                    return
            time.sleep(0.05)  # poll interval, not a wait for readiness
    pytest.fail(f"server not ready after {timeout:.0f}s:\n{server.log()}")


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Iterator[Server]:
    """Start ``argv`` in ``cwd`` (the repo root), wait until it is ready on ``port``, stop it
    on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_process(process)


@contextlib.contextmanager
def running_ptserve(
    args: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Iterator[Server]:
    """``python -m ptserve serve ARGS`` on a free loopback port."""
    port = free_port()
    argv = [*PTSERVE, "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    with running(argv, port, log_path, env, cwd) as server:
        yield server


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path = REPO_ROOT,
) -> CliResult:
    """Run ``python -m ptserve ARGS`` in ``cwd`` to completion, killing its group if it
    overruns ``timeout`` (default: a hang guard, stretched when the machine is busy)."""
    timeout = timeout or hang_guard(COMMAND_S)
    process = subprocess.Popen(
        [*PTSERVE, *args],
        cwd=cwd,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        out, err = process.communicate()
        pytest.fail(f"ptserve {' '.join(args)} still running after {timeout:.0f}s:\n{out!r}{err!r}")
    finally:
        stop_process(process)
    return CliResult(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artefact]:
    """TinyNet saved in every format, with the settings that serve it and expected outputs."""
    return build_all(tmp_path_factory.mktemp("artefacts"))
