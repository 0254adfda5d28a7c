"""What the OpenAPI descriptions of hot routes share: component schemas and error responses."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ptserve.protocols.schemas import ErrorBody

Operations = dict[str, dict[str, Any]]  # method -> operation
REF_TEMPLATE = "#/components/schemas/{model}"
PREFIX = REF_TEMPLATE.removesuffix("{model}")


class Components:
    """The ``components/schemas`` of the document being built."""

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas

    def refs(self, models: list[tuple[type[BaseModel], JsonSchemaMode]]) -> list[dict[str, Any]]:
        """A ``$ref`` per model, adding the models' schemas to the components. Models of
        different models' requests share class names (``PredictRequest``): a schema whose name
        is taken by a different one gets a numbered name (``PredictRequest_2``)."""
        refs, defs = models_json_schema(models, ref_template=REF_TEMPLATE)
        new: dict[str, Any] = defs.get("$defs", {})
        renames: dict[str, str] = {}
        # renaming one schema changes the schemas that refer to it: look again until none clash
        while conflicts := [n for n, schema in new.items() if self._clash(n, schema, renames)]:
            for name in conflicts:
                renames[name] = self._name_for(name, _renamed(new[name], renames), renames)
        for name, schema in new.items():
            self.schemas[renames.get(name, name)] = _renamed(schema, renames)
        return [_renamed(refs[model], renames) for model in models]

    def _clash(self, name: str, schema: Any, renames: dict[str, str]) -> bool:
        taken = self.schemas.get(renames.get(name, name))
        return taken is not None and taken != _renamed(schema, renames)

    def _name_for(self, name: str, schema: Any, renames: dict[str, str]) -> str:
        """``name_2``, ``name_3``, ...: the first that holds this same schema, or is free."""
        taken = set(renames.values())
        for n in range(2, len(self.schemas) + len(taken) + 3):
            candidate = f"{name}_{n}"
            if candidate not in taken and self.schemas.get(candidate, schema) == schema:
                return candidate
        raise AssertionError("unreachable: there are fewer schemas than numbers tried")

    def error(self, description: str) -> dict[str, Any]:
        """A response with the error body."""
        (ref,) = self.refs([(ErrorBody, "serialization")])
        return {"description": description, "content": {"application/json": {"schema": ref}}}


def _renamed(schema: Any, renames: dict[str, str]) -> Any:
    """``schema`` with its ``$ref``s to renamed schemas pointing at the new names."""
    if not renames:
        return schema
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX) and ref[len(PREFIX) :] in renames:
            return {**schema, "$ref": PREFIX + renames[ref[len(PREFIX) :]]}
        return {k: _renamed(v, renames) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_renamed(v, renames) for v in schema]
    return schema
