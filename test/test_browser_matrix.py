"""The seed's acceptance matrix in real browsers: admin, john and mary (and an anonymous
visitor) each in their own headless Chromium context, on the demo chat's pages, sending as
people do; every message reaches exactly its audience, and nobody else.

| channel    | from             | to        | recipients           |
|------------|------------------|-----------|----------------------|
| broadcast  | admin/john/mary  | everybody | admin, john and mary |
| user chat  | any of the three | one user  | exactly that user    |
| group chat | any of the three | chatusers | john and mary only   |

"Nobody else" is checked without waiting for a while: after the recipients have a message,
every page sends a heartbeat and waits for its answer. The server answers in order on each
connection, and it wrote a message to every connection that gets it before any recipient
could see it; so once a page has the answer to a heartbeat sent after that, it has every
message it will ever get of those sent before. A message that should reach nobody is
followed by a legitimate one (a marker) published after it to the audience it aimed at:
once the marker is in, the refused message would have been delivered before it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Iterable

import pytest
from twisted.trial.unittest import SynchronousTestCase

from test._demo import (
    HEARTBEAT,
    USERS,
    BrowserSession,
    DemoServer,
    heartbeat_counter,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page
try:
    from playwright.sync_api import expect
except ImportError:  # test._browser.launch() skips these tests (and fails them under CI)
    pass

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

#: A page: (who, which chat). Who is a user name or "anonymous".
PageKey = tuple[str, str]

ANONYMOUS = "anonymous"
CHATUSERS = ("john", "mary")
#: The page of each audience.
PAGES = {"chat": "/chat/", "user": "/userchat/", "group": "/groupchat/"}
WAIT_MS = 15_000


class AcceptanceMatrixTests(SynchronousTestCase):
    """Broadcast, user and group chat between admin, john and mary, and what anonymous
    visitors and forged POSTs cannot do."""

    server: DemoServer
    session: BrowserSession
    contexts: dict[str, BrowserContext]
    pages: dict[PageKey, Page]

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = DemoServer()
        cls.session = BrowserSession()
        try:
            cls.session.start()
            cls.server.start()
            cls.contexts, cls.pages = {}, {}
            for who in (*USERS, ANONYMOUS):
                context = cls.session.new_context(cls.server.url)
                context.add_init_script(heartbeat_counter(HEARTBEAT))
                cls.contexts[who] = context
                if who != ANONYMOUS:
                    cls.session.log_in(context, who)
            for who in (*USERS, ANONYMOUS):
                kinds = ("chat",) if who == ANONYMOUS else tuple(PAGES)
                for kind in kinds:
                    page = cls.contexts[who].new_page()
                    page.goto(PAGES[kind])
                    cls.pages[who, kind] = page
            for (who, kind), page in cls.pages.items():
                # "connected" once the server answered the page's recover= (its
                # subscriptions are in place); admin is in no group: his group chat
                # connects nothing.
                state = "off" if (who, kind) == ("admin", "group") else "connected"
                expect(page.locator("#ws-state")).to_have_attribute("data-state", state,
                                                                    timeout=WAIT_MS)
        except BaseException:
            cls.session.stop()
            cls.server.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            cls.session.stop()
        finally:
            cls.server.close()

    # Helpers

    def unique(self, what: str) -> str:
        """A message text no other message contains."""
        return f"{what} #{uuid.uuid4().hex[:10]}"

    def settle(self, page: Page) -> None:
        """Return once ``page`` has everything the server sent it so far: a heartbeat's
        answer comes after it on the same connection."""
        if page.evaluate("chat.client === null"):
            return  # a page without a WebSocket (admin's group chat)
        sent = page.evaluate(
            "hb => { chat.client.send(hb); return window.__heartbeats.sent; }", HEARTBEAT)
        # Polling on an interval: requestAnimationFrame does not run in background tabs.
        page.wait_for_function("n => window.__heartbeats.answered >= n", arg=sent,
                               polling=20, timeout=WAIT_MS)

    def lines(self, page: Page) -> list[str]:
        """The messages a page shows."""
        return page.locator("#messages li .text").all_inner_texts()

    def assertSeenExactlyBy(self, line: str, recipients: Iterable[PageKey]) -> None:
        """``line`` shows once on each recipient page, and on no other page."""
        expected = set(recipients)
        for key in sorted(expected):
            expect(self.pages[key].locator("#messages li .text", has_text=line)) \
                .to_have_count(1, timeout=WAIT_MS)
        for page in self.pages.values():
            self.settle(page)
        seen = {key: self.lines(page).count(line) for key, page in self.pages.items()}
        self.assertEqual({key for key, n in seen.items() if n}, expected, line)
        self.assertEqual({key: n for key, n in seen.items() if n}, dict.fromkeys(expected, 1))

    def assertShownNowhere(self, text: str) -> None:
        """No page shows a line containing ``text`` (call it after a settling check)."""
        for key, page in self.pages.items():
            self.assertFalse([line for line in self.lines(page) if text in line], key)

    def sendBroadcast(self, sender: str, text: str) -> str:
        """Type ``text`` into the sender's broadcast chat; the line receivers see."""
        page = self.pages[sender, "chat"]
        page.bring_to_front()  # as a person would; background tabs are throttled
        page.locator("#text").fill(text)
        page.locator("#send").click()
        return f"{sender}: {text}"

    def post(self, sender: str, kind: str, field: str, target: str, text: str) -> str:
        """Send ``text`` with the user or group chat form; the line receivers see."""
        page = self.pages[sender, kind]
        page.bring_to_front()
        form = page.locator(f"#{kind}chat-form")
        form.locator(f"select[name={field}]").select_option(target)
        form.locator("#text").fill(text)
        form.locator("#send").click()
        expect(page.locator("#send-status")).to_have_text(f"sent to {target}",
                                                          timeout=WAIT_MS)
        return f"{sender}: {text}"

    # The matrix

    def test_broadcastReachesEverybody(self) -> None:
        """A /chat/ message of admin, john or mary reaches every /chat/ page, once."""
        everybody = [(who, "chat") for who in (*USERS, ANONYMOUS)]
        for sender in USERS:
            line = self.sendBroadcast(sender, self.unique(f"broadcast from {sender}"))
            self.assertSeenExactlyBy(line, everybody)

    def test_userChatReachesExactlyThatUser(self) -> None:
        """A /userchat/ POST from any user to any user, yourself included (the seed's
        "Admin → Admin" rows), reaches exactly that user; the sender sees it once, as
        "sender → target"."""
        for sender in USERS:
            for target in USERS:
                text = self.unique(f"private from {sender} to {target}")
                line = self.post(sender, "user", "user", target, text)
                own = f"{sender} → {target}: {text}"
                if target == sender:  # one line on your own page, not two
                    self.assertSeenExactlyBy(own, [(sender, "user")])
                    continue
                self.assertSeenExactlyBy(line, [(target, "user")])
                self.assertEqual(self.lines(self.pages[sender, "user"]).count(own), 1)

    def test_groupChatReachesJohnAndMaryOnly(self) -> None:
        """A /groupchat/ POST to chatusers from anyone reaches john and mary, not admin
        (whose own message shows on his page only as the line he sent)."""
        for sender in USERS:
            line = self.post(sender, "group", "group", "chatusers",
                             self.unique(f"group message from {sender}"))
            self.assertSeenExactlyBy(line, {(user, "group") for user in CHATUSERS}
                                     | {(sender, "group")})

    # What may not happen

    def test_anonymousVisitorCannotSend(self) -> None:
        """An anonymous visitor can neither publish over the WebSocket nor POST."""
        page = self.pages[ANONYMOUS, "chat"]
        expect(page.locator("#login-prompt")).to_be_visible()
        expect(page.locator("#text")).to_be_disabled()

        forced = self.unique("forced over the websocket")
        page.evaluate("text => chat.client.send(text)", f"{ANONYMOUS}: {forced}")
        self.settle(page)  # the server has handled the forced message
        # A broadcast sent after it would come after it, had it been published.
        marker = self.sendBroadcast("john", self.unique("marker after the forced message"))
        self.assertSeenExactlyBy(marker, [(who, "chat") for who in (*USERS, ANONYMOUS)])
        self.assertShownNowhere(forced)

        context = self.contexts[ANONYMOUS]
        login = context.new_page()
        try:
            login.goto("/accounts/login/")
            token = login.locator("input[name=csrfmiddlewaretoken]").first.input_value()
        finally:
            login.close()
        text = self.unique("anonymous post")
        response = context.request.post(
            "/userchat/", form={"csrfmiddlewaretoken": token, "user": "mary", "message": text},
            max_redirects=0)
        self.assertEqual(response.status, 302)
        self.assertRegex(response.headers["location"], r"^/accounts/login/\?next=")
        marker = self.post("john", "user", "user", "mary", self.unique("marker to mary"))
        self.assertSeenExactlyBy(marker, [("mary", "user")])
        self.assertShownNowhere(text)

    def test_postWithoutCsrfTokenIsForbidden(self) -> None:
        """A logged-in user's POST without the CSRF token gets 403 and publishes nothing."""
        request = self.contexts["john"].request
        for kind, field, target, recipients in (
            ("user", "user", "mary", [("mary", "user")]),
            ("group", "group", "chatusers", [(user, "group") for user in CHATUSERS]),
        ):
            path = PAGES[kind]
            text = self.unique(f"forged post to {path}")
            response = request.post(path, form={field: target, "message": text},
                                    max_redirects=0)
            self.assertEqual(response.status, 403, path)
            self.assertIn("CSRF", response.text())
            marker = self.post("john", kind, field, target, self.unique("marker"))
            self.assertSeenExactlyBy(marker, recipients)
            self.assertShownNowhere(text)
