"""Real Chromium for the web page tests, driven by Playwright.

Uses the system Chromium (Debian package ``chromium``, installed by
``scripts/test.sh``); a missing browser fails the test with the command to install
it rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, sync_playwright

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    for candidate in (os.environ.get("VIGIL_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail(
        "Chromium is needed for the browser tests: install it with "
        "'sudo apt-get install chromium' (or run scripts/test.sh, which does), "
        "or point VIGIL_CHROMIUM at a Chromium binary",
        pytrace=False,
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
