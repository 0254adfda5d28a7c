"""The Open Inference Protocol (V2, as Triton, KServe and MLServer speak it) over HTTP/REST,
with the binary tensor extension.

``POST .../infer`` is a hot route: the body is read once into an aligned buffer, tensors become
``np.frombuffer`` views (binary) or arrays (JSON), and the reply is pre-serialised bytes. The wire
format lives in ``oip_tensors``; the request skeleton in ``ptserve.pipeline``. A model with its
own preprocessing takes it here too: an image input also accepts a BYTES tensor of encoded images
(one per sample), and a model with a preprocess hook (fastai learners, ``--handler``) takes one
BYTES input ``instances``; a postprocess hook's predictions come back as a BYTES output
``prediction`` (one JSON document per sample).
"""

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request

from ptserve import __version__
from ptserve.errors import HookFailure, InvalidHeader, UnsupportedMediaType
from ptserve.gateway import HotRoute
from ptserve.pipeline import ModelInput, run
from ptserve.protocols import oip_schema
from ptserve.protocols.http import HttpCall, Reply
from ptserve.protocols.oip_tensors import (
    BYTES,
    DATATYPES,
    HEADER_LENGTH,
    WireSpec,
    decode_request,
    encode_response,
)
from ptserve.protocols.schemas import error_responses
from ptserve.runner import NUMPY_UNSAFE
from ptserve.signature import DTYPE_NAMES, numpy_dtype

if TYPE_CHECKING:
    from ptserve.runtime import Runtime
    from ptserve.service import InferenceService

HEADER_LENGTH_KEY = HEADER_LENGTH.encode()
EXTENSIONS = ["binary_tensor_data", "model_repository"]
TAG = "Open Inference Protocol (V2)"
PREDICTION = "prediction"  # the BYTES output of a postprocess hook's predictions
INSTANCES = "instances"  # the BYTES input of a preprocess hook's instances
NOT_READY = error_responses({503: "Loading or draining"})
MODEL_ERRORS = error_responses(
    {404: "Unknown model or version", 422: "Invalid name", 503: "Not ready"}
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


class V2Codec:
    """The V2 view of one model version: its tensors on the wire, and infer."""

    def __init__(self, service: "InferenceService") -> None:
        self.service = service
        self.inputs = wire_inputs(service)
        self.outputs = [spec.name for spec in service.signature.outputs]
        self.predictions = service.postprocess_hook is not None
        if self.predictions:
            self.outputs.append(PREDICTION)

    def metadata(self) -> dict[str, Any]:
        """The model's versions, platform and tensors (-1: the batch dimension, or a dimension
        of any size)."""
        service = self.service
        outputs = [
            _tensor(s.name, "float32" if s.dtype in FLOAT32_OUTPUTS else s.dtype, s.shape)
            for s in service.signature.outputs
        ]
        if self.predictions:
            outputs.append({"name": PREDICTION, "datatype": BYTES, "shape": [-1]})
        return {
            "name": service.name,
            "versions": [service.version],
            "platform": f"pytorch_{service.facts.format}",
            "inputs": [
                _tensor(s.name, s.dtype.name if s.dtype is not None else None, s.shape)
                for s in self.inputs
            ],
            "outputs": outputs,
        }

    async def infer(self, call: HttpCall) -> Reply:
        """One inference request: JSON, or binary when Inference-Header-Content-Length is set."""
        service = self.service
        encoding = (call.header(b"content-encoding") or "identity").lower()
        if encoding != "identity":
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
            )
        header_length = _header_length(call)
        ids: list[str | None] = [None]
        wanted: list[tuple[str, bool]] = []

        async def decode() -> ModelInput:
            body = await call.buffer(-(header_length or 0) % ALIGNMENT)
            decoded = decode_request(
                body, header_length, self.inputs, self.outputs,
                service.settings.max_instances, service.settings.allow_nan,
            )  # fmt: skip
            ids[0] = decoded.id
            wanted.extend((out.name, out.binary) for out in decoded.outputs)
            return self.model_input(decoded.arrays)

        timeout = call.timeout(service.timeout_s)
        request, outputs = await run(service, "v2", decode, timeout, call.cancelled_on_disconnect)
        tensors = await self.tensors(request, outputs, [name for name, _ in wanted])
        content, json_length = encode_response(
            service.name, service.version, ids[0],
            [(name, tensors[name], binary) for name, binary in wanted],
        )  # fmt: skip
        if json_length is None:
            return Reply(content)
        return Reply(
            content,
            b"application/octet-stream",
            [(HEADER_LENGTH_KEY, str(json_length).encode())],
        )

    def model_input(self, decoded: list[Any]) -> ModelInput:
        """A protocol-neutral request from decoded tensors (a BYTES input: its elements)."""
        if len(decoded) == 1 and isinstance(decoded[0], list):
            return ModelInput(instances=decoded[0], where=f"input '{self.inputs[0].name}'")
        return ModelInput(arrays=decoded)

    async def tensors(
        self, request: ModelInput, outputs: list[Any], names: list[str]
    ) -> dict[str, Any]:
        """The outputs by name, with the postprocess hook's predictions when asked for."""
        model_outputs = outputs[: self.service.output_count]  # the rest are label scores
        by_name: dict[str, Any] = dict(zip(self.outputs, model_outputs, strict=False))
        if PREDICTION in names:
            predictions = await self.service.predictions(outputs, request)
            try:
                by_name[PREDICTION] = [
                    orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY) for p in predictions
                ]
            except orjson.JSONEncodeError:
                raise HookFailure(
                    "the postprocess hook failed; the server log has details"
                ) from None
        return by_name


def wire_inputs(service: "InferenceService") -> list[WireSpec]:
    """What V2 requests send for each input of ``service``."""
    hooks = service.hooks
    if hooks is not None and service.preprocess_hook is not None:
        return [WireSpec(INSTANCES, None, (), "file" if hooks.files else "json")]
    specs = service.signature.inputs
    if service.images is not None:  # encoded images may stand in for the pixels
        return [WireSpec(s.name, numpy_dtype(s.dtype), s.shape, "file") for s in specs]
    return [WireSpec(s.name, numpy_dtype(s.dtype), s.shape) for s in specs]


def routes(runtime: "Runtime") -> list[HotRoute]:
    """The hot routes of V2 inference."""

    async def infer(call: HttpCall) -> Reply:
        served = runtime.serving(call.params["name"], call.params.get("version"))
        call.model, call.version = served.service.name, served.service.version
        return await served.v2.infer(call)

    return [
        HotRoute("/v2/models/{name}/infer", infer, oip_schema.describe_infer),
        HotRoute(
            "/v2/models/{name}/versions/{version}/infer", infer, oip_schema.describe_versioned
        ),
    ]


def install(app: FastAPI) -> None:
    """Add the ``/v2`` metadata and health routes (ordinary FastAPI routes)."""
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


async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "ptserve", "version": __version__, "extensions": EXTENSIONS}


async def server_live(request: Request) -> dict[str, bool]:
    """The process is up and can make progress (503 if a batch loop has stopped)."""
    request.app.state.runtime.check_live()
    return {"live": True}


async def server_ready(request: Request) -> dict[str, bool]:
    """The models are loaded and warmed up; 503 otherwise, and while draining."""
    request.app.state.runtime.check_ready()
    return {"ready": True}


async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """The model's served versions, platform, and its inputs and outputs as OIP tensors."""
    metadata: dict[str, Any] = _served(request).v2.metadata()
    return {**metadata, "versions": request.app.state.runtime.models.versions(name)}


async def model_ready(name: str, request: Request) -> dict[str, Any]:
    """The model is ready for inference; 503 while loading or draining."""
    request.app.state.runtime.check_ready()
    served = _served(request)
    return {"name": served.service.name, "ready": True}


def _served(request: Request) -> Any:
    runtime = request.app.state.runtime
    return runtime.serving(request.path_params["name"], request.path_params.get("version"))


def _header_length(call: HttpCall) -> int | None:
    raw = call.header(HEADER_LENGTH_KEY)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS):
        raise InvalidHeader(
            f"Inference-Header-Content-Length must be the JSON header's size in bytes, got {raw!r}"
        )
    return int(raw)


def _tensor(name: str, dtype: str | None, shape: tuple[int, ...]) -> dict[str, Any]:
    # An output dtype with no OIP datatype (e.g. complex) is shown as it is; inferring with it
    # is a 500 that says so.
    datatype = BYTES if dtype is None else DATATYPES.get(dtype, dtype)
    return {"name": name, "datatype": datatype, "shape": [-1, *shape]}
