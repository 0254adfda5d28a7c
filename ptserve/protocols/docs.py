"""OpenAPI with the model's real request schema, and Swagger UI served offline from a package."""

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from ptserve.protocols.schemas import ErrorBody, LabelledPredictResponse, PredictResponse
from ptserve.security import open_paths

if TYPE_CHECKING:
    from ptserve.runtime import Runtime
    from ptserve.service import InferenceService

ASSETS = "/docs/assets"


def install(app: FastAPI, runtime: "Runtime") -> None:
    """Add ``/docs`` (offline Swagger UI) and make ``/openapi.json`` describe the model."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), "assets")

    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="ptserve - Swagger UI",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        if runtime.service is not None:
            _describe_predict(schema, runtime.service)
            if runtime.settings.api_key_file is not None:
                _describe_api_keys(schema, open_paths(runtime.settings))
            app.openapi_schema = schema
        return schema

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.openapi = openapi  # type: ignore[method-assign]


def _describe_predict(schema: dict[str, Any], service: "InferenceService") -> None:
    response = LabelledPredictResponse if service.labels else PredictResponse
    refs, defs = models_json_schema(
        [
            (service.decoder.model, "validation"),
            (response, "serialization"),
            (ErrorBody, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    request_ref = refs[(service.decoder.model, "validation")]
    response_ref = refs[(response, "serialization")]
    error = {"content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}}
    example = service.decoder.example

    def operation(operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "tags": ["inference"],
            "summary": summary,
            "operationId": operation_id,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_ref, "example": example}},
            },
            "responses": {
                "200": {
                    "description": "One prediction per instance",
                    "content": {"application/json": {"schema": response_ref}},
                },
                "400": {"description": "Malformed or empty body", **error},
                "415": {"description": "Not JSON", **error},
                "422": {"description": "Instances do not fit the model's signature", **error},
                "500": {"description": "The model failed", **error},
                "503": {"description": "Not ready", **error},
            },
        }

    v1 = operation("v1_predict", "Predict (KServe V1)")
    v1["parameters"] = [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": [service.name]},
            "example": service.name,
        }
    ]
    v1["responses"]["404"] = {"description": "Unknown model", **error}
    schema["paths"]["/predict"] = {"post": operation("predict", "Predict")}
    schema["paths"]["/v1/models/{name}:predict"] = {"post": v1}


def _describe_api_keys(schema: dict[str, Any], open_prefixes: tuple[str, ...]) -> None:
    """Declare the two ways to send a key, and the 401 of every path that needs one."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    unauthorized = {
        "description": "A valid API key is required",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    schema["components"]["schemas"].setdefault("ErrorBody", ErrorBody.model_json_schema())
    for path, operations in schema["paths"].items():
        if path.startswith(open_prefixes):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["responses"]["401"] = unauthorized
