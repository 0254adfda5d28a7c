"""Swagger UI at /docs renders offline in a real browser and can call /predict."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error, Page, expect, sync_playwright

from tests.e2e.conftest import Server, running_ptserve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("docs") / "server.log"
    with running_ptserve([], log) as server:
        yield server


@pytest.fixture
def page(example_server: Server) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
        except Error as exc:
            pytest.skip(f"chromium cannot start here: {exc.message.splitlines()[0]}")
        try:
            page = browser.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_swagger_ui_works_offline_and_executes_predict(page: Page, example_server: Server) -> None:
    base = example_server.base_url
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{base}/docs")

    operation = page.locator(".opblock-post").filter(
        has=page.locator('.opblock-summary-path[data-path="/predict"]')
    )
    summary = operation.locator(".opblock-summary")
    expect(summary).to_be_visible(timeout=UI_TIMEOUT_MS)
    summary.click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()

    live = operation.locator(".live-responses-table")
    status = live.locator("tr.response .response-col_status")
    expect(status).to_have_text(re.compile(r"^\s*200\b"), timeout=UI_TIMEOUT_MS)
    body = live.locator("tr.response .response-col_description .microlight").first.inner_text()
    assert '"label"' in body
    assert '"predictions"' in body

    remote = [url for url in requested if not url.startswith(base + "/")]
    assert not remote, f"the docs page reached beyond the server: {remote}"
    assert f"{base}/openapi.json" in requested
