"""OpenAPI with the model's real request schema, and Swagger UI served offline from a package."""

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ptserve.protocols.openapi import Components
from ptserve.protocols.schemas import ErrorBody
from ptserve.security import open_paths

if TYPE_CHECKING:
    from ptserve.gateway import RouteTable
    from ptserve.runtime import Runtime

ASSETS = "/docs/assets"


def install(app: FastAPI, runtime: "Runtime", routes: "RouteTable") -> None:
    """Add ``/docs`` (offline Swagger UI) and make ``/openapi.json`` describe every route: the
    FastAPI routes as FastAPI describes them, the hot routes from their declarations."""
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
        if runtime.ready:
            components = Components(schema.setdefault("components", {}).setdefault("schemas", {}))
            for route in routes.routes:
                schema["paths"].update(route.describe(runtime, components))
            if runtime.settings.api_key_file is not None:
                _describe_api_keys(schema, open_paths(runtime.settings))
            app.openapi_schema = schema
        return schema

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.openapi = openapi  # type: ignore[method-assign]


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
