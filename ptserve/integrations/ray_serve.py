"""``ptserve ray``: the app as a Ray Serve application, in the foreground until SIGINT/SIGTERM.

It joins the cluster at ``--address`` (or ``RAY_ADDRESS``), or starts a local one (no
dashboard, its files in a fresh temporary directory) that lives as long as the command. On
SIGINT or SIGTERM it stops what it started: Serve shuts its replicas down gracefully (each
drains, then its lifespan ends), then the local cluster stops and its directory is removed;
on a cluster it joined, only the application is deleted. A second signal skips the graceful
part. Ray is imported only here, when the command runs.
"""

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from types import FrameType, ModuleType

from ptserve.observability.logs import setup_logging
from ptserve.settings import Settings

log = logging.getLogger("ptserve")
# Set before Ray is imported (unless the caller chose otherwise): no token auth for a local
# cluster, no usage reports, no refusal on macOS.
RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
USAGE = 2
NOT_STARTED = 3  # as `ptserve serve` exits when the model cannot load


class RayCommandError(Exception):
    """The command cannot go on; the message is for the user, ``exit_code`` for the shell."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stop(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, so that no ``except Exception`` in Ray's
    code swallows it)."""


def run(settings: Settings, print_config: bool = False) -> None:
    """Serve ``settings`` on Ray Serve until stopped, or write its Ray Serve config."""
    ray_app = import_ray_app()
    if print_config:
        sys.stdout.write(ray_app.serve_config_yaml(settings))
        return
    setup_logging(settings.log_level, settings.log_format)
    import ray

    address = settings.ray.address or os.environ.get("RAY_ADDRESS") or None
    temp_dir = None if address else tempfile.mkdtemp(prefix="ptserve-ray-")
    try:
        if temp_dir is None:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(address="local", include_dashboard=False, _temp_dir=temp_dir)
        _stop_on_signals()  # after ray.init, which installs a SIGTERM handler of its own
        with contextlib.suppress(Stop):  # a second signal: stop at once
            _serve(settings, ray_app, owns_serve=temp_dir is not None)
    except Stop:  # before Serve started
        log.info("stopped")
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _serve(settings: Settings, ray_app: ModuleType, owns_serve: bool) -> None:
    """Deploy, wait for a signal, then take down what was deployed."""
    from ray import serve

    serve.start(
        http_options={"host": settings.host, "port": settings.port},
        logging_config=ray_app.logging_config(settings),
    )
    try:
        try:
            serve.run(ray_app.build(settings), name=ray_app.APP_NAME, route_prefix="/")
        except RuntimeError as exc:
            raise RayCommandError(
                f"the application did not start on Ray Serve: {exc} "
                "(the replicas' log lines above say why)",
                NOT_STARTED,
            ) from None
        log.info(
            "serving %s on Ray Serve (%s) %s; Ctrl-C stops",
            settings.model_name,
            _replicas(settings),
            f"at http://{settings.host}:{settings.port}"
            if owns_serve
            else "on the cluster's Serve proxies",
        )
        log.info("Ray's own metrics (ray_serve_*, labelled by replica): %s", _metrics_urls())
        while True:
            time.sleep(3600)
    except Stop as stop:
        log.info("received %s: stopping the replicas (they drain first)", stop)
    finally:
        if owns_serve:
            serve.shutdown()  # type: ignore[no-untyped-call]
        else:
            serve.delete(ray_app.APP_NAME)


def _replicas(settings: Settings) -> str:
    ray = settings.ray
    if ray.autoscaling:
        least = 1 if ray.min_replicas is None else ray.min_replicas
        return f"{least} to {ray.max_replicas} replicas, autoscaling"
    return f"{ray.num_replicas or 1} replica(s)"


def _metrics_urls() -> str:
    """Where each node of the cluster exports Ray's metrics, Serve's included."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    return ", ".join(
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics" for node in nodes
    )


def import_ray_app() -> ModuleType:
    """``ptserve.integrations.ray_app``, imported with Ray's environment set; a clear error when
    Ray is not installed."""
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        from ptserve.integrations import ray_app
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise RayCommandError(
            "`ptserve ray` needs Ray Serve: pip install 'ptserve[ray]'", USAGE
        ) from None
    return ray_app


def _stop_on_signals() -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
