"""The try-it page at / in a real headless Chromium: upload an image, paste JSON, see answers."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser import chromium_page
from tests.e2e.conftest import Server, running_ptserve
from tests.images import encoded, save_colour_model


@pytest.fixture(scope="module")
def colour_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("page")
    model = save_colour_model(folder / "model")
    with running_ptserve([str(model), "--input-shape", "3", "8", "8"], folder / "log") as server:
        yield server


@pytest.fixture
def page(colour_server: Server) -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def test_uploading_an_image_shows_its_label_and_latency(
    page: Page, colour_server: Server, tmp_path: Path
) -> None:
    base = colour_server.base_url
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base + "/")
    expect(page.locator("#model")).to_have_text("colours")
    image = tmp_path / "green.png"
    image.write_bytes(encoded((0, 200, 0), size=(30, 20)))
    page.set_input_files("#file", str(image))
    expect(page.locator("#label")).to_have_text("green")
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(page.locator("#status")).to_have_text("(HTTP 200)")
    local = (base + "/", f"blob:{base}/")  # blob: the page's own preview of the upload
    assert not [url for url in requested if not url.startswith(local)], requested


def test_pasted_json_and_errors_show_on_the_page(page: Page, colour_server: Server) -> None:
    page.goto(colour_server.base_url + "/")
    expect(page.locator("#json")).to_have_value(re.compile(r'^\{"instances":\[\[\[\[0,'))
    page.fill("#json", '{"instances": [[[[0, 1], [0, 1]]]]}')
    page.click("#send-json")
    expect(page.locator("#error")).to_contain_text("instances[0][0][0]: expected 8 values, got 2")
    expect(page.locator("#status")).to_have_text("(HTTP 422)")
    blue = [[[0.0] * 8] * 8, [[0.0] * 8] * 8, [[1.0] * 8] * 8]
    page.fill("#json", json.dumps({"instances": [blue]}))
    page.click("#send-json")
    expect(page.locator("#label")).to_have_text("blue")
