"""A page in Debian's headless Chromium, driven by Playwright (never a downloaded browser)."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error, Page, sync_playwright

from tests.guards import UI_STEP_S, hang_guard

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def ui_timeout_ms() -> float:
    """How long a page step may take before the test calls it hung (see tests/guards.py)."""
    return hang_guard(UI_STEP_S) * 1000


@contextlib.contextmanager
def chromium_page() -> Iterator[Page]:
    """A fresh page; the test is skipped (with the reason) where Chromium cannot run."""
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
            page.set_default_timeout(ui_timeout_ms())
            yield page
        finally:
            browser.close()
