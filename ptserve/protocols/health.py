"""Health and model metadata: /health/live, /health/ready, /models, /models/{name}[/versions/{v}],
/metrics."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from ptserve.protocols.schemas import error_responses
from ptserve.repository_index import index_rows

if TYPE_CHECKING:
    from ptserve.registry import Served
    from ptserve.runtime import Runtime

router = APIRouter(tags=["service"])


@router.get("/health/live", responses=error_responses({503: "The batch loop stopped"}))
async def live(request: Request) -> dict[str, str]:
    """The process is up and can make progress: 503 if its batch loop has stopped (a restart
    is the cure)."""
    request.app.state.runtime.check_live()
    return {"status": "alive"}


@router.get("/health/ready", responses=error_responses({503: "Loading or draining"}))
async def ready(request: Request) -> dict[str, str]:
    """The models are loaded and warmed up; 503 otherwise, and while draining (so load
    balancers stop sending new requests)."""
    request.app.state.runtime.check_ready()
    return {"status": "ready"}


@router.get("/models", responses=error_responses({503: "Not ready"}))
async def models(request: Request) -> dict[str, Any]:
    """Every served model version (the default model first, highest versions first), with its
    metadata; ``unavailable``: models in the repository that serve no version, and why."""
    runtime = request.app.state.runtime
    runtime.check_loaded()
    served = runtime.models.names()
    return {
        "models": [_entry(runtime, s) for s in runtime.models.all()],
        "unavailable": [r for r in _unavailable(runtime) if r["name"] not in served],
    }


@router.get(
    "/models/{name}",
    responses=error_responses({404: "Unknown model", 422: "Invalid name", 503: "Not ready"}),
)
async def model(name: str, request: Request) -> dict[str, Any]:
    """One model's metadata (at its highest served version): format, signature, labels,
    sha256, its served versions, how many times it was loaded, and its versions that are not
    served with why."""
    runtime = request.app.state.runtime
    return _entry(runtime, runtime.serving(name))


@router.get(
    "/models/{name}/versions/{version}",
    responses=error_responses({404: "Unknown model or version", 503: "Not ready"}),
)
async def model_version(name: str, version: str, request: Request) -> dict[str, Any]:
    """One model version's metadata."""
    runtime = request.app.state.runtime
    return _entry(runtime, runtime.serving(name, version))


def _entry(runtime: "Runtime", served: "Served") -> dict[str, Any]:
    name = served.service.name
    lifecycle = runtime.lifecycle
    return {
        **served.service.describe(),
        "versions": runtime.models.versions(name),
        "default": name == runtime.models.default,
        "loads": lifecycle.loads.get(name, 0) if lifecycle is not None else runtime.loads,
        "unavailable": [r for r in _unavailable(runtime) if r["name"] == name],
    }


def _unavailable(runtime: "Runtime") -> list[dict[str, str]]:
    """The repository index's rows that are not ready."""
    lifecycle = runtime.lifecycle
    rows = index_rows(lifecycle) if lifecycle is not None else []
    return [row for row in rows if row["state"] != "READY"]


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, text exposition format (every worker's, with --workers N)."""
    body, content_type = request.app.state.runtime.metrics.render()
    return Response(body, media_type=content_type)
