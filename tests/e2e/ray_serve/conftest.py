"""One local Ray cluster for all the Ray Serve tests (Ray takes seconds to start).

2 CPUs, no dashboard, loopback only, its files in a fresh directory under the system temp dir;
the Serve proxy on a free loopback port. It lives in the test process as the cluster's driver
for the tests of this package only: at their end Serve and Ray are shut down, every process
the cluster started must be gone, and what Ray changed in the test process (signal handlers,
``print``) must be as before, so that the rest of the suite runs as without Ray.
"""

import builtins
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ptserve.settings import Settings
from tests.e2e.conftest import free_port
from tests.e2e.ray_serve import processes

# Before Ray is first imported (its constants read the environment at import time). A driver
# that forwards its workers' logs also replaces builtins.print unless told not to (fastai then
# pickled Ray's print into a Learner exported later in the session).
for _name, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_TQDM_PATCH_PRINT": "0",
}.items():
    os.environ.setdefault(_name, _value)
pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'ptserve[ray]'")

# For the cluster's processes only: the proxy reports its queue to the autoscaler every second
# instead of every 10 s, so the autoscaling test waits less (what it decides is unchanged).
CLUSTER_ENV = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}
DEPLOY_TIMEOUT_S = 180.0  # hang guard for a deployment on a loaded 2-core machine
STOP_TIMEOUT_S = 60.0


@dataclass
class RayCluster:
    """The session's cluster: the proxy's URL, and helpers to deploy and watch ptserve on it."""

    url: str
    temp_dir: Path
    gate: Path  # tests.nets.FileGatedNet in a replica holds a batch until this file exists

    def deploy(self, settings: Settings) -> None:
        """Deploy (or update to) ``settings`` as the app ``ptserve`` and wait until it runs."""
        from ray import serve

        from ptserve.integrations import ray_app

        serve.run(ray_app.build(settings), name=ray_app.APP_NAME, route_prefix="/")

    def delete(self) -> None:
        from ray import serve

        serve.delete("ptserve")

    def replica_states(self) -> dict[str, int]:
        """How many replicas of the deployment are in each state (RUNNING, STARTING, ...)."""
        from ray import serve

        application = serve.status().applications.get("ptserve")
        if application is None or "ptserve" not in application.deployments:
            return {}
        states: dict[str, int] = {
            str(getattr(state, "value", state)): count
            for state, count in application.deployments["ptserve"].replica_states.items()
        }
        return states

    def replica_pids(self) -> set[int]:
        return processes.replicas(os.getpid())

    def logs(self, name: str = "*") -> str:
        """What the cluster's processes logged so far, to the files called ``name``."""
        folder = self.temp_dir / "session_latest" / "logs"
        return "".join(p.read_text(errors="replace") for p in folder.rglob(name) if p.is_file())

    def wait_running(self, replicas: int, timeout: float = DEPLOY_TIMEOUT_S) -> None:
        """Poll until exactly ``replicas`` replicas run and no other is starting or stopping,
        and as many replica processes exist; fail after ``timeout`` (a hang guard)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replica_states() == {"RUNNING": replicas} and (
                len(self.replica_pids()) == replicas
            ):
                return
            time.sleep(0.2)
        pytest.fail(f"not {replicas} running replicas after {timeout}s: {self.replica_states()}")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[RayCluster]:
    import ray
    from ray import serve

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    original_print = builtins.print

    # Short: Ray's Unix socket paths live under it and must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ptr-", dir=tempfile.gettempdir()))
    gate = temp_dir / "gate"
    environment = {**CLUSTER_ENV, "TEST_GATE_FILE": str(gate)}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=str(temp_dir),
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RayCluster(f"http://127.0.0.1:{port}", temp_dir, gate)
    finally:
        started = {
            (pid, start)
            for pid, start in processes.descendants(os.getpid())
            if "ray" in processes.command_line(pid)
        }
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for sig, handler in handlers.items():  # ray.init installs a SIGTERM handler of its own
            signal.signal(sig, handler)
        left = processes.wait_gone(started, STOP_TIMEOUT_S)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, (
            f"Ray processes left running: {[processes.command_line(p) for p, _ in left]}"
        )
        assert builtins.print is original_print
