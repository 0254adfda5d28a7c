"""The simple protocol: ``POST /predict`` and its KServe V1 twin ``/v1/models/{name}:predict``.

These are plain Starlette routes on the hot path: the raw body is read once and validated by
the signature's Pydantic model in pydantic-core; the reply is pre-serialised orjson bytes.
Their OpenAPI description is added by ``ptserve.protocols.docs``. Multipart uploads (images)
take a separate branch; images and user hooks are CPU work, done on a worker thread.
"""

from anyio import to_thread
from fastapi import FastAPI, Request, Response

from ptserve.errors import EmptyBody, UnsupportedMediaType
from ptserve.protocols.common import add_hot_route, cancelled_on_disconnect, header, request_timeout
from ptserve.protocols.schemas import error_responses
from ptserve.protocols.uploads import read_uploads
from ptserve.service import InferenceService
from ptserve.validation import Decoded

JSON_TYPES = ("application/json", "text/json")
MULTIPART = "multipart/form-data"


def install(app: FastAPI) -> None:
    add_hot_route(app, "/predict", predict)
    add_hot_route(app, "/v1/models/{name}:predict", predict)
    app.add_api_route(
        "/v1/models/{name}", v1_model, methods=["GET"], tags=["KServe V1"],
        responses=error_responses({404: "Unknown model", 422: "Invalid name", 503: "Not ready"}),
    )  # fmt: skip


async def predict(request: Request) -> Response:
    service = _service(request)
    content_type = header(request, b"content-type") or "application/json"
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MULTIPART:
        return await predict_uploads(request, service)
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {media!r} is not supported; send JSON with "
            "'Content-Type: application/json'"
            + (", or files as multipart/form-data" if service.takes_uploads else "")
        )
    timeout = request_timeout(request, service.settings.timeout_ms)
    with service.arrival():
        body = await request.body()
        if not body.strip():
            raise EmptyBody('the request body is empty; send {"instances": [...]}')
        if service.decode_off_loop:
            decoded = await to_thread.run_sync(service.decode, body)
        else:
            decoded = service.decode(body)
    return await _answer(request, service, decoded, timeout)


async def predict_uploads(request: Request, service: InferenceService) -> Response:
    """``POST /predict`` with files (``curl -F file=@a.png -F file=@b.png``): one instance each."""
    if not service.takes_uploads:
        raise UnsupportedMediaType(
            "this model does not take file uploads; send JSON with 'Content-Type: application/json'"
        )
    timeout = request_timeout(request, service.settings.timeout_ms)
    with service.arrival():
        files, top_k = await read_uploads(request, service.settings.max_instances)
        decoded = await to_thread.run_sync(service.decode_uploads, files, top_k)
    return await _answer(request, service, decoded, timeout)


async def _answer(
    request: Request, service: InferenceService, decoded: Decoded, timeout: float
) -> Response:
    async with cancelled_on_disconnect(request, watch=service.batcher.will_wait()):
        outputs = await service.infer(decoded.arrays, timeout)
    if service.encode_off_loop:
        body = await to_thread.run_sync(service.encode, decoded, outputs)
    else:
        body = service.encode(decoded, outputs)
    return Response(body, media_type="application/json")


async def v1_model(name: str, request: Request) -> dict[str, object]:
    """KServe V1 model status."""
    service = _service(request)
    return {"name": service.name, "ready": True}


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.runtime.serving(request.path_params.get("name"))
    return service
