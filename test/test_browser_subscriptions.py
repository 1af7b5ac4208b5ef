"""ws4tx.js's subscriptions in headless Chromium against a real ``twistd ws4tx`` with
history (issue #22): one connection on the bare WebSocket URL with two subscriptions; the
server is stopped while messages are published to both and started again; the page, which
reconnects by itself, subscribes both again with their positions and gets exactly the
missed messages of each, in order, once, each told it recovered."""

from __future__ import annotations

from typing import Any

import pytest

from ws4tx.history import Retention

from test._recovering import publish_with_history
from test.test_browser_recovery import PageAndRedisTests

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

CHAT = "ws4tx:broadcast:chat"
NEWS = "ws4tx:broadcast:chat-news"
RETENTION = Retention(100, 600)
WAIT_MS = 20_000


class BrowserSubscriptionTests(PageAndRedisTests):
    def setUp(self) -> None:
        super().setUp()
        page = self.page
        page.evaluate("""(url) => {
          window.got = {chat: [], news: []}; window.verdicts = {chat: [], news: []};
          window.dialed = [];
          const Native = WebSocket;
          window.c = new WS4TX(url, {minDelay: 100, maxDelay: 300,
            WebSocket: function (u, p) { dialed.push(u); return new Native(u, p); }});
          window.subs = {chat: c.subscribe('chat'), news: c.subscribe('chat-news')};
          for (const name of ['chat', 'news']) {
            subs[name].on('message', (m) => got[name].push(m));
            subs[name].on('recovered', (v) => verdicts[name].push(v));
          }
        }""", f"ws://127.0.0.1:{self.port}/ws/")
        # Told where the channels stand (nothing was published yet).
        page.wait_for_function(
            f"() => subs.chat.positions[{CHAT!r}] && subs.news.positions[{NEWS!r}]",
            timeout=WAIT_MS)

    def startServer(self) -> None:
        self.startTwistd()

    def publish(self, channel: str, text: str) -> None:
        publish_with_history(self.redis, channel, text.encode(), RETENTION)

    def waitFor(self, expression: str) -> Any:
        self.page.wait_for_function(f"() => {expression}", timeout=WAIT_MS)
        return self.page.evaluate(f"() => {expression}")

    def test_aReconnectRestoresEverySubscriptionAndRecoversItsMissed(self) -> None:
        """Both subscriptions are subscribed again on the new connection, each with its
        positions; each gets exactly what was published to it meanwhile, once, in order,
        before its own recovered: true; then live messages; the URL never carries a
        position."""
        self.publish(CHAT, "chat seen")
        self.publish(NEWS, "news seen")
        self.waitFor("got.chat.length === 1 && got.news.length === 1")
        assert self.server is not None
        self.assertEqual(self.server.stop(), 0)
        self.waitFor("subs.chat.state === 'subscribing' && subs.news.state === 'subscribing'")
        missed_chat = [f"chat missed {i}" for i in range(20)]
        missed_news = [f"news missed {i}" for i in range(5)]
        for text in missed_chat:
            self.publish(CHAT, text)
        for text in missed_news:
            self.publish(NEWS, text)
        self.startServer()
        self.waitFor("verdicts.chat.length === 1 && verdicts.news.length === 1")
        verdicts = self.page.evaluate("verdicts")
        self.assertEqual(verdicts, {
            "chat": [{"recovered": True, "channels": {CHAT: {"recovered": True,
                                                             "messages": 20}}}],
            "news": [{"recovered": True, "channels": {NEWS: {"recovered": True,
                                                             "messages": 5}}}]})
        got = self.page.evaluate("got")
        self.assertEqual(got, {"chat": ["chat seen", *missed_chat],
                               "news": ["news seen", *missed_news]})
        self.assertEqual(self.page.evaluate("[subs.chat.state, subs.news.state]"),
                         ["subscribed", "subscribed"])
        self.publish(NEWS, "news live")
        self.assertEqual(self.waitFor("got.news.length === 7 && got.news[6]"), "news live")
        self.assertEqual(len(self.page.evaluate("got.chat")), 21)
        dialed = self.page.evaluate("dialed")
        self.assertGreaterEqual(len(dialed), 2)
        self.assertEqual(set(dialed), {f"ws://127.0.0.1:{self.port}/ws/"})
