"""Swagger UI at /docs renders offline in a real browser and can call /predict."""

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser import chromium_page, ui_timeout_ms
from tests.e2e.conftest import Server, running_ptserve


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("docs") / "server.log"
    with running_ptserve([], log) as server:
        yield server


@pytest.fixture
def page(example_server: Server) -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def test_swagger_ui_works_offline_and_executes_predict(page: Page, example_server: Server) -> None:
    base = example_server.base_url
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{base}/docs")

    operation = page.locator(".opblock-post").filter(
        has=page.locator('.opblock-summary-path[data-path="/predict"]')
    )
    summary = operation.locator(".opblock-summary")
    expect(summary).to_be_visible(timeout=ui_timeout_ms())
    summary.click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()

    live = operation.locator(".live-responses-table")
    status = live.locator("tr.response .response-col_status")
    expect(status).to_have_text(re.compile(r"^\s*200\b"), timeout=ui_timeout_ms())
    body = live.locator("tr.response .response-col_description .microlight").first.inner_text()
    assert '"label"' in body
    assert '"predictions"' in body

    remote = [url for url in requested if not url.startswith(base + "/")]
    assert not remote, f"the docs page reached beyond the server: {remote}"
    assert f"{base}/openapi.json" in requested
