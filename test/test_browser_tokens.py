"""Token refresh end to end: ws4tx.js in headless Chromium, against a real ``twistd ws4tx``
child whose tokens last 2 s. With a ``token`` function the page's connection outlives many
tokens (each refreshed before it expires); a page without one is closed with 4002."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, ClassVar

import pytest
from twisted.trial.unittest import SynchronousTestCase

from test import _browser
from test._demo import TIMEOUT, DemoServer, OutputChild, child_environment
from test._django import setup_django
from test._process import ROOT, twistd_path
from test.test_js_client import SCRIPT

setup_django()

from ws4tx import closecodes, tokens  # noqa: E402
from ws4tx.server.embedded import free_port  # noqa: E402

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

#: Seconds a token lasts on the server under test.
MAX_AGE = 2


class _TokenServer(DemoServer):
    """``twistd ws4tx`` with the test suite's settings (its SECRET_KEY: this process makes
    the tokens) and ``WS4TX_TOKEN_MAX_AGE`` = MAX_AGE, an embedded Redis, no site."""

    def __init__(self) -> None:
        OutputChild.__init__(self)
        self.launcher_args = None
        self.directory = tempfile.mkdtemp(prefix="ws4tx-tokens-")
        with open(os.path.join(self.directory, "token_settings.py"), "w") as f:
            f.write(f"from test.settings import *  # noqa\nWS4TX_TOKEN_MAX_AGE = {MAX_AGE}\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = ""

    def start(self, redis_url: Any = None) -> _TokenServer:
        env = child_environment()
        env["PYTHONPATH"] = os.pathsep.join([self.directory, env["PYTHONPATH"]])
        argv = [twistd_path(), "-n", "--pidfile=", "ws4tx",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--django-settings", "token_settings", "--redis", "embedded"]
        self.spawn(argv, env=env, cwd=ROOT)
        self.wait_for(f"Site starting on {self.port}")
        self.wait_for("Redis subscriber connected")
        return self


class ServedPageTests(SynchronousTestCase):
    """Headless Chromium with ws4tx.js on a page of a server of ``server_type`` (started
    once for the class), as each test's ``page``, with the page's ``freshToken()`` calling
    the test's (no tests of its own)."""

    server_type: ClassVar[type[_TokenServer]] = _TokenServer
    handle: ClassVar[Any] = None
    server: ClassVar[_TokenServer]

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = cls.server_type()
        try:
            cls.server.start()
            cls.handle = _browser.launch()
        except BaseException:
            cls.server.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            if cls.handle is not None:
                cls.handle.close()
        finally:
            cls.server.close()
            shutil.rmtree(cls.server.directory, ignore_errors=True)

    def setUp(self) -> None:
        context = self.handle.browser.new_context()
        self.addCleanup(context.close)
        page = self.page = context.new_page()
        # A page the server itself serves (its health URL): Chromium lets only a page that
        # came from the loopback open a socket to it (local network access checks).
        page.goto(f"{self.server.url}/ws4tx/health")
        page.add_script_tag(path=str(SCRIPT))
        page.expose_function("freshToken", self.freshToken)

    def freshToken(self) -> str:
        """What the page's ``freshToken()`` gives: each test class says."""
        raise NotImplementedError(f"{type(self).__name__} gives no token")


class TokenRefreshInChromiumTests(ServedPageTests):
    def setUp(self) -> None:
        self.made: list[str] = []
        super().setUp()
        page = self.page
        page.evaluate("window.__refreshed = []; window.__closed = []; window.__opened = 0;")
        self.ws = f"ws://127.0.0.1:{self.server.port}/ws/foobar?subscribe-broadcast"

    def freshToken(self) -> str:
        self.made.append(tokens.make_token("john"))
        return self.made[-1]

    def test_aTokenFunctionKeepsTheConnectionPastManyTokens(self) -> None:
        self.page.evaluate("""(ws) => {
          window.c = new WS4TX(ws, {token: () => window.freshToken()});
          c.on('connected', () => __opened++);
          c.on('refreshed', (d) => __refreshed.push(d));
          c.on('disconnected', (d) => __closed.push(d));
        }""", self.ws)
        # Each token lasts 2 s: four refreshes take the connection past the first three.
        self.page.wait_for_function("__refreshed.length >= 4", timeout=TIMEOUT * 1000)
        state = self.page.evaluate("({opened: __opened, closed: __closed, "
                                   "refreshed: __refreshed, state: c.state})")
        self.assertEqual((state["opened"], state["closed"], state["state"]),
                         (1, [], "connected"))
        first = tokens.expires_at(self.made[0], MAX_AGE)
        self.assertGreater(state["refreshed"][-1]["expires"], first + 1)
        self.assertEqual(len(self.made), 1 + len(state["refreshed"]))

    def test_withoutATokenFunctionTheConnectionIsClosedWith4002(self) -> None:
        self.page.evaluate("""([ws, token]) => {
          window.c = new WS4TX(ws + '&token=' + token, {reconnect: false});
          c.on('disconnected', (d) => __closed.push(d));
        }""", [self.ws, tokens.make_token("john")])
        self.page.wait_for_function("__closed.length === 1", timeout=TIMEOUT * 1000)
        closed = self.page.evaluate("__closed[0]")
        self.assertEqual((closed["code"], closed["reason"]),
                         (closecodes.TOKEN_EXPIRED, "token expired"))
