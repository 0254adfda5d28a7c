"""OpenAPI operations of Open Inference Protocol inference: each model's request as JSON (its
input names, datatypes and an example), the binary tensor extension described in words."""

from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model

from ptserve.protocols.oip_tensors import DATATYPES
from ptserve.protocols.openapi import Components, Operations

if TYPE_CHECKING:
    from ptserve.registry import Served
    from ptserve.runtime import Runtime

BINARY = (
    "JSON as below, or Triton's binary tensor extension: send the JSON header, then the raw "
    "tensors, with `Inference-Header-Content-Length` giving the header's size; each binary "
    "input says its `binary_data_size` in `parameters`. BYTES tensors carry one element per "
    "sample: base64 text in JSON, a 4-byte little-endian length then the bytes in binary."
)


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def describe_infer(runtime: "Runtime", components: Components) -> dict[str, Operations]:
    """``/v2/models/NAME/infer`` for every model (its highest version answers)."""
    return _paths(runtime.models.latest(), components, "/v2/models/{name}/infer")


def describe_versioned(runtime: "Runtime", components: Components) -> dict[str, Operations]:
    """``/v2/models/NAME/versions/V/infer`` for every model version."""
    return _paths(runtime.models.all(), components, "/v2/models/{name}/versions/{version}/infer")


def _paths(models: list["Served"], components: Components, template: str) -> dict[str, Operations]:
    paths: dict[str, Operations] = {}
    for served in models:
        service = served.service
        path = template.format(name=service.name, version=service.version)
        paths[path] = {"post": _operation(served, _request_model(served), components, path)}
    return paths


def _operation(
    served: "Served", request: type[BaseModel], components: Components, path: str
) -> dict[str, Any]:
    request_ref, response_ref = components.refs(
        [(request, "validation"), (InferResponse, "serialization")]
    )
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "tags": ["Open Inference Protocol (V2)"],
        "summary": f"Infer with {served.service.name}",
        "description": BINARY,
        "operationId": "v2_infer_" + path.strip("/").replace("/", "_"),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": request_ref, "example": _example(served)},
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {
                "description": "The outputs (binary when asked for)",
                "content": {
                    "application/json": {"schema": response_ref},
                    "application/octet-stream": binary,
                },
            },
            "400": components.error("The request does not fit the model's tensors"),
            "404": components.error("Unknown model or version"),
            "413": components.error("Body or image too large"),
            "415": components.error("A compressed body"),
            "422": components.error("An instance the model's preprocessing refused"),
            "500": components.error("The model failed"),
            "503": components.error("Not ready, or the queue is full (Retry-After)"),
            "504": components.error("The request waited past its deadline"),
        },
    }


def _request_model(served: "Served") -> type[BaseModel]:
    codec = served.v2
    names = tuple(spec.name for spec in codec.inputs)
    datatypes = tuple(sorted({d for spec in codec.inputs for d in spec.datatypes}))
    tensor = create_model(
        f"InferInput_{served.service.name}",
        __config__=ConfigDict(extra="forbid"),
        name=(Literal[names], ...),
        shape=(list[int], Field(description="Batch first: [n, *the input's shape]")),
        datatype=(Literal[datatypes], ...),
        parameters=(dict[str, Any] | None, None),
        data=(list[Any] | None, None),
    )
    output = create_model(
        f"InferOutput_{served.service.name}",
        __config__=ConfigDict(extra="forbid"),
        name=(Literal[tuple(codec.outputs)], ...),
        parameters=(dict[str, Any] | None, None),
    )
    return create_model(
        f"InferRequest_{served.service.name}",
        __config__=ConfigDict(extra="forbid"),
        id=(str | None, None),
        parameters=(dict[str, Any] | None, None),
        inputs=(list[tensor], Field(min_length=1)),
        outputs=(list[output] | None, None),
    )


def _example(served: "Served") -> dict[str, Any]:
    """One sample of the model's example, as a V2 JSON request."""
    codec = served.v2
    if len(codec.inputs) == 1 and codec.inputs[0].dtype is None:  # a hook's instances
        instance = served.simple.decoder.example["instances"][0]
        return {
            "inputs": [
                {
                    "name": codec.inputs[0].name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [_bytes_example(instance, codec.inputs[0].content)],
                }
            ]
        }
    samples = served.service.signature.example_sample()
    return {
        "inputs": [
            {
                "name": spec.name,
                "shape": [1, *sample.shape],
                "datatype": DATATYPES[sample.dtype.name],
                "data": sample.reshape(-1).tolist(),
            }
            for spec, sample in zip(codec.inputs, samples, strict=True)
        ]
    }


def _bytes_example(instance: Any, content: str | None) -> str:
    """A hook's example instance as a BYTES element: JSON text, or a file's base64."""
    if content == "json":
        return orjson.dumps(instance).decode()
    return str(instance.get("image", "")) if isinstance(instance, dict) else str(instance)
