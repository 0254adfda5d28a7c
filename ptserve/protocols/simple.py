"""The simple protocol: ``POST /predict`` and its KServe V1 twin ``/v1/models/{name}:predict``.

These are plain Starlette routes on the hot path: the raw body is read once and validated by
the signature's Pydantic model in pydantic-core; the reply is pre-serialised orjson bytes.
Their OpenAPI description is added by ``ptserve.protocols.docs``.
"""

from fastapi import FastAPI, Request, Response

from ptserve.errors import EmptyBody, UnsupportedMediaType
from ptserve.protocols.common import add_hot_route, cancelled_on_disconnect, request_timeout
from ptserve.service import InferenceService

JSON_TYPES = ("application/json", "text/json")


def install(app: FastAPI) -> None:
    add_hot_route(app, "/predict", predict)
    add_hot_route(app, "/v1/models/{name}:predict", predict)
    app.add_api_route("/v1/models/{name}", v1_model, methods=["GET"], tags=["KServe V1"])


async def predict(request: Request) -> Response:
    service = _service(request)
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {media!r} is not supported; send JSON with "
            "'Content-Type: application/json'"
        )
    timeout = request_timeout(request, service.settings.timeout_ms)
    with service.arrival():
        body = await request.body()
        if not body.strip():
            raise EmptyBody('the request body is empty; send {"instances": [...]}')
        decoded = service.decode(body)
    async with cancelled_on_disconnect(request, watch=service.batcher.will_wait()):
        outputs = await service.infer(decoded.arrays, timeout)
    return Response(service.encode(decoded, outputs), media_type="application/json")


async def v1_model(name: str, request: Request) -> dict[str, object]:
    """KServe V1 model status."""
    service = _service(request)
    return {"name": service.name, "ready": True}


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.runtime.serving(request.path_params.get("name"))
    return service
