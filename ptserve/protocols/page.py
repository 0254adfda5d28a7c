"""The try-it page at ``/``: static HTML, CSS and JS shipped in the package (no CDN).

Drop an image or paste JSON; the page calls ``POST /predict`` and shows the answer and latency.
"""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/static"


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets under ``/static``."""
    html = (files("ptserve") / "static" / "index.html").read_text()
    app.mount(STATIC, StaticFiles(packages=[("ptserve", "static")]), "static")

    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
