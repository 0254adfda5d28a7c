"""The Open Inference Protocol's model repository extension, as Triton and KServe speak it:
list the repository, load and unload models while the server runs (``ptserve.lifecycle`` does
the work).

- ``POST /v2/repository/index``: every model and version with its state (READY, LOADING,
  UNLOADING, UNAVAILABLE) and why it is not ready; ``{"ready": true}`` lists ready ones only.
- ``POST /v2/repository/models/NAME/load``: bring NAME in line with its folder now: new or
  changed versions load beside the serving ones and are swapped in; failed ones are retried.
- ``POST /v2/repository/models/NAME/unload``: stop serving NAME; its versions finish the
  requests they accepted first. ``--watch`` leaves it unloaded until it is loaded again.

Like every other path (health and metrics aside), these need an API key when keys are on.
"""

from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from ptserve.errors import ControlUnavailable, InvalidInput, InvalidJSON, LoadFailed
from ptserve.lifecycle import Lifecycle
from ptserve.protocols.schemas import error_responses
from ptserve.repository_index import index_rows

M = TypeVar("M", bound=BaseModel)
TAG = "Open Inference Protocol (V2): model repository"
CONTROL_ERRORS = error_responses(
    {
        400: "A body that is not JSON, or the model failed to load (what served before still "
        "serves)",
        404: "No such model",
        409: "Several workers: load and unload would reach only one",
        422: "An invalid body",
        503: "Not ready",
    }
)


class IndexRequest(BaseModel):
    """The index request's optional body."""

    model_config = ConfigDict(extra="forbid")
    ready: bool = False


class ControlRequest(BaseModel):
    """A load or unload request's optional body (Triton's ``unload_dependents`` is accepted:
    ptserve has no ensembles, so there are no dependents)."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] | None = None


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


router = APIRouter(prefix="/v2/repository", tags=[TAG])


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": {**schema, "required": False}}


@router.post(
    "/index",
    responses=error_responses(
        {400: "A body that is not JSON", 422: "An invalid body", 503: "Not ready"}
    ),
    openapi_extra=_body_schema(IndexRequest),
)
async def index(request: Request) -> list[IndexEntry]:
    """Every model and version the repository holds or the server serves, with its state."""
    body = await _read(request, IndexRequest)
    lifecycle = _lifecycle(request)
    await lifecycle.rescan()
    entries = [IndexEntry(**entry) for entry in index_rows(lifecycle)]
    return [e for e in entries if e.state == "READY"] if body.ready else entries


@router.post(
    "/models/{name}/load", responses=CONTROL_ERRORS, openapi_extra=_body_schema(ControlRequest)
)
async def load(name: str, request: Request) -> dict[str, Any]:
    """Load model NAME as its folder holds it now, beside what serves, then swap it in."""
    body = await _read(request, ControlRequest)
    if body.parameters:
        raise InvalidInput(
            f"load parameters are not supported ({', '.join(map(repr, body.parameters))}): "
            "ptserve reads each model's settings from its folder (NAME/ptserve.toml)"
        )
    lifecycle = _control(request)
    failures = await lifecycle.load(name)
    versions = lifecycle.registry.versions(name)
    if failures:
        serving = f"it serves version(s) {', '.join(versions)}" if versions else "none serves"
        raise LoadFailed(f"model {name!r}: {failures[0]}; {serving}")
    return {"name": name, "versions": versions}


@router.post(
    "/models/{name}/unload", responses=CONTROL_ERRORS, openapi_extra=_body_schema(ControlRequest)
)
async def unload(name: str, request: Request) -> dict[str, Any]:
    """Stop serving model NAME once its versions have finished the requests they accepted."""
    await _read(request, ControlRequest)
    await _control(request).unload(name)
    return {"name": name, "versions": []}


async def _read(request: Request, model: type[M]) -> M:
    """The optional JSON body (clients send none, ``{}`` or parameters)."""
    raw = await request.body()
    try:
        return model.model_validate(orjson.loads(raw) if raw.strip() else {})
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not JSON ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None


def _lifecycle(request: Request) -> Lifecycle:
    runtime = request.app.state.runtime
    runtime.check_loaded()
    lifecycle: Lifecycle = runtime.lifecycle
    return lifecycle


def _control(request: Request) -> Lifecycle:
    lifecycle = _lifecycle(request)
    workers = lifecycle.settings.workers
    if workers > 1:
        raise ControlUnavailable(
            f"this server runs {workers} worker processes and a request reaches one of them: "
            "load and unload would change only that one. Use --watch (each worker watches the "
            "folder), or restart the server"
        )
    return lifecycle
