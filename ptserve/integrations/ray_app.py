"""ptserve as a Ray Serve application: one deployment whose replicas each run the whole app.

Each replica rebuilds the settings from plain data and calls ``create_app`` itself (the app is
bound late, in the replica: nothing unpicklable travels), so the model loads once per replica,
in the app's own lifespan, which Ray runs. ``build`` is the application builder that both
``ptserve ray`` and a ``serve deploy`` config (``serve_config``) use.
"""

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import ray
import yaml
from prometheus_client import CollectorRegistry, Gauge
from ray import serve
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.app import create_app
from ptserve.errors import NotReady
from ptserve.observability.logs import setup_logging
from ptserve.runtime import Runtime
from ptserve.settings import Settings

log = logging.getLogger("ptserve")
APP_NAME = "ptserve"
DEPLOYMENT_NAME = "ptserve"
BUILDER = "ptserve.integrations.ray_app:build"
# Settings that describe the driver, not a replica: where the proxy listens, Ray's own options,
# the config file (already read into the settings), workers (a replica is one process).
DRIVER_ONLY = {"config", "host", "port", "workers", "ray"}
PATHS = ("model_path", "labels", "example_input", "api_key_file")


def build(settings: Settings) -> Application:
    """The Ray Serve application for ``settings`` (the ``import_path`` of ``serve_config``:
    Ray validates the config's ``args`` into Settings and calls this)."""
    deployment = PtserveDeployment.options(**deployment_options(settings))
    return deployment.bind(replica_settings(settings))


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Ray's options for the deployment: replicas or autoscaling, resources, and what follows
    from ptserve's settings (a replica takes enough requests at once to fill its batches; Ray
    waits as long as ptserve's drain before it kills a stopping replica)."""
    options = settings.ray
    found: dict[str, Any] = {
        "max_ongoing_requests": options.max_ongoing_requests or 2 * settings.max_batch_size,
        "ray_actor_options": {"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
        "logging_config": logging_config(settings),
    }
    if options.autoscaling:
        scaling = {
            "min_replicas": 1 if options.min_replicas is None else options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests or settings.max_batch_size,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
        }
        found["autoscaling_config"] = {k: v for k, v in scaling.items() if v is not None}
    elif options.num_replicas is not None:
        found["num_replicas"] = options.num_replicas
    return found


def logging_config(settings: Settings) -> dict[str, Any]:
    """Ray Serve's own logs (its proxy's and replicas' lines) at ptserve's level, and its access
    log (a line per request from the proxy and one from the replica) only with ptserve's."""
    return {"log_level": settings.log_level.upper(), "enable_access_log": settings.access_log}


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The settings a replica needs, as JSON-able data: what was set (CLI, environment, config
    file), paths made absolute (a replica's working directory is not the caller's)."""
    data = settings.model_dump(mode="json", exclude_unset=True, exclude=DRIVER_ONLY)
    for name in PATHS:
        if data.get(name) is not None:
            data[name] = str(Path(data[name]).resolve())
    if str(data.get("handler", "")).endswith(".py"):
        data["handler"] = str(Path(data["handler"]).resolve())
    return data


def serve_config(settings: Settings) -> dict[str, Any]:
    """The Ray Serve config (``serve deploy FILE``, or a RayService's ``serveConfigV2``) that
    runs the same application as ``ptserve ray`` with these settings."""
    options = deployment_options(settings)
    if not settings.ray.autoscaling:
        options = {"num_replicas": settings.ray.num_replicas or 1, **options}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "logging_config": logging_config(settings),
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": BUILDER,
                "args": replica_settings(settings),
                "deployments": [{"name": DEPLOYMENT_NAME, **options}],
            }
        ],
    }


def serve_config_yaml(settings: Settings) -> str:
    """``serve_config`` as YAML, checked against Ray's own schema first."""
    config = serve_config(settings)
    ServeDeploySchema.model_validate(config)
    header = (
        f"# Ray Serve config written by `ptserve ray --print-config` (Ray {ray.__version__}).\n"
        "# Deploy with `serve deploy FILE`. Every node needs ptserve[ray] installed and the\n"
        "# files named below at these paths.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def torch_threads(cpus: float) -> int:
    """Torch threads for a replica given ``cpus``: one core is left to its event loop, as
    ``ptserve serve`` leaves one per worker."""
    return max(1, math.floor(cpus) - 1)


# Decorated in place: Ray's wrapper takes this class's name, so it pickles by reference.
@serve.ingress()
class _Replica:
    """One replica: builds the app from the settings when Ray asks for it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = Settings.model_validate(settings)
        setup_logging(self._settings.log_level, self._settings.log_format)
        assigned = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
        cpus = assigned.get("CPU", 0.0)
        if self._settings.torch_threads is None:
            update = {"torch_threads": torch_threads(cpus)}
            self._settings = self._settings.model_copy(update=update)
        log.info(
            "Ray Serve replica: %g CPU(s), %d torch thread(s)", cpus, self._settings.torch_threads
        )
        self._ptserve: ASGIApp | None = None

    def __serve_build_asgi_app__(self) -> ASGIApp:
        app = create_app(self._settings)
        # /metrics through Ray's proxy answers from one replica: this says which.
        context = serve.get_replica_context()
        replica = Gauge(
            "ptserve_ray_replica",
            "The Ray Serve replica that answered (value 1)",
            ["application", "deployment", "replica"],
            registry=registry(runtime(app)),
        )
        replica.labels(context.app_name, context.deployment, context.replica_id.unique_id).set(1)
        self._ptserve = app
        return OneRequestId(app)

    async def check_health(self) -> None:
        """Ray's health check: a replica that fails it is replaced."""
        assert self._ptserve is not None
        problem = health_problem(runtime(self._ptserve))
        if problem is not None:
            raise RuntimeError(problem)


class PtserveReplica(_Replica):
    """The ingress class: the app is built in the replica (``__serve_build_asgi_app__``)."""

    async def __del__(self) -> None:
        """Ray stops a replica (scale-down, update, shutdown) by draining its requests and then
        calling this: ptserve's drain runs first, then the app's lifespan shuts down."""
        if self._ptserve is not None:
            await drain(runtime(self._ptserve), self._settings.drain_timeout_s)
        await super().__del__()  # type: ignore[misc]  # defined by Ray's ingress wrapper


PtserveDeployment = serve.deployment(name=DEPLOYMENT_NAME)(PtserveReplica)


class OneRequestId:
    """Ray's proxy puts ``X-Request-ID`` on every response, with the id it gave the request,
    which ptserve echoes: ptserve's copy is dropped so that the header appears once. Other
    attributes are the app's (Ray reads the routes, and adds exception handlers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_once)


# What the integration reads from the app: its runtime's readiness, liveness, drain flag and
# metrics registry. Kept together here, as the one place to follow a change to Runtime.


def runtime(app: ASGIApp) -> Runtime:
    found: Runtime = app.state.runtime  # type: ignore[attr-defined]
    return found


def registry(state: Runtime) -> CollectorRegistry:
    """The app's Prometheus registry (what its /metrics renders)."""
    return state.metrics.registry


def health_problem(state: Runtime) -> str | None:
    """Why the replica should be replaced (a crashed batch loop, a model not loaded), or None."""
    if not state.ready and not state.draining:
        return "the model is not loaded"
    try:
        state.check_live()
    except NotReady as exc:
        return str(exc)
    return None


async def drain(state: Runtime, timeout: float) -> None:
    """Turn readiness off and wait (up to ``timeout``) until accepted work is done."""
    log.info("Ray Serve is stopping this replica: draining (up to %.1fs)", timeout)
    state.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.busy() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if state.busy():
        log.warning("drain timeout (%.1fs) passed with work still running", timeout)
