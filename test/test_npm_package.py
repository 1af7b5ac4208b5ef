"""The npm package ``ws4tx`` (js/) ships the Python package's client at the Python
package's version, and its ES module runs in Chromium. Its own tests run under Node
(``tox -e js``); these run with the Python suite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import unittest
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

import ws4tx
from ws4tx import envelope

from test import _browser

ROOT = Path(__file__).resolve().parent.parent


class VersionTests(SynchronousTestCase):
    def test_packageJsonVersionIsThePythonPackagesVersion(self) -> None:
        """package.json, its lock file, setup.py and ws4tx.__version__ name one version."""
        setup = (ROOT / "setup.py").read_text(encoding="utf-8")
        match = re.search(r'^\s*version="([^"]+)",$', setup, re.MULTILINE)
        assert match is not None, "no version= in setup.py"
        package = json.loads((ROOT / "js" / "package.json").read_text(encoding="utf-8"))
        lock = json.loads((ROOT / "js" / "package-lock.json").read_text(encoding="utf-8"))
        self.assertEqual(
            {"setup.py": match.group(1), "package.json": package["version"],
             "package-lock.json": lock["version"],
             "package-lock.json root": lock["packages"][""]["version"]},
            dict.fromkeys(("setup.py", "package.json", "package-lock.json",
                           "package-lock.json root"), ws4tx.__version__))


def built_module() -> str:
    """The npm package's ES module as ``js/build.mjs`` makes it now (Node runs the build;
    a missing Node skips the test here and fails it under CI, as a missing browser does)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            raise RuntimeError("node is not installed (.ci/run installs it)")
        raise unittest.SkipTest("node is not installed")
    script = ("import('./build.mjs').then((m) => "
              "process.stdout.write(m.buildFromDisk()['ws4tx.mjs']))")
    return subprocess.run([node, "--input-type=module", "-e", script], cwd=ROOT / "js",
                          check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.system
class BrowserModuleTests(SynchronousTestCase):
    """The ES module a bundler gets, imported by Chromium as it is."""

    def test_importedInChromium(self) -> None:
        """The module exports the API, sets no globals, and its client opens the page's
        WebSocket with the subprotocol."""
        module = built_module()
        handle = _browser.launch()
        self.addCleanup(handle.close)
        page = handle.browser.new_context().new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.add_init_script("""
          window.__opened = [];
          window.WebSocket = class { constructor(url, protocols) {
            window.__opened.push([url, protocols]); this.readyState = 0; } };
        """)
        page.route("http://ws4tx.test/", lambda route: route.fulfill(
            body="<!doctype html><title>esm</title>", content_type="text/html"))
        page.route("http://ws4tx.test/ws4tx.mjs", lambda route: route.fulfill(
            body=module, content_type="text/javascript"))
        page.goto("http://ws4tx.test/")
        result = page.evaluate("""async () => {
          const m = await import('/ws4tx.mjs');
          const client = m.connect('ws://ws4tx.test/ws/chat?subscribe-broadcast');
          await new Promise((resolve) => client.once('connecting', () => setTimeout(resolve)));
          return {names: Object.keys(m).sort(), opened: window.__opened,
                  globals: [typeof window.WS4TX, typeof window.WS4Redis, typeof window.ws4tx],
                  instance: client instanceof m.WS4TX, protocol: m.SUBPROTOCOL};
        }""")
        self.assertEqual(result, {
            "names": ["AckError", "SUBPROTOCOL", "WS4Redis", "WS4TX", "connect"],
            "opened": [["ws://ws4tx.test/ws/chat?subscribe-broadcast", [envelope.SUBPROTOCOL]]],
            "globals": ["undefined"] * 3,
            "instance": True,
            "protocol": envelope.SUBPROTOCOL,
        })
        self.assertEqual(errors, [])
