"""The event chat (ws4tx.js and chatserver.handlers.EventChat) and the connection's life in
real browsers: acknowledgements, the typing indicator, refusals, reconnecting after a server
restart, and the heartbeat keeping /chat/ connected."""

from __future__ import annotations

import re
import signal
import uuid
from typing import TYPE_CHECKING

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.server.embedded import EmbeddedRedis

from test._demo import HEARTBEAT, BrowserSession, DemoServer

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page, WebSocket
try:
    from playwright.sync_api import expect
except ImportError:  # test._browser.launch() skips these tests (and fails them under CI)
    pass

ANONYMOUS = "anonymous"
WAIT_MS = 15_000
#: ws4tx.js backs off between attempts: allow for a few of them.
RECONNECT_MS = 40_000
#: ws4tx.js's heartbeat period.
HEARTBEAT_PERIOD_MS = 5_000


class EventChatPages(SynchronousTestCase):
    """/eventchat/ open for each of ``visitors`` on a demo server started with
    ``twistd_args`` (no tests of its own)."""

    visitors: tuple[str, ...] = ("john", "mary", ANONYMOUS)
    twistd_args: tuple[str, ...] = ()
    server: DemoServer
    session: BrowserSession
    contexts: dict[str, BrowserContext]
    pages: dict[str, Page]
    redis: list[EmbeddedRedis]

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = DemoServer(twistd_args=cls.twistd_args)
        cls.session = BrowserSession()
        cls.redis = []
        try:
            cls.session.start()
            cls.server.start()
            cls.contexts, cls.pages = {}, {}
            for who in cls.visitors:
                context = cls.contexts[who] = cls.session.new_context(cls.server.url)
                if who != ANONYMOUS:
                    cls.session.log_in(context, who)
                page = cls.pages[who] = context.new_page()
                page.goto("/eventchat/")
            for page in cls.pages.values():
                # "connected" once the server answered the page's recover= (its
                # subscriptions are in place).
                expect(page.locator("#ws-state")).to_have_attribute("data-state", "connected",
                                                                    timeout=WAIT_MS)
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
                for redis in cls.redis:
                    redis.stop()

    # Helpers

    def unique(self, what: str) -> str:
        """A message text no other message contains."""
        return f"{what} #{uuid.uuid4().hex[:10]}"

    def send(self, who: str, text: str) -> None:
        """Type ``text`` into the page of ``who`` and send it."""
        page = self.pages[who]
        page.locator("#text").fill(text)
        page.locator("#send").click()

    def line(self, who: str, text: str) -> Locator:
        """The line(s) of the page of ``who`` that contain ``text``."""
        return self.pages[who].locator("#messages li", has_text=text)

    def sendAndDeliver(self, sender: str, text: str) -> None:
        """``sender`` sends ``text``: it gets the tick, and the others get the line."""
        self.send(sender, text)
        expect(self.line(sender, text).locator(".tick")).to_have_text("✓", timeout=WAIT_MS)
        for who in self.pages:
            if who != sender:
                expect(self.line(who, f"{sender}: {text}")).to_have_count(1, timeout=WAIT_MS)


class EventChatTests(EventChatPages):
    """/eventchat/ between john, mary and an anonymous visitor."""

    def test_requestIsAcknowledgedWithATick(self) -> None:
        """A sent message gets its tick and reaches everybody; the sender sees it once."""
        first, second = self.unique("first"), self.unique("second")
        self.sendAndDeliver("john", first)
        expect(self.line("john", first)).to_have_class(re.compile(r"\bdelivered\b"))
        # The second acknowledgement comes after the first message's broadcast copy.
        self.sendAndDeliver("john", second)
        expect(self.line("john", first)).to_have_count(1)
        expect(self.line("john", second)).to_have_count(1)

    def test_typingIndicatorReachesTheOthers(self) -> None:
        """Typing shows "john is typing…" to mary and to watchers, until john's message."""
        john, mary = self.pages["john"], self.pages["mary"]
        john.locator("#text").press_sequentially("hel")
        for who in ("mary", ANONYMOUS):
            expect(self.pages[who].locator("#typing")).to_have_text("john is typing…",
                                                                    timeout=WAIT_MS)
        john.locator("#text").fill("")
        self.sendAndDeliver("john", self.unique("hello"))
        expect(mary.locator("#typing")).to_have_text("")

    def test_anonymousVisitorIsRefused(self) -> None:
        """An anonymous visitor's page has no working message box; a message its client
        sends all the same is refused by the handler, and nobody gets it."""
        page = self.pages[ANONYMOUS]
        expect(page.locator("#text")).to_be_disabled()
        text = self.unique("from nobody")
        refusal = page.evaluate(
            "text => chat.page.request('message', {text}).then(() => 'delivered',"
            " (error) => error.message)", text)
        self.assertEqual(refusal, "log in to send messages")
        # A message sent after it reaches everybody; the refused one reached nobody.
        self.sendAndDeliver("mary", self.unique("after the refusal"))
        for who in self.pages:
            expect(self.line(who, text)).to_have_count(0)

    def test_pagesReconnectAfterTheServerRestarts(self) -> None:
        """After a server restart (with a new, empty Redis) the pages count down to their
        next attempt, then say "reconnected", and chat."""
        self.assertEqual(self.server.stop(signal.SIGTERM), 0, self.server.output)
        for page in self.pages.values():
            expect(page.locator("#ws-state")).to_have_attribute("data-state", "reconnecting",
                                                                timeout=WAIT_MS)
        redis = EmbeddedRedis()
        redis.start()
        self.redis.append(redis)
        self.server.start(redis_url=redis.url)
        for page in self.pages.values():
            expect(page.locator("#ws-state")).to_have_text("reconnected", timeout=RECONNECT_MS)
        self.sendAndDeliver("john", self.unique("after the restart"))

    def test_heartbeatKeepsChatConnected(self) -> None:
        """Answered (never published) heartbeats keep /chat/'s WebSocket open for 5 periods."""
        # ws4tx.js sends its heartbeat every 5 s and drops the socket after 3 unanswered
        # ones; the page's clock is Playwright's, moved on by hand.
        # Another visitor of /chat/, to see that heartbeats are answered, not published.
        observer = self.contexts[ANONYMOUS].new_page()
        beats = {"sent": 0, "received": 0}

        def watch(socket: WebSocket) -> None:
            socket.on("framesent", lambda payload: count(payload, "sent"))
            socket.on("framereceived", lambda payload: count(payload, "received"))

        def count(payload: object, direction: str) -> None:
            if payload == HEARTBEAT:
                beats[direction] += 1

        observer.on("websocket", watch)
        context = self.session.new_context(self.server.url)
        try:
            observer.goto("/chat/")
            self.session.log_in(context, "john")
            page = context.new_page()
            page.clock.install()
            with page.expect_websocket() as opened:
                page.goto("/chat/")
            socket = opened.value
            for each in (page, observer):
                expect(each.locator("#ws-state")).to_have_attribute(
                    "data-state", "connected", timeout=WAIT_MS)
            others: list[WebSocket] = []
            page.on("websocket", lambda other: others.append(other))

            for _ in range(5):
                with socket.expect_event("framereceived", predicate=lambda p: p == HEARTBEAT,
                                         timeout=WAIT_MS):
                    page.clock.run_for(HEARTBEAT_PERIOD_MS)
            self.assertFalse(socket.is_closed())
            self.assertEqual(others, [])
            expect(page.locator("#ws-state")).to_have_text("connected")

            # A broadcast after the heartbeats reaches the observer after them, had they
            # been published: it got no heartbeat but the answers to its own.
            text = self.unique("after the heartbeats")
            page.locator("#text").fill(text)
            page.locator("#send").click()
            expect(observer.locator("#messages li", has_text=f"john: {text}")) \
                .to_have_count(1, timeout=WAIT_MS)
            self.assertLessEqual(beats["received"], beats["sent"])
        finally:
            context.close()
            observer.close()


#: The site's rate limit of the next tests: 4 messages or events at once, then one every
#: 5 s (each chat message is two: the "typing" event its first keystroke sends, and itself;
#: the page's connection spends two at its start, the subscribes of its chat and badge).
RATE_LIMIT = ("--rate-limit", "0.2", "--rate-burst", "4")
#: ws4tx.js's default ackTimeout, then the 2 s after which the page sends it again.
RESEND_MS = 10_000 + 2_000


class RateLimitedEventChatTests(EventChatPages):
    """/eventchat/ on a site whose rate limit a person sending several messages in a row
    goes over: what the server dropped is said in red, never marked ✓, and sent again."""

    visitors = ("john", "mary")
    twistd_args = RATE_LIMIT

    def test_messageOverTheRateLimitIsSaidNotSentThenSent(self) -> None:
        """john sends messages one after the other: they get ✓ until the server drops one
        (over the rate limit). That one has no ✓, mary does not get it, and the page says
        in red that it was not sent; once the server has not answered it for the
        acknowledgement's time, the page sends it again: ✓, mary gets it once, and the red
        words go."""
        john = self.pages["john"]
        status = john.locator("#send-status")
        sent: list[str] = []
        outcome = ""
        for number in range(4):  # the 4 of the burst are spent by the second message
            text = self.unique(f"quick {number}")
            self.send("john", text)
            sent.append(text)
            # Either its ✓ comes, or the server's refusal: whichever first.
            outcome = john.wait_for_function(
                """text => {
                    const status = document.getElementById('send-status');
                    if (status.dataset.state === 'failed') return 'dropped';
                    const line = [...document.querySelectorAll('#messages li')]
                        .find(li => li.textContent.includes(text));
                    const tick = line && line.querySelector('.tick');
                    return tick && tick.textContent === '✓' ? 'delivered' : false;
                }""", arg=text, polling=20, timeout=WAIT_MS).json_value()
            if outcome == "dropped":
                break
        self.assertEqual(outcome, "dropped", sent)
        self.assertGreaterEqual(len(sent), 2, "the first message was over the limit")
        *delivered, dropped = sent

        expect(status).to_have_text("not sent: rate limit exceeded: message dropped")
        red = john.evaluate("""() => {
            const probe = document.createElement('span');
            probe.style.color = 'var(--bad)';
            document.body.appendChild(probe);
            const colours = [getComputedStyle(probe).color,
                             getComputedStyle(document.getElementById('send-status')).color];
            probe.remove();
            return colours;
        }""")
        self.assertEqual(red[1], red[0], "the refusal is not in the page's red")
        line = self.line("john", dropped)
        expect(line.locator(".tick")).to_have_text("…")
        expect(line).not_to_have_class(re.compile(r"\bdelivered\b"))
        for text in delivered:
            expect(self.line("john", text).locator(".tick")).to_have_text("✓")
            expect(self.line("mary", f"john: {text}")).to_have_count(1, timeout=WAIT_MS)
        expect(self.line("mary", dropped)).to_have_count(0)

        # Unanswered for ackTimeout, sent again (the bucket has refilled meanwhile).
        expect(line.locator(".tick")).to_have_text("✓", timeout=RESEND_MS + WAIT_MS)
        expect(status).to_have_text("")
        expect(self.line("mary", f"john: {dropped}")).to_have_count(1, timeout=WAIT_MS)
        expect(line).to_have_count(1)
