"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright's sync
API (``launch()`` in a test class's ``setUpClass``, ``close()`` in its ``tearDownClass``).

Playwright's own browser download is never used (it cannot work on machines without general
network access): the browser is the system's, ``apt-get install chromium``, or the one
``$WS4TX_CHROMIUM`` names. A missing browser or Playwright skips the tests on a developer's
machine and fails them when ``$CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import unittest
from typing import Any, Optional

#: Chromium switches: headless, no sandbox (tests run as root in containers), and nothing
#: that talks to the network behind the test's back.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Pages of several users run side by side: keep background tabs at full speed.
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
]

INSTALL_HINT = (
    "the browser tests need Debian's Chromium and Playwright for Python: "
    "apt-get install chromium && pip install playwright "
    "(never `playwright install`: the system's chromium is used)"
)


def chromium_path() -> Optional[str]:
    """The Chromium executable: ``$WS4TX_CHROMIUM``, else ``chromium`` on PATH, else
    ``/usr/bin/chromium``; None when there is none."""
    named = os.environ.get("WS4TX_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _missing(what: str) -> None:
    """Fail under CI (a missing browser must not pass as skipped tests); skip elsewhere."""
    message = f"{what}; {INSTALL_HINT}"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    raise unittest.SkipTest(message)


class BrowserHandle:
    """A running Playwright with one Chromium: ``browser`` is Playwright's ``Browser``.
    Each ``browser.new_context()`` is a fresh profile (cookies, storage); the browser's
    user data directory is a temporary one Playwright removes on close."""

    def __init__(self, playwright: Any, browser: Any) -> None:
        self.playwright = playwright
        self.browser = browser

    def close(self) -> None:
        """Close the browser, then stop Playwright."""
        try:
            self.browser.close()
        finally:
            self.playwright.stop()

    def __enter__(self) -> BrowserHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch() -> BrowserHandle:
    """Start Playwright and headless Chromium; raise ``unittest.SkipTest`` (or, under CI,
    ``RuntimeError``) when either is not installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
        raise  # not reached
    executable = chromium_path()
    if executable is None:
        _missing("Chromium was not found")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            chromium_sandbox=False,
            args=ARGS,
        )
    except BaseException:
        playwright.stop()
        raise
    return BrowserHandle(playwright, browser)
