"""Run a ptserve server in a child process for as long as a ``with`` block lasts (scripts,
notebooks, examples): ``with launched("model.pt") as url: ...``."""

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


@contextlib.contextmanager
def launched(*args: str, timeout: float = 600.0) -> Iterator[str]:
    """``ptserve serve ARGS`` on a free loopback port; yields its base URL once it is ready and
    stops it when the block ends (SIGINT, as Ctrl-C: a drain without the delay a server
    behind a load balancer needs). ``timeout`` only guards against a hang: a busy machine can
    take minutes to import torch and fastai and load a model."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ptserve", "serve", *args, "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=url, timeout=5) as client:
            while not _ready(client):
                if server.poll() is not None:
                    raise RuntimeError(
                        f"ptserve exited with {server.returncode} before it was ready"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ptserve was not ready within {timeout:.0f} s")
                time.sleep(0.1)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/health/ready").status_code == 200
    except httpx.TransportError:
        return False
