"""Resumable sessions end to end: ws4tx.js with ``resume: true`` in headless Chromium,
against a real ``twistd ws4tx`` child. After its connection drops, the page
reconnects with its resume token alone: its own credential (the token function) has gone
bad, so only the resume token can let it in."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import pytest

from test._demo import TIMEOUT
from test._django import setup_django
from test.test_browser_tokens import ServedPageTests, _TokenServer

setup_django()

from ws4tx import _resume, _sync_redis, api, closecodes, tokens  # noqa: E402

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system


class _ResumeServer(_TokenServer):
    """The token server, with tokens that outlast the test (no refresh in the way)."""

    def __init__(self) -> None:
        super().__init__()
        with open(os.path.join(self.directory, "token_settings.py"), "w") as f:
            f.write("from test.settings import *  # noqa\n")

    def start(self, redis_url: Any = None) -> _ResumeServer:
        super().start()
        self.redis_url = self.wait_for(r"embedded Redis \(.*?\) at (redis://\S+?);").group(1)
        return self


class ResumeInChromiumTests(ServedPageTests):
    server_type = _ResumeServer
    server: ClassVar[_ResumeServer]

    def setUp(self) -> None:
        super().setUp()
        self.good = True
        _sync_redis.use_url(self.server.redis_url)
        self.addCleanup(_sync_redis.reset)
        self.ws = f"ws://127.0.0.1:{self.server.port}/ws/foobar?subscribe-user"

    def freshToken(self) -> str:
        return tokens.make_token("john") if self.good else "no-longer-a-token"

    def test_aDroppedPageComesBackWithItsResumeTokenAKickedOneDoesNot(self) -> None:
        """A connection that drops (not closed by the site) comes back on its resume token
        alone: the page's own credential has gone bad. Once the site closes it
        (``api.disconnect``: the user's tokens are revoked and the page forgets its own),
        it does not come back: its next handshake is refused and it stops."""
        self.page.evaluate("""(ws) => {
          window.__sessions = []; window.__closed = []; window.__opened = 0;
          window.__refused = [];
          window.c = new WS4TX(ws, {resume: true, token: () => window.freshToken()});
          c.on('connected', () => __opened++);
          c.on('ws4tx.session', (d) => __sessions.push(d));
          c.on('disconnected', (d) => __closed.push(d));
          c.on('refused', (d) => __refused.push(d));
          c.on('message', (m) => (window.__got = m));
        }""", self.ws)
        self.page.wait_for_function("__sessions.length === 1", timeout=TIMEOUT * 1000)
        self.good = False  # from now on only the resume token can authenticate john
        self.page.evaluate("c._ws.close(4000, 'the network dropped')")
        self.page.wait_for_function("__sessions.length === 2", timeout=TIMEOUT * 1000)
        state = self.page.evaluate("({opened: __opened, sessions: __sessions})")
        self.assertEqual(state["opened"], 2)
        first, second = (_resume.verify(s["resume"]) for s in state["sessions"])
        self.assertEqual(second.identity, first.identity)
        self.assertEqual(first.identity.user, "john")
        api.publish("foobar", "for john", users=["john"])
        self.page.wait_for_function("window.__got === 'for john'", timeout=TIMEOUT * 1000)

        api.disconnect(users=["john"], reason="kicked")
        self.page.wait_for_function("__refused.length === 1", timeout=TIMEOUT * 1000)
        state = self.page.evaluate("({opened: __opened, closed: __closed, state: c.state})")
        self.assertEqual(state["opened"], 2)  # never back in
        self.assertEqual(state["state"], "closed")
        closes = [(d["code"], d["reason"]) for d in state["closed"]]
        self.assertIn((closecodes.CLOSED_BY_SITE, "kicked"), closes)
