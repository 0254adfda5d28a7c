"""Health and model metadata: /health/live, /health/ready, /models, /models/{name}."""

from typing import Any

from fastapi import APIRouter, Request, Response

from ptserve.protocols.schemas import error_responses

router = APIRouter(tags=["service"])


@router.get("/health/live", responses=error_responses({503: "The batch loop stopped"}))
async def live(request: Request) -> dict[str, str]:
    """The process is up and can make progress: 503 if its batch loop has stopped (a restart
    is the cure)."""
    request.app.state.runtime.check_live()
    return {"status": "alive"}


@router.get("/health/ready", responses=error_responses({503: "Loading or draining"}))
async def ready(request: Request) -> dict[str, str]:
    """The model is loaded and warmed up; 503 otherwise."""
    runtime = request.app.state.runtime
    runtime.check_ready()
    runtime.check_live()
    return {"status": "ready"}


@router.get("/models", responses=error_responses({503: "Not ready"}))
async def models(request: Request) -> dict[str, Any]:
    """Every model this server serves, with its metadata."""
    runtime = request.app.state.runtime
    service = runtime.serving()
    return {"models": [{**service.describe(), "loads": runtime.loads}]}


@router.get(
    "/models/{name}",
    responses=error_responses({404: "Unknown model", 422: "Invalid name", 503: "Not ready"}),
)
async def model(name: str, request: Request) -> dict[str, Any]:
    """One model's format, signature, labels, sha256, and how many times it was loaded."""
    runtime = request.app.state.runtime
    service = runtime.serving(name)
    return {**service.describe(), "loads": runtime.loads}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, text exposition format (every worker's, with --workers N)."""
    body, content_type = request.app.state.runtime.metrics.render()
    return Response(body, media_type=content_type)
