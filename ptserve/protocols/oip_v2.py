"""The Open Inference Protocol (V2, as Triton, KServe and MLServer speak it) over HTTP/REST,
with the binary tensor extension.

``POST .../infer`` is a plain Starlette route on the hot path: the raw body is read once, the
JSON header parsed by orjson, tensors built with ``np.frombuffer`` (binary) or ``np.asarray``
(JSON), and the reply is pre-serialised bytes. It runs through the same service and batcher as
``/predict``. The wire format lives in ``ptserve.protocols.oip_tensors``.
"""

from typing import Any

from fastapi import FastAPI, Request, Response

from ptserve import __version__
from ptserve.errors import InvalidHeader, ModelNotFound, UnsupportedMediaType
from ptserve.protocols.common import add_hot_route, cancelled_on_disconnect, header, request_timeout
from ptserve.protocols.oip_tensors import (
    DATATYPES,
    HEADER_LENGTH,
    WireSpec,
    decode_request,
    encode_response,
)
from ptserve.protocols.schemas import error_responses
from ptserve.runner import NUMPY_UNSAFE
from ptserve.service import InferenceService
from ptserve.signature import DTYPE_NAMES, TensorSpec, numpy_dtype

MODEL_VERSION = "1"  # a served model has exactly one version
HEADER_LENGTH_KEY = HEADER_LENGTH.encode()
EXTENSIONS = ["binary_tensor_data"]
TAG = "Open Inference Protocol (V2)"
NOT_READY = error_responses({503: "Loading or draining"})
MODEL_ERRORS = error_responses(
    {404: "Unknown model or version", 422: "Invalid name", 503: "Loading or draining"}
)
# The versioned paths' handlers read the version from the path; OpenAPI must still declare it.
PATH_PARAMETERS = {
    "parameters": [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in ("name", "version")
    ]
}
# The runner hands these output dtypes back as float32, so that is what the wire carries.
FLOAT32_OUTPUTS = {DTYPE_NAMES[dtype] for dtype in NUMPY_UNSAFE}
# The read buffer is padded in front so that the binary part after the JSON header starts at a
# multiple of this: the first tensor (and, when all share one itemsize, every tensor) is then
# aligned and used in place instead of copied.
ALIGNMENT = 16
MAX_DIGITS = 18  # a header length beyond int64 is no length


def install(app: FastAPI) -> None:
    """Add the ``/v2`` routes."""
    app.add_api_route("/v2", server_metadata, methods=["GET"], tags=[TAG])
    app.add_api_route(
        "/v2/health/live", server_live, methods=["GET"], tags=[TAG], responses=NOT_READY
    )
    app.add_api_route(
        "/v2/health/ready", server_ready, methods=["GET"], tags=[TAG], responses=NOT_READY
    )
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        extra = PATH_PARAMETERS if "{version}" in prefix else None
        for path, endpoint in ((prefix, model_metadata), (f"{prefix}/ready", model_ready)):
            app.add_api_route(
                path, endpoint, methods=["GET"], tags=[TAG], responses=MODEL_ERRORS,
                openapi_extra=extra,
            )  # fmt: skip
        add_hot_route(app, f"{prefix}/infer", infer)


async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "ptserve", "version": __version__, "extensions": EXTENSIONS}


async def server_live(request: Request) -> dict[str, bool]:
    """The process is up and can make progress (503 if its batch loop has stopped)."""
    request.app.state.runtime.check_live()
    return {"live": True}


async def server_ready(request: Request) -> dict[str, bool]:
    """The model is loaded and warmed up; 503 otherwise."""
    request.app.state.runtime.check_ready()
    return {"ready": True}


async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """The model's versions, platform and its inputs and outputs as OIP tensors (-1: the batch
    dimension, or a dimension of any size)."""
    service = _service(request)
    return {
        "name": service.name,
        "versions": [MODEL_VERSION],
        "platform": f"pytorch_{service.facts.format}",
        "inputs": [_tensor(s, numpy_dtype(s.dtype).name) for s in service.signature.inputs],
        "outputs": [
            _tensor(s, "float32" if s.dtype in FLOAT32_OUTPUTS else s.dtype)
            for s in service.signature.outputs
        ],
    }


async def model_ready(name: str, request: Request) -> dict[str, Any]:
    """The model is ready for inference; 503 while loading or draining."""
    request.app.state.runtime.check_ready()
    return {"name": _service(request).name, "ready": True}


async def infer(request: Request) -> Response:
    """Run one inference request: JSON, or binary when Inference-Header-Content-Length is set."""
    service = _service(request)
    encoding = (header(request, b"content-encoding") or "identity").lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
        )
    header_length = _header_length(request)
    timeout = request_timeout(request, service.settings.timeout_ms)
    with service.arrival():
        body = await _read_body(request, header_length)
        decoded = decode_request(
            body,
            header_length,
            [WireSpec(s.name, numpy_dtype(s.dtype), s.shape) for s in service.signature.inputs],
            [spec.name for spec in service.signature.outputs],
            service.settings.max_instances,
            service.settings.allow_nan,
        )
    async with cancelled_on_disconnect(request, watch=service.batcher.will_wait()):
        outputs = await service.infer(decoded.arrays, timeout)
    by_name = dict(zip((spec.name for spec in service.signature.outputs), outputs, strict=True))
    content, json_length = encode_response(
        service.name,
        MODEL_VERSION,
        decoded.id,
        [(out.name, by_name[out.name], out.binary) for out in decoded.outputs],
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


def _service(request: Request) -> InferenceService:
    """The model named in the path (404 for another name or a version other than 1)."""
    name = request.path_params["name"]
    service: InferenceService = request.app.state.runtime.serving(name)
    version = request.path_params.get("version", MODEL_VERSION)
    if version != MODEL_VERSION:
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}; its only version is {MODEL_VERSION!r}"
        )
    return service


def _header_length(request: Request) -> int | None:
    raw = header(request, HEADER_LENGTH_KEY)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS):
        raise InvalidHeader(
            f"Inference-Header-Content-Length must be the JSON header's size in bytes, got {raw!r}"
        )
    return int(raw)


async def _read_body(request: Request, header_length: int | None) -> memoryview:
    """The body, read once into a writable buffer, so binary tensors can be used in place
    (numpy views of it, which torch.from_numpy shares)."""
    pad = -(header_length or 0) % ALIGNMENT
    buffer = bytearray(pad)
    async for chunk in request.stream():
        buffer += chunk
    return memoryview(buffer)[pad:]


def _tensor(spec: TensorSpec, dtype: str) -> dict[str, Any]:
    # An output dtype with no OIP datatype (e.g. complex) is shown as it is; inferring with it
    # is a 500 that says so.
    datatype = DATATYPES.get(dtype, dtype)
    return {"name": spec.name, "datatype": datatype, "shape": [-1, *spec.shape]}
