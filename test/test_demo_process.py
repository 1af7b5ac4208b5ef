"""The demo's process as a person meets it (a real ``twistd ws4tx`` child, real Redis, real
HTTP and WebSocket clients): its embedded Redis killed under it, Redis gone during a POST,
and logging out.

- A killed embedded Redis is reaped (no ``<defunct>`` child), started again on the same
  port, event clients are told (``ws4tx.interrupted``, ``ws4tx.resumed``), messages flow
  again and the health URL is back to 200; one that keeps dying ends the server (status 1).
- Redis gone during a POST of the user or group chat: 503 with a message, no traceback, no
  Redis address; the event chat's error acknowledgement names no Redis address either.
- GET on the logout URL: a page with the logout button (anonymous: a redirect), not a
  blank 405; the POST logs out and closes the session's WebSockets.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import uuid
from typing import Any

import pytest
import redis
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.server.embedded import EmbeddedRedis

from test._demo import CHAT_FACILITY, EVENT_FACILITY, TIMEOUT, DemoServer
from test.test_demo import Client, read_until, settle

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

HEALTH = "/ws4tx/health"


def envelope_of(ws: Any, event: str) -> dict[str, Any]:
    """The next envelope of ``event`` that ``ws`` (an event client) gets (bounded)."""
    while True:
        frame = json.loads(ws.recv(timeout=TIMEOUT))
        if frame.get("event") == event:
            return frame  # type: ignore[no-any-return]


def health_status(server: DemoServer) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("GET", HEALTH)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class _ServerPerClass(SynchronousTestCase):
    server: DemoServer

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()


class EmbeddedRedisDiesTests(_ServerPerClass):
    """``--redis embedded`` (the demo's own), its Redis killed with SIGKILL."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = DemoServer()
        try:
            cls.server.start()
        except BaseException:
            cls.server.close()
            raise

    def test_killedRedisIsReapedAndStartedAgain(self) -> None:
        server = self.server
        pid = int(server.wait_for(r"embedded Redis \(.*?, pid (\d+)\)").group(1))
        watcher = Client(server).websocket(EVENT_FACILITY, "subscribe-broadcast", events=True)
        with watcher, Client(server).websocket(CHAT_FACILITY, "subscribe-broadcast") as raw:
            settle(raw)
            settle(watcher)
            os.kill(pid, signal.SIGKILL)
            server.wait_for(rf"embedded Redis \(pid {pid}\) was killed by signal 9")
            # Reaped: no <defunct> entry left behind.
            self.assertFalse(os.path.exists(f"/proc/{pid}"), _state(pid))
            new_pid = int(server.wait_for(r"embedded Redis is running again \(pid (\d+)\)")
                          .group(1))
            self.assertNotEqual(new_pid, pid)
            self.assertIn(server.redis_url, server.output.split("running again")[1])
            envelope_of(watcher, "ws4tx.interrupted")
            envelope_of(watcher, "ws4tx.resumed")
            store = redis.Redis.from_url(server.redis_url)
            try:
                line = f"after the restart {uuid.uuid4()}"
                store.publish(f"ws4tx:broadcast:{CHAT_FACILITY}", line)
            finally:
                store.close()
            read_until(raw, line)
        # The load balancer's view: 200 again (polled: the probe runs on its own timer).
        self.assertEqual(_poll_health(server, 200), 200)
        self.assertTrue(server.running())


class EmbeddedRedisKeepsDyingTests(SynchronousTestCase):
    def test_serverExitsLoudlyWhenRedisKeepsDying(self) -> None:
        """Killed again each time it is back (6 deaths within seconds): the server says
        why and exits with status 1 on its own; no Redis child is left."""
        server = DemoServer()
        self.addCleanup(server.close)
        server.start()
        pids = [int(server.wait_for(r"embedded Redis \(.*?, pid (\d+)\)").group(1))]
        for restarts in range(1, 6):
            os.kill(pids[-1], signal.SIGKILL)
            pids.append(_nth_restart(server, restarts))
        os.kill(pids[-1], signal.SIGKILL)
        server.wait_for(r"ws4tx: the embedded Redis \(pid \d+\) was killed by signal 9 6 "
                        r"times in a row, each within 30 s of its start: stopping")
        assert server.process is not None
        self.assertEqual(server.process.wait(TIMEOUT), 1, server.output)
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}"), _state(pid))


def _nth_restart(server: DemoServer, n: int) -> int:
    """The pid of the embedded Redis once the server has started it again ``n`` times."""
    pattern = re.compile(r"embedded Redis is running again \(pid (\d+)\)")
    deadline = time.monotonic() + TIMEOUT
    with server._changed:
        while True:
            pids = pattern.findall(server.output)
            if len(pids) >= n:
                return int(pids[n - 1])
            left = deadline - time.monotonic()
            if left <= 0 or not server.running():
                raise AssertionError(f"no restart #{n} in:\n{server.output}")
            server._changed.wait(left)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read()
    except OSError:
        return "gone"


def _poll_health(server: DemoServer, wanted: int) -> int:
    """The health URL's status once it is ``wanted``, or its last status after TIMEOUT s
    (asked again each time the server logs a line or a second passed)."""
    deadline = time.monotonic() + TIMEOUT
    status = health_status(server)
    while status != wanted and time.monotonic() < deadline:
        with server._changed:
            server._changed.wait(1.0)
        status = health_status(server)
    return status


class RedisOutageDuringPostTests(_ServerPerClass):
    """The demo on a Redis of the test's own, stopped while people send."""

    redis_server: EmbeddedRedis

    @classmethod
    def setUpClass(cls) -> None:
        cls.redis_server = EmbeddedRedis()
        cls.redis_server.start()
        cls.server = DemoServer()
        try:
            cls.server.start(redis_url=cls.redis_server.url)
        except BaseException:
            cls.server.close()
            cls.redis_server.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        cls.redis_server.stop()

    def tearDown(self) -> None:
        if self.redis_server.process is None:
            since = len(self.server.output)
            self.redis_server.start()
            self.server.wait_for(r"Redis subscriber connection to \S+ restored", since=since)

    def test_postDuringAnOutageIs503WithAMessage(self) -> None:
        john = Client(self.server).log_in("john")
        form_page = john.get("/groupchat/")[1]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form_page)
        assert token is not None
        self.redis_server.stop(signal.SIGKILL)
        for path, fields in (("/groupchat/", {"group": "chatusers"}),
                             ("/userchat/", {"user": "mary"})):
            body = {"csrfmiddlewaretoken": token.group(1), "message": "hello", **fields}
            status, _, text = john.request("POST", path, body,
                                           headers={"Accept": "application/json"})
            self.assertEqual((path, status), (path, 503), text)
            self.assertEqual(json.loads(text), {"error": (
                "Not sent: the chat server cannot reach its message broker right now. "
                "Try again in a moment.")})
            status, _, page = john.request("POST", path, body)  # the plain form
            self.assertEqual((path, status), (path, 503))
            self.assertIn("Not sent: the chat server cannot reach its message broker", page)
            self.assertNotIn(str(self.redis_server.port), page)
        self.assertNotIn("Traceback", self.server.output)
        self.assertNotIn("Internal Server Error", self.server.output)

    def test_eventChatErrorNamesNoRedisAddress(self) -> None:
        john = Client(self.server).log_in("john")
        with john.websocket(EVENT_FACILITY, "subscribe-broadcast", events=True) as ws:
            settle(ws)
            self.redis_server.stop(signal.SIGKILL)
            envelope_of(ws, "ws4tx.interrupted")
            ws.send(json.dumps({"ws4tx": "event", "event": "message",
                                "data": {"text": "hello"}, "id": 7}))
            while True:
                reply = json.loads(ws.recv(timeout=TIMEOUT))
                if reply.get("id") == 7:
                    break
        self.assertEqual(reply["error"],
                         "the server cannot reach Redis right now: try again in a moment")
        self.assertNotIn("redis://", json.dumps(reply))


class LogoutTests(_ServerPerClass):
    @classmethod
    def setUpClass(cls) -> None:
        cls.server = DemoServer()
        try:
            cls.server.start()
        except BaseException:
            cls.server.close()
            raise

    def test_getShowsALogoutButtonNotA405(self) -> None:
        john = Client(self.server).log_in("john")
        status, page = john.get("/accounts/logout/")
        self.assertEqual(status, 200)
        self.assertIn('id="logout-form"', page)
        self.assertIn('method="post"', page)
        self.assertIn('id="username"', john.get("/chat/")[1])  # GET logged nobody out

    def test_anonymousGetIsRedirectedToTheChat(self) -> None:
        status, headers, _ = Client(self.server).request("GET", "/accounts/logout/")
        self.assertEqual((status, headers.get("Location")), (302, "/chat/"))

    def test_logoutClosesTheSessionsSockets(self) -> None:
        from websockets.exceptions import ConnectionClosed

        john = Client(self.server).log_in("john")
        with john.websocket(CHAT_FACILITY, "subscribe-user") as ws, \
                john.websocket(EVENT_FACILITY, "subscribe-broadcast", events=True) as events:
            settle(ws)
            settle(events)
            self.assertEqual(john.post("/accounts/logout/"), 302)
            for socket in (ws, events):
                with self.assertRaises(ConnectionClosed) as closed:
                    while True:
                        socket.recv(timeout=TIMEOUT)
                self.assertEqual(closed.exception.rcvd.code, 4001)
        self.assertNotIn('id="username"', john.get("/chat/")[1])
