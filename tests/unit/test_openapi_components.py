"""OpenAPI components of several models: request models share class names, never schemas."""

from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from ptserve.protocols.openapi import PREFIX, Components


def request_model(width: int) -> type[BaseModel]:
    """What the simple protocol builds per model: a ``PredictRequest`` holding ``Sample``s."""
    sample = create_model(
        "Sample", __config__=ConfigDict(extra="forbid"), x=(list[float], [0.0] * width)
    )
    return create_model("PredictRequest", instances=(list[sample], ...))


def resolve(schemas: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = schemas[ref["$ref"].removeprefix(PREFIX)]
    return schema


def sample_default(schemas: dict[str, Any], ref: dict[str, Any]) -> list[float]:
    request = resolve(schemas, ref)
    sample = resolve(schemas, request["properties"]["instances"]["items"])
    default: list[float] = sample["properties"]["x"]["default"]
    return default


def test_same_names_different_schemas_get_their_own_names() -> None:
    schemas: dict[str, Any] = {}
    components = Components(schemas)
    (narrow,) = components.refs([(request_model(2), "validation")])
    (wide,) = components.refs([(request_model(3), "validation")])
    (narrow_again,) = components.refs([(request_model(2), "validation")])
    (wide_again,) = components.refs([(request_model(3), "validation")])
    assert narrow == narrow_again == {"$ref": PREFIX + "PredictRequest"}
    assert wide == wide_again == {"$ref": PREFIX + "PredictRequest_2"}
    assert sample_default(schemas, narrow) == [0.0, 0.0]
    assert sample_default(schemas, wide) == [0.0, 0.0, 0.0]
    assert sorted(schemas) == ["PredictRequest", "PredictRequest_2", "Sample", "Sample_2"]
