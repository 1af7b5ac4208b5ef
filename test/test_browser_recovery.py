"""ws4tx.js in headless Chromium against a real ``twistd ws4tx`` with history (issue #11):
the server is stopped (SIGTERM) while messages are published and started again; the page,
which reconnects by itself with its positions, gets exactly the missed messages, in order,
once, and is told it recovered; past the history window it is told it did not."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest
import redis
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.history import Retention
from ws4tx.server.embedded import EmbeddedRedis, free_port

from test import _browser
from test._process import ROOT, twistd_path
from test._recovering import publish_with_history

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

SCRIPT = Path(ROOT) / "ws4tx" / "static" / "ws4tx" / "ws4tx.js"
CHAT = "ws4tx:broadcast:chat"
RETENTION = Retention(100, 600)
WAIT_MS = 20_000


class _Page(BaseHTTPRequestHandler):
    """The test page and ws4tx.js, from a real loopback HTTP server: a page the browser
    thinks public may not open a WebSocket to 127.0.0.1 (local network access checks)."""

    def do_GET(self) -> None:
        if self.path == "/ws4tx.js":
            body, kind = SCRIPT.read_bytes(), "text/javascript"
        else:
            body = b'<!doctype html><title>recovery</title><script src="/ws4tx.js"></script>'
            kind = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class TwistdChild:
    """``twistd -n ws4tx`` in a child process, stopped with SIGTERM (``path``: a directory
    for its Python path)."""

    def __init__(self, *args: str, path: str = "") -> None:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (path, ROOT, environ.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [twistd_path(), "-n", "--pidfile=", "ws4tx", *args], cwd=ROOT, env=environ,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""

    def waitFor(self, pattern: bytes, timeout: float = 20.0) -> None:
        """Read the child's output until ``pattern`` appears in it (bounded)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while not re.search(pattern, self.output):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"twistd did not print {pattern!r}:\n"
                                         f"{self.output[-3000:].decode(errors='replace')}")
                if selector.select(left):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    if not chunk:
                        raise AssertionError(f"twistd ended:\n{self.output[-3000:]!r}")
                    self.output += chunk

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


class PageAndRedisTests(SynchronousTestCase):
    """Headless Chromium on a blank page served here (:class:`_Page`) for the class; for
    each test a Redis of its own (``redis_server``, ``redis``), a free ``port``, the server
    under test that :meth:`startServer` starts there, and a fresh ``page`` (no tests of its
    own)."""

    handle: ClassVar[Any] = None
    http: ClassVar[ThreadingHTTPServer]
    server: Optional[TwistdChild] = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.handle = _browser.launch()
        cls.http = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
        threading.Thread(target=cls.http.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.http.shutdown()
        cls.http.server_close()
        handle, cls.handle = cls.handle, None
        if handle is not None:
            handle.close()

    def setUp(self) -> None:
        self.redis_server = EmbeddedRedis()
        self.redis_server.start()
        self.addCleanup(self.redis_server.stop)
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.port = free_port()
        self.startServer()
        context = self.handle.browser.new_context()
        self.addCleanup(context.close)
        self.page = context.new_page()
        self.page.goto(f"http://127.0.0.1:{self.http.server_address[1]}/")

    def startServer(self) -> None:
        """Start the server under test on ``port`` with ``redis_server`` (each class says
        how)."""
        raise NotImplementedError(f"{type(self).__name__} starts no server")

    def startTwistd(self, *args: str, path: str = "") -> None:
        """Start ``server``: ``twistd ws4tx`` on ``port`` with ``redis_server``, history for
        ``chat*`` and no pings, plus ``args`` (``path``: see :class:`TwistdChild`); wait
        until it has connected to Redis."""
        self.server = TwistdChild(
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--redis",
            self.redis_server.url, "--history", "chat*=100:600", "--ping-interval", "0",
            *args, path=path)
        self.addCleanup(self.server.stop)
        self.server.waitFor(rb"Redis subscriber connected")


class BrowserRecoveryTests(PageAndRedisTests):
    def setUp(self) -> None:
        super().setUp()
        page = self.page
        page.evaluate("""(url) => {
          window.got = []; window.verdicts = [];
          window.c = new WS4TX(url, {minDelay: 100, maxDelay: 300});
          c.on('message', (m) => got.push(m));
          c.on('recovered', (v) => verdicts.push(v));
        }""", f"ws://127.0.0.1:{self.port}/ws/chat?subscribe-broadcast")
        # Told where the channel stands (it got nothing yet).
        page.wait_for_function(f"() => c.positions[{CHAT!r}] !== undefined", timeout=WAIT_MS)

    def startServer(self) -> None:
        self.startTwistd()

    def stopServer(self) -> None:
        assert self.server is not None
        self.assertEqual(self.server.stop(), 0)

    def publish(self, text: str) -> None:
        publish_with_history(self.redis, CHAT, text.encode(), RETENTION)

    def waitForMessages(self, count: int) -> list[str]:
        self.page.wait_for_function(f"() => got.length >= {count}", timeout=WAIT_MS)
        got: list[str] = self.page.evaluate("got")
        return got

    def waitForVerdicts(self, count: int) -> list[dict[str, Any]]:
        self.page.wait_for_function(f"() => verdicts.length >= {count}", timeout=WAIT_MS)
        verdicts: list[dict[str, Any]] = self.page.evaluate("verdicts")
        return verdicts

    def test_missedWhileTheServerWasDownAreRecoveredOnceInOrder(self) -> None:
        """50 messages published while the server is stopped reach the page after it
        reconnected, exactly those, in order, once, before ws4tx.recovered true; then
        live ones."""
        self.publish("seen")
        self.assertEqual(self.waitForMessages(1), ["seen"])
        self.stopServer()
        missed = [f"missed {i}" for i in range(50)]
        for text in missed:
            self.publish(text)
        self.startServer()
        [verdict] = self.waitForVerdicts(1)
        self.assertEqual(verdict, {"recovered": True, "channels": {
            CHAT: {"recovered": True, "messages": 50}}})
        self.assertEqual(self.page.evaluate("got"), ["seen", *missed])
        self.publish("live")
        self.assertEqual(self.waitForMessages(52)[-1], "live")
        self.assertEqual(len(self.page.evaluate("got")), 52)

    def test_aPageThatGotNothingYetRecoversToo(self) -> None:
        """The page had no message when the server stopped: what was published meanwhile
        still reaches it (it knew the channel's position from ws4tx.positions)."""
        self.stopServer()
        self.publish("while away")
        self.startServer()
        [verdict] = self.waitForVerdicts(1)
        self.assertTrue(verdict["recovered"])
        self.assertEqual(self.page.evaluate("got"), ["while away"])

    def test_pastTheWindowThePageIsToldItDidNotRecover(self) -> None:
        """More messages than the history keeps were published meanwhile: none of the
        history is delivered, and the page is told (trimmed), then goes on live."""
        self.publish("seen")
        self.waitForMessages(1)
        self.stopServer()
        for i in range(RETENTION.size + 5):
            self.publish(f"missed {i}")
        self.startServer()
        [verdict] = self.waitForVerdicts(1)
        self.assertEqual((verdict["recovered"], verdict["reason"]), (False, "trimmed"))
        self.assertEqual(self.page.evaluate("got"), ["seen"])
        self.publish("live")
        self.assertEqual(self.waitForMessages(2), ["seen", "live"])
