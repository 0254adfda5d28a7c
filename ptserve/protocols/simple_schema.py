"""OpenAPI operations of the simple protocol: each model's real request schema and example."""

from typing import TYPE_CHECKING, Any

from ptserve.errors import ModelNotFound
from ptserve.protocols.openapi import Components, Operations
from ptserve.protocols.schemas import LabelledPredictResponse, PredictResponse

if TYPE_CHECKING:
    from ptserve.registry import Served
    from ptserve.runtime import Runtime

UPLOAD = {
    "type": "object",
    "properties": {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One instance per file, in order.",
        },
        "top_k": {"type": "integer", "minimum": 1, "description": "Return the k best labels."},
    },
    "required": ["file"],
}


def describe_predict(runtime: "Runtime", components: Components) -> dict[str, Operations]:
    """``/predict``: the default model (without one, /predict answers 404: no operation)."""
    try:
        served = runtime.models.get(None)
    except ModelNotFound:
        return {}
    return {"/predict": {"post": _operation(served, components, "predict", None)}}


def describe_v1(runtime: "Runtime", components: Components) -> dict[str, Operations]:
    """``/v1/models/NAME:predict`` for every model (its highest version answers)."""
    return {
        f"/v1/models/{s.service.name}:predict": {
            "post": _operation(s, components, f"v1_predict_{s.service.name}", s.service.name)
        }
        for s in runtime.models.latest()
    }


def _operation(
    served: "Served", components: Components, operation_id: str, name: str | None
) -> dict[str, Any]:
    service, decoder = served.service, served.simple.decoder
    response = LabelledPredictResponse if service.labels else PredictResponse
    request_ref, response_ref = components.refs(
        [(decoder.model, "validation"), (response, "serialization")]
    )
    example = decoder.example
    content: dict[str, Any] = {"application/json": {"schema": request_ref, "example": example}}
    if service.takes_uploads:
        content["multipart/form-data"] = {"schema": UPLOAD}
    operation: dict[str, Any] = {
        "tags": ["inference"],
        "summary": f"Predict with {service.name}" + (" (KServe V1)" if name else ""),
        "operationId": operation_id,
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": "One prediction per instance",
                "content": {"application/json": {"schema": response_ref}},
            },
            "400": components.error("Malformed or empty body"),
            "413": components.error("Body or image too large"),
            "415": components.error("Neither JSON nor (for models taking files) multipart"),
            "422": components.error("Instances do not fit the model's signature"),
            "500": components.error("The model failed"),
            "503": components.error("Not ready, or the queue is full (Retry-After)"),
            "504": components.error("The request waited past its deadline"),
        },
    }
    return operation
