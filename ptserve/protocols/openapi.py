"""What the OpenAPI descriptions of hot routes share: component schemas and error responses."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ptserve.protocols.schemas import ErrorBody

Operations = dict[str, dict[str, Any]]  # method -> operation
REF_TEMPLATE = "#/components/schemas/{model}"


class Components:
    """The ``components/schemas`` of the document being built."""

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas

    def refs(self, models: list[tuple[type[BaseModel], JsonSchemaMode]]) -> list[dict[str, Any]]:
        """A ``$ref`` per model, adding the models' schemas to the components."""
        refs, defs = models_json_schema(models, ref_template=REF_TEMPLATE)
        self.schemas.update(defs.get("$defs", {}))
        return [refs[model] for model in models]

    def error(self, description: str) -> dict[str, Any]:
        """A response with the error body."""
        (ref,) = self.refs([(ErrorBody, "serialization")])
        return {"description": description, "content": {"application/json": {"schema": ref}}}
