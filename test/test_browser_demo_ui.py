"""The demo chat as a person sees it, in headless Chromium at desktop and phone widths:
own messages with times, recent messages on load, disabled inputs with a reason for
anonymous visitors, no horizontal overflow at 390 px, who is online and typing, and a
connection badge and outbox that tell the truth across a server restart and a Redis
outage (queued messages are sent when the page is back; nothing is missed or doubled).

Layout is asserted with numbers (``scrollWidth`` against ``innerWidth``, element edges),
never with pixels. Every wait is on a condition, with a bound.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.server.embedded import EmbeddedRedis

from test._demo import (
    CHAT_FACILITY,
    EVENT_FACILITY,
    BrowserSession,
    DemoServer,
    child_environment,
)
from test._process import ROOT

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, ViewportSize
try:
    from playwright.sync_api import expect
except ImportError:  # test._browser.launch() skips these tests (and fails them under CI)
    pass

WAIT_MS = 15_000
PHONE: ViewportSize = {"width": 390, "height": 800}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PAGES = ("/chat/", "/userchat/", "/groupchat/", "/eventchat/")
CONNECTED = re.compile(r"^(re)?connected$")


def django_side(server: DemoServer, code: str, *args: str) -> None:
    """Run ``code`` (with ``sys.argv[1:]`` = ``args``) in another process with the demo's
    Django settings and Redis, as the site's own code would publish."""
    subprocess.run([sys.executable, "-c", "import sys, django; django.setup(); " + code,
                    *args], cwd=ROOT, check=True, timeout=60, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT,
                   env=child_environment(DJANGO_SETTINGS_MODULE="chatserver.settings",
                                         WS4TX_REDIS_URL=server.redis_url,
                                         CHATSERVER_DB=server.database))


def emit_line(server: DemoServer, facility: str, data: dict[str, Any]) -> None:
    """Emit a chat line (``data``) to ``facility``'s broadcast chat, as the site's own code
    would (a server-side name: the pages show its ``user``)."""
    django_side(server, "import json; from ws4tx import api; api.emit(sys.argv[1], 'message', "
                        "json.loads(sys.argv[2]), broadcast=True)", facility, json.dumps(data))


def lines(page: Page) -> list[str]:
    """The texts of the page's lines, top to bottom."""
    texts: list[str] = page.locator("#messages li .text").all_inner_texts()
    return texts


def publish_broadcast(server: DemoServer, text: str) -> None:
    """Publish ``text`` to the broadcast chat (through the history script): while the
    demo server is down, pages can only get it by recovering it."""
    django_side(server, "from ws4tx import api; api.publish(sys.argv[1], sys.argv[2], "
                        "broadcast=True)", CHAT_FACILITY, text)


class DemoPageTests(SynchronousTestCase):
    """john, mary and an anonymous visitor on the demo's pages."""

    server: DemoServer
    redis: EmbeddedRedis
    session: BrowserSession
    contexts: dict[str, BrowserContext]

    @classmethod
    def setUpClass(cls) -> None:
        cls.redis = EmbeddedRedis()
        cls.server = DemoServer()
        cls.session = BrowserSession()
        try:
            cls.session.start()
            cls.redis.start()
            cls.server.start(redis_url=cls.redis.url)
            cls.contexts = {}
            for who in ("john", "mary", "anonymous"):
                context = cls.contexts[who] = cls.session.new_context(cls.server.url)
                if who != "anonymous":
                    cls.session.log_in(context, who)
        except BaseException:
            cls._cleanUp()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls._cleanUp()

    @classmethod
    def _cleanUp(cls) -> None:
        try:
            cls.session.stop()
        finally:
            try:
                cls.server.close()
            finally:
                cls.redis.stop()

    # Helpers

    def unique(self, what: str) -> str:
        return f"{what} #{uuid.uuid4().hex[:8]}"

    def open(self, who: str, path: str, size: ViewportSize = DESKTOP) -> Page:
        """``who``'s page at ``path``, connected and caught up (closed after the test)."""
        page = self.contexts[who].new_page()
        page.set_viewport_size(size)
        self.addCleanup(page.close)
        page.goto(path)
        return page

    def connected(self, page: Page, timeout: int = WAIT_MS) -> None:
        expect(page.locator("#ws-state")).to_have_attribute("data-state", "connected",
                                                            timeout=timeout)

    def line(self, page: Page, text: str) -> Any:
        return page.locator("#messages li", has_text=text)

    def send(self, page: Page, text: str, target: str = "") -> None:
        if target:
            page.locator("select").select_option(target)
        page.locator("#text").fill(text)
        page.locator("#send").click()

    def assertNoOverflow(self, page: Page) -> None:
        """Nothing sticks out sideways: the document and the Send button fit the width."""
        sizes = page.evaluate("""() => ({
            scroll: document.documentElement.scrollWidth, width: window.innerWidth,
            send: document.querySelector('#send').getBoundingClientRect().right})""")
        self.assertLessEqual(sizes["scroll"], sizes["width"], (page.url, sizes))
        self.assertLessEqual(sizes["send"], sizes["width"], (page.url, sizes))

    # Own messages, times, history

    def test_ownMessagesShowWithTimesAndStayAfterReload(self) -> None:
        """john's private message (john on a phone) and group message show on his own
        pages (own style, with a time, "john → mary" for the private one) and on mary's,
        once; they are still there after a reload. The "To" list offers john himself,
        marked as him."""
        john, mary = self.open("john", "/userchat/", PHONE), self.open("mary", "/userchat/")
        for page in (john, mary):
            self.connected(page)
        options = john.locator("select[name=user] option").all_inner_texts()
        self.assertEqual(options, ["admin", "john (you)", "mary"])
        text = self.unique("private")
        self.send(john, text, "mary")
        own = self.line(john, text)
        expect(own).to_have_class(re.compile(r"\bown\b.*\bdelivered\b|\bdelivered\b.*\bown\b"),
                                  timeout=WAIT_MS)
        expect(own.locator(".text")).to_have_text(f"john → mary: {text}")
        expect(own.locator(".time")).to_have_text(re.compile(r"^\d\d:\d\d$"))
        expect(self.line(mary, text).locator(".text")).to_have_text(f"john: {text}",
                                                                     timeout=WAIT_MS)
        expect(self.line(mary, text)).not_to_have_class(re.compile(r"\bown\b"))
        self.assertNoOverflow(john)

        group = self.open("john", "/groupchat/")
        self.connected(group)
        expect(group.locator("#my-groups")).to_have_text("You are in chatusers.")
        said = self.unique("to the group")
        self.send(group, said, "chatusers")
        expect(self.line(group, said).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)

        # The README's event to the group lands in the group chat as a line.
        emitted = self.unique("emitted")
        django_side(self.server, "from ws4tx import api; api.emit(sys.argv[1], 'chat', "
                                 "{'text': sys.argv[2]}, groups=['chatusers'])",
                    CHAT_FACILITY, emitted)
        expect(self.line(group, emitted).locator(".text")).to_have_text(emitted,
                                                                         timeout=WAIT_MS)

        for page, texts in ((john, [text]), (group, [said, emitted])):
            page.reload()
            self.connected(page)
            for each in texts:
                expect(self.line(page, each)).to_have_count(1)
            expect(self.line(page, texts[0])).to_have_class(re.compile(r"\bown\b"))

    def test_emptyBoxSaysSoAndAdminIsInNoGroup(self) -> None:
        """An empty message box has a placeholder text; a user in no group is told so
        and his group chat shows no green "connected" (it can deliver him nothing)."""
        self.session.log_in(admin := self.session.new_context(self.server.url), "admin")
        self.addCleanup(admin.close)
        page = admin.new_page()
        page.goto("/groupchat/")
        expect(page.locator("#no-delivery")).to_contain_text("You are in no group")
        expect(page.locator("#ws-state")).to_have_attribute("data-state", "off")
        expect(page.locator("#ws-state")).to_have_text("not connected")
        placeholder = page.evaluate("""() => getComputedStyle(
            document.querySelector('#messages'), '::before').content""")
        self.assertIn("No messages yet", placeholder)

    def test_aPageOpensOneConnectionOnTheBareURLAndSubscribesWithGrants(self) -> None:
        """john's event chat opens ONE WebSocket, to /ws/ itself, and subscribes its chat
        and his notification badge on it, each with the grant the page rendered, admitted
        by it at once (no refusal, no database query); his message goes to the chat's
        handler and comes back."""
        page = self.contexts["john"].new_page()
        self.addCleanup(page.close)
        sockets: list[Any] = []
        sent: list[Any] = []
        received: list[Any] = []

        def opened(socket: Any) -> None:
            sockets.append(socket)
            socket.on("framesent", lambda payload: sent.append(payload))
            socket.on("framereceived", lambda payload: received.append(payload))

        def granted() -> int:
            import urllib.request

            with urllib.request.urlopen(f"{self.server.url}/ws4tx/health") as answer:
                return int(json.load(answer)["counters"]["subscribes_granted"])

        before = granted()
        page.on("websocket", opened)
        page.goto("/eventchat/")
        self.connected(page)
        self.assertEqual([s.url for s in sockets], [f"ws://127.0.0.1:{self.server.port}/ws/"])
        # Both admitted by their grants: no authentication work, no database query.
        self.assertEqual(granted() - before, 2)
        subscribes = [json.loads(f) for f in sent
                      if isinstance(f, str) and f.startswith('{"ws4tx":"subscribe"')]
        self.assertEqual(sorted((f["facility"], f["audiences"]) for f in subscribes),
                         [("eventchat", {"broadcast": True}), ("foobar", {"user": True})])
        self.assertTrue(all(f.get("grant") for f in subscribes), subscribes)
        answers = [json.loads(f)["ws4tx"] for f in received
                   if isinstance(f, str) and f.startswith('{"ws4tx":"')]
        self.assertEqual(answers.count("subscribed"), 2)
        self.assertNotIn("refused", answers)
        text = self.unique("over one connection")
        self.send(page, text)
        expect(self.line(page, text).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        self.assertEqual(len(sockets), 1)

    # Anonymous visitors

    def test_anonymousVisitorsSeeDisabledInputsWithAReason(self) -> None:
        """Anonymous: the message box and Send are disabled, one sentence says why; the
        user and group chats (which can deliver nothing to them) open no WebSocket and
        show no "connected"."""
        for path in PAGES:
            page = self.contexts["anonymous"].new_page()
            self.addCleanup(page.close)
            sockets: list[Any] = []

            def opened(socket: Any, found: list[Any] = sockets) -> None:
                found.append(socket)

            page.on("websocket", opened)
            page.goto(path)
            expect(page.locator("#text")).to_be_disabled()
            expect(page.locator("#send")).to_be_disabled()
            if path in ("/userchat/", "/groupchat/"):
                expect(page.locator("select")).to_be_disabled()
            said = page.evaluate("document.querySelector('main').innerText.toLowerCase()")
            self.assertEqual(said.count("log in"), 1, (path, said))
            if path in ("/userchat/", "/groupchat/"):
                expect(page.locator("#login-prompt")).to_contain_text(
                    "Log in to send and receive messages")
                expect(page.locator("#ws-state")).to_have_attribute("data-state", "off")
                expect(page.locator("#ws-state")).to_have_text("not connected")
                self.assertEqual(sockets, [], path)
            else:
                expect(page.locator("#login-prompt")).to_contain_text(
                    "Log in to send messages")
                self.connected(page)

    # Phone layout

    def test_pagesFitAPhoneAndLongWordsWrap(self) -> None:
        """At 390 px and at 1280 px no page is wider than the window, Send included,
        anonymous or logged in; a 300-letter word wraps; the pages have a favicon."""
        for who in ("john", "anonymous"):
            for path in PAGES:
                page = self.open(who, path, PHONE)
                page.wait_for_load_state()
                self.assertNoOverflow(page)
                page.set_viewport_size(DESKTOP)
                self.assertNoOverflow(page)
                page.close()
        page = self.open("john", "/chat/", PHONE)
        self.connected(page)
        word = "x" * 300 + uuid.uuid4().hex
        self.send(page, word)
        expect(self.line(page, word).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        self.assertNoOverflow(page)
        icon = page.locator("link[rel=icon]").get_attribute("href")
        assert icon is not None
        self.assertEqual(page.request.get(icon).status, 200)

    # Presence

    def test_presenceShowsWhoIsOnlineAndTyping(self) -> None:
        """The event chat lists who is on it (from api.presence on load and ws4tx.presence
        events), shows who is typing, and drops a person who left."""
        john = self.open("john", "/eventchat/")
        self.connected(john)
        mary = self.open("mary", "/eventchat/")
        self.connected(mary)
        expect(john.locator("#online")).to_have_attribute("data-users", "john,mary",
                                                          timeout=WAIT_MS)
        expect(mary.locator("#online")).to_have_attribute("data-users", "john,mary",
                                                          timeout=WAIT_MS)
        expect(mary.locator("#online")).to_contain_text("mary (you)")
        mary.locator("#text").press_sequentially("hel")
        expect(john.locator("#typing")).to_have_text("mary is typing…", timeout=WAIT_MS)
        mary.close()
        expect(john.locator("#online")).to_have_attribute("data-users", "john",
                                                          timeout=WAIT_MS)

    def test_aPrivateMessageCountsOnTheBadgeOfAnotherPage(self) -> None:
        """mary reads the event chat on one WebSocket (the chat, who is online and her
        notifications); each private message john sends her counts on her "User chat"
        link, once; her page of private messages has no badge of its own."""
        mary = self.contexts["mary"].new_page()
        self.addCleanup(mary.close)
        sockets: list[Any] = []

        def opened(socket: Any) -> None:
            sockets.append(socket)

        mary.on("websocket", opened)
        mary.goto("/eventchat/")
        self.connected(mary)
        expect(mary.locator("#online")).to_contain_text("mary (you)", timeout=WAIT_MS)
        badge = mary.locator("#notify-count")
        expect(badge).to_be_hidden()
        john = self.open("john", "/userchat/")
        self.connected(john)
        for count in (1, 2):
            text = self.unique("psst")
            self.send(john, text, "mary")
            expect(self.line(john, text).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
            expect(badge).to_have_text(str(count), timeout=WAIT_MS)
        expect(badge).to_be_visible()
        self.assertEqual(len(sockets), 1)
        private = self.open("mary", "/userchat/")
        self.connected(private)
        expect(private.locator("#notify-count")).to_be_hidden()

    def test_pageClosedByTheSiteShowsItselfAnew(self) -> None:
        """When the site closes a user's connections (a logout elsewhere, a password
        change: close code 4001), the page reloads, to show who it is for now."""
        page = self.open("mary", "/userchat/")
        self.connected(page)
        page.evaluate("window.__before = true")
        with page.expect_navigation(timeout=WAIT_MS):
            django_side(self.server, "from ws4tx import api; api.disconnect(users=['mary'])")
        self.connected(page)
        self.assertIsNone(page.evaluate("window.__before"))

    def test_logoutInOneTabClosesTheOtherTabsSocketWithinASecond(self) -> None:
        """john logs out in one tab: his other tab of the same browser (the same session)
        loses its socket within 1 s, on Django's user_logged_out through the control
        channel, and then shows the page of an anonymous visitor."""
        import time

        context = self.session.new_context(self.server.url)
        self.addCleanup(context.close)
        self.session.log_in(context, "john")
        other = context.new_page()
        with other.expect_websocket() as opened:
            other.goto("/userchat/")
        socket = opened.value
        self.connected(other)
        tab = context.new_page()
        tab.goto("/accounts/logout/")
        closed: list[float] = []
        socket.on("close", lambda _: closed.append(time.monotonic()))
        started = time.monotonic()
        tab.locator("#logout-form button[type=submit]").click()
        if not closed:
            socket.wait_for_event("close", timeout=WAIT_MS)
        # (Seen by this process when Playwright hands the event on: at or after the close.)
        self.assertLess(closed[0] - started, 1.0)
        # The page reloads as what it is now: an anonymous visitor's, with no socket.
        expect(other.locator("#text")).to_be_disabled(timeout=WAIT_MS)
        expect(other.locator("#username")).to_have_count(0)

    # Any stored message, any name

    def test_storedMessagesNeitherBreakThePagesNorNameAnybodyFalsely(self) -> None:
        """Messages no page would send, stored in the broadcast and event chats (a time
        no Date can hold, a cid of "__proto__", fields of the wrong kind), leave a new
        visitor's pages working: they connect and show the other lines. A raw frame that
        john publishes naming mary shows as it is, never as mary's line; mary reusing the
        id of john's own message adds her line and leaves his as it was."""
        errors: list[str] = []
        bad = self.unique("bad fields")
        django_side(self.server, "from ws4tx import api; f = sys.argv[1]; t = sys.argv[2]\n"
                    "for m in ('{\"time\": 9e15, \"text\": \"' + t + ' far\"}',\n"
                    "          '{\"text\": {\"a\": 1}, \"user\": 7}', '{\"text\": null}'):\n"
                    "    api.publish(f, m, broadcast=True)", CHAT_FACILITY, bad)
        for data in ({"user": "x", "text": f"{bad} proto", "cid": "__proto__"},
                     {"user": ["x"], "text": f"{bad} list", "time": "x", "cid": {"a": 1}},
                     {"user": "x", "text": f"{bad} far", "time": -1e308, "group": 5}):
            emit_line(self.server, EVENT_FACILITY, data)

        john, mary = self.open("john", "/chat/"), self.open("mary", "/chat/")
        for page in (john, mary):
            page.on("pageerror", lambda error: errors.append(str(error)))
            self.connected(page)
        own = self.unique("john's own")
        self.send(john, own)
        expect(self.line(john, own).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        # john publishes raw JSON naming mary over a WebSocket of his own.
        forged = self.unique("forged")
        raw = json.dumps({"user": "mary", "text": forged})
        john.evaluate("""([url, raw]) => new Promise((resolve, reject) => {
            const ws = window.rawSocket = new WebSocket(url);
            ws.onopen = () => { ws.send(raw); resolve(); };
            ws.onclose = (event) => reject(new Error('closed ' + event.code));
        })""", [f"ws://127.0.0.1:{self.server.port}/ws/{CHAT_FACILITY}?publish-broadcast",
                raw])
        expect(self.line(mary, forged).locator(".text")).to_have_text(raw, timeout=WAIT_MS)
        state = json.loads(john.evaluate("""() => fetch('/chat/', {headers:
            {Accept: 'application/json'}}).then((r) => r.text())"""))
        cid = next(json.loads(m["data"])["data"]["cid"]
                   for m in state["channels"][0]["messages"] if own in m.get("data", ""))
        reused = self.unique("mary's, with john's cid")
        mary.evaluate("([text, cid]) => chat.page.request('message', {text, cid})",
                      [reused, cid])
        expect(self.line(john, f"mary: {reused}")).to_have_count(1, timeout=WAIT_MS)
        expect(self.line(john, own).locator(".text")).to_have_text(f"john: {own}")
        expect(self.line(john, own)).to_have_class(re.compile(r"\bown\b"))

        for path, texts in (("/chat/", [f"{bad} far", forged, f"mary: {reused}"]),
                            ("/eventchat/", [f"x: {bad} proto", f"{bad} list",
                                             f"x: {bad} far"])):
            page = self.open("anonymous", path)
            page.on("pageerror", lambda error: errors.append(str(error)))
            self.connected(page)
            for text in texts:
                expect(self.line(page, text)).to_have_count(1)
            self.assertNotIn(f"mary: {forged}", lines(page))
        self.assertEqual(errors, [])

    # States after a Redis outage

    def test_aPageOpenedDuringARedisPauseCatchesUpInOrder(self) -> None:
        """A page opened while Redis is paused says its messages could not be loaded (and
        not also "No messages yet"); when Redis is back it loads them above the newer line
        it got meanwhile, in the order they were published (a line without a time, as the
        README's shell line, included), the notice goes, and a reload keeps that order."""
        import redis

        older, shell, newer = (self.unique(w) for w in ("older", "shell line", "newer"))
        emit_line(self.server, CHAT_FACILITY, {"user": "mary", "text": older,
                                                "time": 1_700_000_000_000})
        publish_broadcast(self.server, shell)
        store = redis.Redis.from_url(self.redis.url)
        self.addCleanup(store.close)
        # The page's reads of its messages as JSON wait until the test lets them go.
        held: list[Any] = []
        released: list[bool] = []

        def hold(route: Any) -> None:
            if not released and "application/json" in (route.request.headers.get("accept")
                                                       or ""):
                held.append(route)
            else:
                route.continue_()

        page = self.contexts["anonymous"].new_page()
        self.addCleanup(page.close)
        page.route("**/chat/", hold)
        store.execute_command("CLIENT", "PAUSE", "120000", "WRITE")
        try:
            page.goto("/chat/")
            expect(page.locator("#send-status")).to_contain_text(
                "Recent messages could not be loaded")
            empty = page.evaluate("""() => getComputedStyle(
                document.querySelector('#messages'), '::before').content""")
            self.assertNotIn("No messages yet", empty)
        finally:
            store.execute_command("CLIENT", "UNPAUSE")
        self.connected(page)
        emit_line(self.server, CHAT_FACILITY, {"user": "mary", "text": newer,
                                                "time": 1_700_000_060_000})
        expect(self.line(page, newer)).to_have_count(1, timeout=WAIT_MS)
        # The page asked for its messages when it connected (before the newer line).
        self.assertTrue(held, "the page did not read its messages again")
        released.append(True)
        for route in held:
            route.continue_()
        expected = [f"mary: {older}", shell, f"mary: {newer}"]
        expect(self.line(page, shell)).to_have_count(1, timeout=WAIT_MS)
        shown = [t for t in lines(page) if any(t.endswith(e) for e in (older, shell, newer))]
        self.assertEqual(shown, expected)
        expect(page.locator("#send-status")).to_have_text("")
        expect(page.locator("#ws-state")).to_have_text(CONNECTED)
        page.reload()
        self.connected(page)
        expect(self.line(page, newer)).to_have_count(1)
        shown = [t for t in lines(page) if any(t.endswith(e) for e in (older, shell, newer))]
        self.assertEqual(shown, expected)

    # A server restart and a Redis outage

    def test_restartRetriesQueuesAndRecovers(self) -> None:
        """While the server is down the badge counts down to the next attempt with a
        "retry now"; what john sends meanwhile waits, marked as not sent yet; after the
        restart ("retry now") it is sent, and a message published while the pages were
        away reaches them once, recovered. What john wrote in a browser where mary logged
        in meanwhile is not sent (as her), and his page says why."""
        john, mary = self.open("john", "/chat/"), self.open("mary", "/chat/")
        post = self.open("john", "/userchat/")
        # john in another browser, where mary logs in while the server is down: what he
        # wrote meanwhile is his, and never goes out as hers.
        browser = self.session.new_context(self.server.url)
        self.addCleanup(browser.close)
        self.session.log_in(browser, "john")
        switched = browser.new_page()
        switched.goto("/chat/")
        pages = (john, mary, post, switched)
        for page in pages:
            self.connected(page)

        self.assertEqual(self.server.stop(signal.SIGTERM), 0, self.server.output)
        for page in pages:
            expect(page.locator("#ws-state")).to_have_text(
                re.compile(r"^reconnecting in \d+ s · retry now$"), timeout=WAIT_MS)
        queued = self.unique("typed while offline")
        self.send(john, queued)
        expect(self.line(john, queued)).to_contain_text("not sent yet")
        posted = self.unique("posted while offline")
        self.send(post, posted, "mary")
        expect(self.line(post, posted)).to_contain_text("not sent yet: the server cannot be "
                                                        "reached", timeout=WAIT_MS)
        missed = self.unique("published while away")
        publish_broadcast(self.server, missed)
        johns = self.unique("john's, written before mary logged in")
        self.send(switched, johns)
        expect(self.line(switched, johns)).to_contain_text("not sent yet")
        # mary logs in in another tab of that browser: its cookie is now hers.
        browser.add_cookies([c for c in self.contexts["mary"].cookies()
                             if c["name"] == "sessionid"])

        self.server.start(redis_url=self.redis.url)
        for page in pages:
            # The button is replaced at each new attempt: press it where it is now.
            page.evaluate("() => { const b = document.getElementById('retry-now');"
                          " if (b) b.click(); }")
        for page in pages:
            expect(page.locator("#ws-state")).to_have_text("reconnected", timeout=WAIT_MS)
        for page in (john, mary):
            expect(self.line(page, missed)).to_have_count(1, timeout=WAIT_MS)
            expect(self.line(page, f"john: {queued}")).to_have_count(1, timeout=WAIT_MS)
        expect(self.line(switched, johns).locator(".note")).to_have_text(
            "not sent: written as john, but this browser is now logged in as mary",
            timeout=WAIT_MS)
        expect(self.line(switched, johns).locator(".tick")).to_have_text("✗")
        expect(switched.locator("#send-status")).to_contain_text("now logged in as mary")
        expect(self.line(john, queued).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        expect(self.line(post, posted).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        expect(self.line(post, posted)).to_have_count(1)
        # After the replies came in: still exactly once everywhere.
        for page in (john, mary):
            expect(self.line(page, missed)).to_have_count(1)
            expect(self.line(page, queued)).to_have_count(1)
            expect(self.line(page, johns)).to_have_count(0)

    def test_aLostHistoryIsCaughtUpByTheStateOnceAndLiveMessagesWait(self) -> None:
        """The broadcast chat's history is lost while the server is down (a new epoch):
        the page cannot recover, so ws4tx.js calls its getState once (one JSON fetch of
        the page), which brings the message published meanwhile; it shows once, and so
        does a live one after."""
        import redis

        from ws4tx import naming

        page = self.open("mary", "/chat/")
        self.connected(page)
        fetched: list[str] = []

        def asked(request: Any) -> None:
            if "application/json" in request.headers.get("accept", ""):
                fetched.append(request.url)

        page.on("request", asked)
        self.assertEqual(self.server.stop(signal.SIGTERM), 0, self.server.output)
        expect(page.locator("#ws-state")).to_have_text(
            re.compile(r"^reconnecting in \d+ s · retry now$"), timeout=WAIT_MS)
        channel = naming.channel("ws4tx", "broadcast", CHAT_FACILITY)
        store = redis.Redis.from_url(self.redis.url)
        self.addCleanup(store.close)
        self.assertGreaterEqual(store.delete(*naming.history_keys("ws4tx", channel)), 1)
        lost = self.unique("after the history was lost")
        publish_broadcast(self.server, lost)
        self.server.start(redis_url=self.redis.url)
        page.evaluate("() => { const b = document.getElementById('retry-now');"
                      " if (b) b.click(); }")
        expect(page.locator("#ws-state")).to_have_text("reconnected", timeout=WAIT_MS)
        expect(self.line(page, lost)).to_have_count(1, timeout=WAIT_MS)
        live = self.unique("live after the catch-up")
        publish_broadcast(self.server, live)
        expect(self.line(page, live)).to_have_count(1, timeout=WAIT_MS)
        expect(self.line(page, lost)).to_have_count(1)
        self.assertEqual(len(fetched), 1, fetched)

    def test_redisOutageShowsOnTheBadgeAndHoldsMessages(self) -> None:
        """When the server loses Redis the pages say messages are delayed (not a green
        "connected"), and what john sends meanwhile waits, marked in words; when Redis is
        back the pages say "reconnected" and the waiting messages go out, once."""
        john, mary = self.open("john", "/eventchat/"), self.open("mary", "/eventchat/")
        post = self.open("john", "/userchat/")
        pages = (john, mary, post)
        for page in pages:
            self.connected(page)
        self.redis.stop()
        try:
            for page in pages:
                expect(page.locator("#ws-state")).to_have_attribute(
                    "data-state", "interrupted", timeout=WAIT_MS)
                expect(page.locator("#ws-state")).to_contain_text("messages delayed")
            held, posted = self.unique("held"), self.unique("posted")
            self.send(john, held)
            self.send(post, posted, "mary")
            for page, text in ((john, held), (post, posted)):
                expect(self.line(page, text).locator(".note")).to_have_text(
                    "not sent yet: the chat server cannot deliver messages right now; it is "
                    "sent when the connection is back")
        finally:
            self.redis.start()
        for page in pages:
            expect(page.locator("#ws-state")).to_have_text("reconnected", timeout=WAIT_MS)
        expect(self.line(john, held).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        expect(self.line(post, posted).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        expect(self.line(mary, f"john: {held}")).to_have_count(1, timeout=WAIT_MS)
        for page in pages:
            self.assertNotIn("redis://", page.content())

    def test_ws4redisJsStillWorksAgainstTheDemo(self) -> None:
        """ws4redis.js's own API (the pages moved to ws4tx.js for recovery) in a real
        browser against the demo: it connects, and receives john's broadcast as the raw
        payload."""
        john = self.open("john", "/chat/")
        self.connected(john)
        raw = self.open("anonymous", "/accounts/login/")
        raw.add_script_tag(url="/static/js/ws4redis.js")
        raw.evaluate("""uri => { window.got = []; window.states = [];
            window.r = WS4Redis({uri, heartbeat_msg: '--heartbeat--',
                connected: () => states.push('connected'),
                receive_message: (m) => got.push(m)}); }""",
                     f"ws://127.0.0.1:{self.server.port}/ws/{CHAT_FACILITY}?subscribe-broadcast")
        raw.wait_for_function("states.includes('connected')", polling=20, timeout=WAIT_MS)
        text = self.unique("to a ws4redis.js client")
        # The subscription is in place once the server answered a heartbeat sent after it.
        raw.evaluate("r.send_message('--heartbeat--')")
        self.send(john, text)
        expect(self.line(john, text).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        raw.wait_for_function("t => got.some(m => m.includes(t))", arg=text, polling=20,
                              timeout=WAIT_MS)
