"""Start a server in its own process group, wait until it answers, stop the whole group."""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import REPO_ROOT
from bench.procstats import group_pids

POLL_INTERVAL_S = 0.02


class ServerStartError(RuntimeError):
    """The server exited or did not answer 200 in time; the message carries its log tail."""


@dataclass
class ServerProcess:
    """A running server: its process (the group leader), port and log file."""

    popen: "subprocess.Popen[bytes]"
    port: int
    log_path: Path
    started_at: float

    @property
    def pgid(self) -> int:
        """The process group id, equal to the leader's pid (started with a new session)."""
        return self.popen.pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(command: list[str], port: int, log_path: Path) -> ServerProcess:
    """Start ``command`` in a new session, output to ``log_path``, cwd the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        started_at = time.monotonic()
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(popen=popen, port=port, log_path=log_path, started_at=started_at)


def post(
    port: int, path: str, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST a body (JSON unless ``headers`` say otherwise) to 127.0.0.1:port; return (status,
    response body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        sent = headers or {"Content-Type": "application/json"}
        conn.request("POST", path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_serving(
    server: ServerProcess,
    path: str,
    body: bytes,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> tuple[float, bytes]:
    """Poll the predict endpoint until it answers 200; return (cold start seconds, body).

    Cold start runs from just before the process was spawned to the first 200.
    """
    deadline = server.started_at + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        code = server.popen.poll()
        if code is not None:
            raise ServerStartError(f"exited with code {code}: {log_tail(server.log_path)}")
        try:
            status, payload = post(server.port, path, body, timeout_s=2.0, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return time.monotonic() - server.started_at, payload
            last = f"HTTP {status}: {payload[:200]!r}"
        time.sleep(POLL_INTERVAL_S)
    raise ServerStartError(
        f"no 200 within {timeout_s:.0f} s (last: {last}): {log_tail(server.log_path)}"
    )


def stop_server(server: ServerProcess, timeout_s: float, leader_only: bool = False) -> bool:
    """SIGINT the whole process group (as Ctrl-C: ptserve drains without the delay SIGTERM
    gives load balancers), or SIGTERM only its leader (for a server that stops its own
    children in order); SIGKILL what is left after ``timeout_s``.

    Returns True when the group ended on SIGINT alone.
    """
    if leader_only:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pgid, signal.SIGTERM)
    else:
        _signal_group(server.pgid, signal.SIGINT)
    graceful = _wait_group_gone(server, timeout_s)
    if not graceful:
        _signal_group(server.pgid, signal.SIGKILL)
        for pid in group_pids(server.pgid):  # children in process groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_group_gone(server, 5.0)
    if server.popen.poll() is None:
        server.popen.wait(timeout=5.0)
    return graceful


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_gone(server: ServerProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.popen.poll()  # reap the leader so it does not linger as a zombie
        if not group_pids(server.pgid):
            return True
        time.sleep(POLL_INTERVAL_S)
    return False


def log_tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` characters of a log file (empty if it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()
