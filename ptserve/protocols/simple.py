"""The simple protocol: ``POST /predict`` and its KServe V1 twin ``/v1/models/{name}:predict``.

``{"instances": [sample, ...], "top_k"?: k}`` in, ``{"predictions": [...], "model": name}`` out.
Plain numeric bodies are read straight into numpy (``json_arrays``); anything else is
validated by the signature's Pydantic model, which is also the OpenAPI schema. Files sent as
``multipart/form-data`` are one instance each (image models and hooks that take files).
"""

import logging
from typing import TYPE_CHECKING, Any

import orjson
from anyio import to_thread
from fastapi import FastAPI, Request

from ptserve.errors import EmptyBody, HookFailure, UnsupportedMediaType
from ptserve.gateway import HotRoute
from ptserve.pipeline import ModelInput, run
from ptserve.protocols import simple_schema
from ptserve.protocols.http import HttpCall, Reply
from ptserve.protocols.schemas import error_responses
from ptserve.protocols.uploads import read_uploads
from ptserve.validation import RequestDecoder

if TYPE_CHECKING:
    from ptserve.runtime import Runtime
    from ptserve.service import InferenceService

log = logging.getLogger("ptserve")
JSON_TYPES = ("application/json", "text/json")
MULTIPART = "multipart/form-data"


class SimpleCodec:
    """The simple protocol's view of one model version."""

    def __init__(self, service: "InferenceService") -> None:
        self.service = service
        hooks = service.hooks
        raw = service.preprocess_hook is not None  # a hook takes the instances as they come
        self.decoder = RequestDecoder(
            service.signature, service.settings.max_instances, service.settings.allow_nan,
            images=service.images is not None, raw=raw,
            example=hooks.example if hooks is not None else None,
        )  # fmt: skip
        # base64 images in a body are decoded with it: CPU work for a worker thread
        self.decode_off_loop = service.images is not None

    async def predict(self, call: HttpCall, protocol: str) -> Reply:
        """Answer one request with the model's predictions."""
        service = self.service
        content_type = call.header(b"content-type") or "application/json"
        media = content_type.split(";", 1)[0].strip().lower()
        if media == MULTIPART:
            if not service.takes_uploads:
                raise UnsupportedMediaType(
                    "this model does not take file uploads; send JSON with "
                    "'Content-Type: application/json'"
                )

            async def decode() -> ModelInput:
                files, top_k = await read_uploads(call.request(), service.settings.max_instances)
                return ModelInput(instances=list(files), where="files", top_k=top_k)

        elif media in JSON_TYPES or media.endswith("+json"):

            async def decode() -> ModelInput:
                body = await call.body()
                if not body.strip():
                    raise EmptyBody('the request body is empty; send {"instances": [...]}')
                if self.decode_off_loop:
                    return await to_thread.run_sync(self.decoder.decode, body)
                return self.decoder.decode(body)

        else:
            raise UnsupportedMediaType(
                f"content type {media!r} is not supported; send JSON with "
                "'Content-Type: application/json'"
                + (", or files as multipart/form-data" if service.takes_uploads else "")
            )
        timeout = call.timeout(service.timeout_s)
        request, outputs = await run(
            service, protocol, decode, timeout, call.cancelled_on_disconnect
        )
        predictions = await service.predictions(outputs, request)
        return Reply(self.encode(predictions))

    def encode(self, predictions: list[Any]) -> bytes:
        try:
            return orjson.dumps(
                {"predictions": predictions, "model": self.service.name},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
        except orjson.JSONEncodeError as exc:  # only a postprocess hook can return such values
            hooks = self.service.hooks
            source = hooks.source if hooks is not None else "the model"
            log.error("the postprocess hook of %s returned non-JSON: %s", source, exc)
            raise HookFailure("the postprocess hook failed; the server log has details") from None


def routes(runtime: "Runtime") -> list[HotRoute]:
    """The hot routes of the simple protocol."""

    async def predict(call: HttpCall) -> Reply:
        served = runtime.serving()
        call.model, call.version = served.service.name, served.service.version
        return await served.simple.predict(call, "simple")

    async def v1_predict(call: HttpCall) -> Reply:
        served = runtime.serving(call.params["name"])
        call.model, call.version = served.service.name, served.service.version
        return await served.simple.predict(call, "kserve-v1")

    return [
        HotRoute("/predict", predict, simple_schema.describe_predict),
        HotRoute("/v1/models/{name}:predict", v1_predict, simple_schema.describe_v1),
    ]


def install(app: FastAPI) -> None:
    """The KServe V1 model status route (an ordinary FastAPI route)."""
    app.add_api_route(
        "/v1/models/{name}", v1_model, methods=["GET"], tags=["KServe V1"],
        responses=error_responses({404: "Unknown model", 422: "Invalid name", 503: "Not ready"}),
    )  # fmt: skip


async def v1_model(name: str, request: Request) -> dict[str, object]:
    """KServe V1 model status."""
    served = request.app.state.runtime.serving(name)
    return {"name": served.service.name, "ready": True}
