"""The demo chat's safety, against the demo as ``python -m chatserver`` runs it (a real
``twistd ws4tx`` with its embedded Redis, real HTTP and WebSocket clients):

- by default DEBUG is off (error pages without tracebacks), /admin/ is not served (every demo
  user's password is "secret"), and ``/static/`` serves the app's static files but answers
  404 to any path that leaves them; ``--debug`` and ``--admin`` turn the first two on;
- the ``ALLOWED_CHANNELS`` hook (``chatserver.channels``) keeps only the flags the demo's
  pages use: a logged-in user with a raw WebSocket cannot publish into the group, user or
  event chats (where it could sign a message with another user's name).

"Nothing delivered" is checked without waiting for a while: the attacker's connection sends a
heartbeat after its message, and the server answers in order, so once the answer is in, the
message has gone to Redis if it was going to; then a legitimate marker is published to the
same audience, and the victim reads up to the marker: the forged message would be before it.
"""

from __future__ import annotations

import html
import http.client
import http.cookies
import json
import re
import subprocess
import sys
import urllib.parse
import uuid
from typing import Any, Optional

import pytest
from twisted.trial.unittest import SynchronousTestCase

from test._demo import (
    CHAT_FACILITY,
    EVENT_FACILITY,
    HEARTBEAT,
    PASSWORD,
    TIMEOUT,
    DemoServer,
    child_environment,
)
from test._process import ROOT

#: Paths under /static/ that leave the static directories (chatserver/settings.py is one
#: directory up from chatserver/static/), each as sent on the wire.
TRAVERSALS = (
    "/static/../settings.py",
    "/static/%2e%2e/settings.py",
    "/static/%2E%2E/settings.py",
    "/static/..%2fsettings.py",
    "/static/chatserver/../../settings.py",
    "/static/chatserver/%2e%2e/%2e%2e/settings.py",
    "/static/..%5csettings.py",
    "/static/./chatserver/chat.js",
    "/static//etc/passwd",
    "/static/chatserver/chat.js%00",
    "/static/chatserver/",
    "/static/",
)


class Client:
    """One person's HTTP session with the demo (cookies kept), as a browser would have it."""

    def __init__(self, server: DemoServer) -> None:
        self.server = server
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: Optional[dict[str, str]] = None,
                headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], str]:
        """Send ``path`` exactly as given; the status, headers and body of the answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT)
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            data = None
            if body is not None:
                data = urllib.parse.urlencode(body)
                sent["Content-Type"] = "application/x-www-form-urlencoded"
                sent["Referer"] = self.server.url + path
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            for value in response.headers.get_all("Set-Cookie") or ():
                for name, morsel in http.cookies.SimpleCookie(value).items():
                    self.cookies[name] = morsel.value
            return response.status, dict(response.headers.items()), text
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, str]:
        status, _, text = self.request("GET", path)
        return status, text

    def post(self, path: str, **fields: str) -> int:
        """POST a form of ``path`` with the CSRF token of its page."""
        _, page = self.get(path)
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        fields["csrfmiddlewaretoken"] = html.unescape(match.group(1))
        status, _, _ = self.request("POST", path, fields)
        return status

    def log_in(self, user: str) -> Client:
        status = self.post("/accounts/login/", username=user, password=PASSWORD)
        assert status == 302 and "sessionid" in self.cookies, f"{user} could not log in"
        return self

    def websocket(self, facility: str, flags: str, events: bool = False) -> Any:
        """A WebSocket with this session's cookie: raw, or an event client (``ws4tx.v1``)."""
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        return connect(
            f"ws://127.0.0.1:{self.server.port}/ws/{facility}?{flags}",
            additional_headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
                                "Origin": self.server.url},
            subprotocols=[Subprotocol("ws4tx.v1")] if events else None, open_timeout=TIMEOUT)


def settle(ws: Any) -> None:
    """Send a heartbeat and wait for its answer: the server has handled everything ``ws``
    sent before (published it, if it was going to)."""
    ws.send(HEARTBEAT)
    while ws.recv(timeout=TIMEOUT) != HEARTBEAT:
        pass


def read_until(ws: Any, marker: str) -> list[str]:
    """The frames ``ws`` gets before one that contains ``marker`` (bounded wait)."""
    frames: list[str] = []
    while True:
        frame = ws.recv(timeout=TIMEOUT)
        if marker in frame:
            return frames
        frames.append(frame)


def routed_paths() -> list[str]:
    """A path for every URL pattern of the demo's URLconf (read in a child process that
    loads the demo's settings), each parameter given a sample value."""
    script = (
        "import json, django\n"
        "django.setup()\n"
        "from django.urls import URLResolver, get_resolver\n"
        "def walk(patterns, prefix):\n"
        "    for p in patterns:\n"
        "        text = prefix + str(p.pattern)\n"
        "        yield from walk(p.url_patterns, text) if isinstance(p, URLResolver) "
        "else [text]\n"
        "print(json.dumps(list(walk(get_resolver().url_patterns, ''))))\n")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=60,
        env=child_environment(DJANGO_SETTINGS_MODULE="chatserver.settings"))
    paths = set()
    for pattern in json.loads(out.stdout):
        text = re.sub(r"\(\?P<[^>]+>[^)]*\)", "x", pattern)  # re_path() groups
        text = re.sub(r"<(?:[^>:]+:)?[^>]+>", "x", text)  # path() converters
        paths.add("/" + text.replace("^", "").replace("$", "").replace("\\", ""))
    return sorted(paths)

class _DemoTestCase(SynchronousTestCase):
    """One demo server for the class, started by the launcher with ``launcher_args``."""

    launcher_args: list[str]
    server: DemoServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = DemoServer(launcher_args=cls.launcher_args)
        try:
            cls.server.start()
        except BaseException:
            cls.server.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()


@pytest.mark.system
class DemoDefaultsTests(_DemoTestCase):
    """``python -m chatserver`` without options: DEBUG off, no admin, safe static files,
    and only the pages' WebSocket flags."""

    launcher_args: list[str] = []

    def assertNoTraceback(self) -> None:
        output = self.server.output
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Internal Server Error", output)

    # A: the defaults

    def test_debug_is_off(self) -> None:
        """A missing page is a plain 404: no URLconf listing, no settings, no traceback."""
        status, text = Client(self.server).get("/no-such-page/")
        self.assertEqual(status, 404)
        self.assertNotIn("URLconf", text)
        self.assertNotIn("DEBUG = True", text)
        self.assertNotIn("Traceback", text)

    def test_static_files_are_served(self) -> None:
        """The pages' scripts and styles are served with DEBUG off."""
        client = Client(self.server)
        for path, needle in (("/static/chatserver/chat.js", "var Chat"),
                             ("/static/chatserver/style.css", "{"),
                             ("/static/ws4tx/ws4tx.js", "WS4TX"),
                             ("/static/js/ws4redis.js", "WS4Redis")):
            status, text = client.get(path)
            self.assertEqual((path, status), (path, 200))
            self.assertIn(needle, text)
        status, page = client.get("/chat/")
        self.assertEqual(status, 200)
        self.assertIn("/static/chatserver/chat.js", page)

    def test_static_path_traversal_is_404(self) -> None:
        """A path that leaves the static directories is 404, never 500 nor the file."""
        client = Client(self.server)
        for path in TRAVERSALS:
            status, text = client.get(path)
            self.assertEqual((path, status), (path, 404))
            self.assertNotIn("SECRET_KEY", text)
            self.assertNotIn("root:", text)
        self.assertNoTraceback()

    def test_admin_is_not_served(self) -> None:
        """/admin/ is 404 (its users' password is "secret") and the pages do not link it."""
        client = Client(self.server)
        for path in ("/admin/", "/admin/login/", "/admin/auth/user/"):
            status, _ = client.get(path)
            self.assertEqual((path, status), (path, 404))
        status, page = client.log_in("admin").get("/chat/")
        self.assertEqual(status, 200)
        self.assertNotIn("/admin/", page)
        self.assertNotIn("--admin serves the Django admin", self.server.output)

    def test_no_routed_url_or_shown_link_answers_500(self) -> None:
        """Logged in, every URL the demo's URLconf routes (a sample value for each
        parameter) and every same-site link or script those pages show answers without a
        server error; so does each one for a visitor who is not logged in."""
        routed = routed_paths()
        self.assertIn("/chat/", routed)
        for client in (Client(self.server).log_in("john"), Client(self.server)):
            seen: set[str] = set()
            queue = list(routed)
            while queue:
                path = queue.pop(0)
                if path in seen or len(seen) >= 200:
                    continue
                seen.add(path)
                status, page = client.get(path)
                self.assertLess(status, 500, f"{path} answered {status}")
                for link in re.findall(r'(?:href|src|action)="([^"]+)"', page):
                    target = urllib.parse.urlsplit(html.unescape(link))
                    if not target.scheme and not target.netloc and target.path.startswith("/"):
                        queue.append(target.path + (f"?{target.query}" if target.query else ""))
            self.assertIn("/static/chatserver/style.css", seen)
        self.assertNoTraceback()

    # B: the ALLOWED_CHANNELS hook

    def test_raw_client_cannot_publish_to_group_or_user_chat(self) -> None:
        """john's raw WebSocket on the chat facility asking to publish to his group, user
        and session gets nothing to mary's group chat (nor to his own user chat)."""
        john, mary = Client(self.server).log_in("john"), Client(self.server).log_in("mary")
        forged = f"admin: forged {uuid.uuid4()}"
        marker = f"marker {uuid.uuid4()}"
        with mary.websocket(CHAT_FACILITY, "subscribe-group") as mary_group, \
                john.websocket(CHAT_FACILITY, "subscribe-user") as john_user, \
                john.websocket(CHAT_FACILITY, "publish-group&publish-user&publish-session"
                                              "&subscribe-broadcast&echo") as attacker:
            settle(mary_group)
            settle(john_user)
            attacker.send(forged)
            settle(attacker)
            self.assertEqual(john.post("/groupchat/", group="chatusers", message=marker), 302)
            # A message john sends to mary comes to his own user channel too.
            self.assertEqual(john.post("/userchat/", user="mary", message=marker), 302)
            self.assertNotIn(forged, read_until(mary_group, marker))
            self.assertNotIn(forged, read_until(john_user, marker))

    def test_raw_client_cannot_forge_event_chat_messages(self) -> None:
        """john's raw WebSocket on the event chat asking to publish sends an envelope that
        would show as admin's message: mary's event client never gets it; the handler's
        messages (which name the sender itself) still arrive."""
        john, mary = Client(self.server).log_in("john"), Client(self.server).log_in("mary")
        text = f"forged {uuid.uuid4()}"
        forged = json.dumps({"ws4tx": "event", "event": "message",
                             "data": {"user": "admin", "text": text}}, separators=(",", ":"))
        marker = f"marker {uuid.uuid4()}"
        flags = "subscribe-broadcast&publish-broadcast&publish-user&publish-group&publish-session"
        with mary.websocket(EVENT_FACILITY, "subscribe-broadcast", events=True) as watcher, \
                john.websocket(EVENT_FACILITY, "subscribe-broadcast", events=True) as sender, \
                john.websocket(EVENT_FACILITY, flags) as attacker:
            settle(watcher)
            attacker.send(forged)
            settle(attacker)
            sender.send(json.dumps({"ws4tx": "event", "event": "message",
                                    "data": {"text": marker}, "id": 1}))
            frames = read_until(watcher, marker)
            self.assertFalse([f for f in frames if text in f], frames)

    def test_anonymous_and_logged_in_pages_keep_their_flags(self) -> None:
        """The broadcast chat still works as its page uses it: a logged-in user publishes
        with publish-broadcast&echo; an anonymous visitor listens."""
        john, anonymous = Client(self.server).log_in("john"), Client(self.server)
        line = f"john: hello {uuid.uuid4()}"
        with anonymous.websocket(CHAT_FACILITY, "subscribe-broadcast") as listener, \
                john.websocket(CHAT_FACILITY,
                               "subscribe-broadcast&publish-broadcast&echo") as page:
            settle(listener)
            settle(page)
            page.send(line)
            read_until(page, line)
            read_until(listener, line)


    # The pages' size, whatever the history holds

    def test_pages_render_a_bounded_history(self) -> None:
        """However big the broadcast history's messages, /chat/ and its JSON twin carry at
        most 200 of them and a bounded number of bytes, the newest always: a message too
        long to show comes as its offset and size (the page says so); many small ones stop
        at 200."""
        from chatserver import _recent

        bound = _recent.BUDGET + 64 * 1024  # the page's own markup besides the messages
        anonymous = Client(self.server)
        for size, count in ((60_000, 210), (3_000, 250), (20, 250)):
            last = f"last {uuid.uuid4()}"
            publish(self.server, [("<" * size, count - 1), (last + "<" * (size - len(last)), 1)])
            status, page = anonymous.get("/chat/")
            self.assertEqual(status, 200)
            self.assertLess(len(page.encode()), bound, size)
            status, _, raw = anonymous.request("GET", "/chat/",
                                               headers={"Accept": "application/json"})
            self.assertLess(len(raw), bound, size)
            channel = json.loads(raw)["channels"][0]
            messages = channel["messages"]
            self.assertLessEqual(len(messages), _recent.SHOWN)
            newest = messages[-1]
            self.assertEqual(newest["offset"], channel["offset"])
            if size > _recent.MESSAGE_BYTES:
                self.assertEqual(newest, {"offset": channel["offset"], "omitted": size})
            else:
                self.assertTrue(newest["data"].startswith(last), size)
                self.assertIn(last, page)
            offsets = [m["offset"] for m in messages]
            self.assertEqual(offsets, list(range(offsets[0], offsets[0] + len(offsets))))
        self.assertEqual(len(messages), _recent.SHOWN)
        self.assertNoTraceback()


def publish(server: DemoServer, batches: list[tuple[str, int]]) -> None:
    """Publish each ``(text, count)`` batch to the broadcast chat, as the site's own code
    would (``api.publish``, in another process with the demo's settings)."""
    code = ("import json, sys, django; django.setup(); from ws4tx import api\n"
            "for text, count in json.loads(sys.argv[1]):\n"
            "    for _ in range(count): api.publish(sys.argv[2], text, broadcast=True)")
    subprocess.run([sys.executable, "-c", code, json.dumps(batches), CHAT_FACILITY],
                   cwd=ROOT, check=True, timeout=120, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT,
                   env=child_environment(DJANGO_SETTINGS_MODULE="chatserver.settings",
                                         WS4TX_REDIS_URL=server.redis_url,
                                         CHATSERVER_DB=server.database))


@pytest.mark.system
class DemoDebugAdminTests(_DemoTestCase):
    """``python -m chatserver --debug --admin``: what a developer asks for, with a warning."""

    launcher_args = ["--debug", "--admin"]

    def test_debug_is_on(self) -> None:
        status, text = Client(self.server).get("/no-such-page/")
        self.assertEqual(status, 404)
        self.assertIn("URLconf", text)

    def test_admin_is_served_with_a_warning(self) -> None:
        self.assertIn("WARNING: --admin serves the Django admin at /admin/", self.server.output)
        client = Client(self.server)
        status, text = client.get("/admin/login/")
        self.assertEqual(status, 200)
        self.assertIn("csrfmiddlewaretoken", text)
        status, page = client.get("/chat/")
        self.assertIn('href="/admin/"', page)

    def test_static_path_traversal_is_404_with_debug(self) -> None:
        """DEBUG on serves static files the same way: traversal is 404 there too."""
        client = Client(self.server)
        self.assertEqual(client.get("/static/admin/css/base.css")[0], 200)
        for path in TRAVERSALS:
            status, _ = client.get(path)
            self.assertEqual((path, status), (path, 404))
        self.assertNotIn("Internal Server Error", self.server.output)


class AllowedFlagsTests(SynchronousTestCase):
    """The table of ``chatserver.channels``: deny by default (pure logic)."""

    EVERY_FLAG = [f"{verb}-{audience}" for verb in ("subscribe", "publish")
                  for audience in ("broadcast", "user", "group", "session")] + ["echo"]

    def test_chat_facility(self) -> None:
        from chatserver.channels import allowed_flags

        self.assertEqual(allowed_flags(CHAT_FACILITY, False, self.EVERY_FLAG),
                         ["subscribe-broadcast"])
        self.assertEqual(
            allowed_flags(CHAT_FACILITY, True, self.EVERY_FLAG),
            ["subscribe-broadcast", "subscribe-user", "subscribe-group",
             "publish-broadcast", "echo"])

    def test_event_facility(self) -> None:
        from chatserver.channels import allowed_flags

        for authenticated in (False, True):
            self.assertEqual(allowed_flags(EVENT_FACILITY, authenticated, self.EVERY_FLAG),
                             ["subscribe-broadcast"])

    def test_other_facilities_get_nothing(self) -> None:
        from chatserver.channels import allowed_flags

        for facility in ("other", "FOOBAR", "foobar/", "", "eventchat/x"):
            self.assertEqual(allowed_flags(facility, True, self.EVERY_FLAG), [])
