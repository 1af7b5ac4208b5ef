"""The per-address cap behind a real nginx (Debian's package, started by the test as a
child with its own prefix and configuration in a temporary directory, on a free port).

Without a header naming the client, every connection comes from nginx's 127.0.0.1, a
trusted proxy by default: 150 of them are all accepted (the cap of 100 would otherwise
turn away the 101st user). With ``X-Forwarded-For`` or ``Forwarded``, the cap applies to
each real client: clients connect to nginx from 127.0.0.2 and 127.0.0.3.

A missing nginx skips these tests here and fails them under CI, as a missing browser does
(.ci/run installs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from typing import Any

import pytest
import redis
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs

from ws4tx import envelope
from ws4tx.history import Retention
from ws4tx.server.config import ServerConfig
from ws4tx.server.service import PushService
from ws4tx.testing import StaticAuthenticator

from test._process import Twistd
from test._recovering import publish_with_history
from test._server import ServerTestCase, identity_from_header, observe_broker
from test._sseclient import SSEClient, post, request
from test._wsclient import TIMEOUT, handshake_request, status_of

#: Whole processes: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system


NGINX_CANDIDATES = ("/usr/sbin/nginx",)

#: The directives that name the client to the upstream, per variant.
HEADERS = {
    "none": "",
    "x-forwarded-for": "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "forwarded": 'proxy_set_header Forwarded "for=\\"$remote_addr\\"";',
}


def nginx_path() -> str:
    """nginx's executable (``$WS4TX_NGINX``, else on PATH, else /usr/sbin/nginx)."""
    named = os.environ.get("WS4TX_NGINX")
    found = named or shutil.which("nginx") or next(
        (p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None or not os.access(found, os.X_OK):
        message = "nginx is not installed (apt-get install nginx-light)"
        if os.environ.get("CI"):
            raise RuntimeError(message + " under CI")
        raise unittest.SkipTest(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: How a location passes WebSockets (as docs/scaling.md shows), or strips ``Upgrade`` as
#: proxies that do not know WebSockets do (nginx's defaults: HTTP/1.0 upstream, no
#: Upgrade or Connection header passed on). Neither turns buffering off: ws4tx's
#: ``X-Accel-Buffering: no`` has each SSE event passed on at once.
UPGRADE = {
    "websocket": """proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;""",
    "strip": "",
}


class Nginx:
    """One nginx in the foreground (``daemon off``), proxying to ``upstreams`` (round
    robin, no sticky sessions); :meth:`start` fires once it listens (its master says it
    starts its worker, which it does after binding the port)."""

    def __init__(self, upstream: int | list[int], header: str,
                 upgrade: str = "websocket") -> None:
        upstreams = [upstream] if isinstance(upstream, int) else upstream
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
        self.dir = tempfile.mkdtemp(prefix="ws4tx-nginx-")
        self.port = free_port()
        temp = Path(self.dir)
        self.conf = temp / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
pid {temp}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream ws4tx {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://ws4tx;
            proxy_set_header Host $host;
            {UPGRADE[upgrade]}
            {HEADERS[header]}
        }}
    }}
}}
""")
        # A child whose output is waited on (the same protocol as twistd children').
        self.process = Twistd()

    async def start(self) -> None:
        argv = [nginx_path(), "-p", self.dir, "-c", str(self.conf), "-e", "stderr",
                "-g", "daemon off;"]
        self.process.transport = reactor.spawnProcess(
            self.process, argv[0], argv, env=dict(os.environ), path=self.dir)
        self.started = True
        await self.process.waitFor("start worker process")

    started = False

    async def close(self) -> None:
        try:
            if self.started:
                try:
                    await self.process.stop()  # TERM: nginx's fast shutdown
                except defer.TimeoutError:
                    await self.process.stop("KILL")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class _Handshake(Protocol):
    """A WebSocket handshake that keeps its connection: ``status`` fires with the answer's
    status code once its head is in."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.status: defer.Deferred[int] = defer.Deferred()
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.status.called:
            self.status.callback(status_of(self.data)[0])

    def connectionLost(self, reason: Any = None) -> None:
        if not self.status.called:
            self.status.errback(ConnectionError(f"closed before an answer: {self.data!r}"))


class NginxTests(ServerTestCase):
    """The default cap (100 per client) and trusted proxies (loopback) behind nginx."""

    config = ServerTestCase.config.replace(
        max_connections_per_ip=ServerConfig().max_connections_per_ip)

    async def startNginx(self, header: str) -> Nginx:
        nginx = Nginx(self.port, header)
        self.addCleanup(nginx.close)
        await nginx.start()
        return nginx

    async def handshakes(self, nginx: Nginx, source: str, count: int,
                         clients: list[Any]) -> list[int]:
        """``count`` handshakes through ``nginx`` from the local address ``source``,
        kept open (in ``clients``); their statuses."""
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", nginx.port, timeout=TIMEOUT, bindAddress=(source, 0))
        statuses = []
        for _ in range(count):
            handshake = _Handshake(handshake_request("/ws/foobar"))
            await endpoints.connectProtocol(endpoint, handshake)
            clients.append(handshake)
            statuses.append(await handshake.status.addTimeout(TIMEOUT, reactor))
        return statuses

    def closeAll(self, clients: list[Any]) -> None:
        for client in clients:
            client.transport.abortConnection()

    async def test_withoutHeaderEveryConnectionIsAccepted(self):
        """nginx sends no header naming the client: 150 connections through it are all
        accepted (not 100), counted as unnamed, and one warning says how to fix nginx."""
        nginx = await self.startNginx("none")
        clients: list[Any] = []
        self.addCleanup(self.closeAll, clients)
        with capturedLogs() as logged:
            statuses = await self.handshakes(nginx, "127.0.0.2", 150, clients)
        self.assertEqual(statuses, [101] * 150)
        self.assertEqual(self.factory.node.addresses[None], 150)
        warned = [e for e in logged if "name no client" in str(e.get("log_format", ""))]
        self.assertEqual(len(warned), 1)

    async def assertCapPerRealClient(self, header: str) -> None:
        nginx = await self.startNginx(header)
        clients: list[Any] = []
        self.addCleanup(self.closeAll, clients)
        cap = ServerConfig().max_connections_per_ip
        statuses = await self.handshakes(nginx, "127.0.0.2", cap + 1, clients)
        self.assertEqual(statuses, [101] * cap + [429])
        self.assertEqual(await self.handshakes(nginx, "127.0.0.3", 1, clients), [101])
        addresses = self.factory.node.addresses
        # The refused one is gone (closed after its 429).
        self.assertEqual((addresses["127.0.0.2"], addresses["127.0.0.3"], addresses[None]),
                         (cap, 1, 0))

    async def test_withXForwardedForTheCapIsPerClient(self):
        """nginx sends X-Forwarded-For: one client gets 100 connections, its 101st gets
        429, and another client still gets in."""
        await self.assertCapPerRealClient("x-forwarded-for")

    async def test_withForwardedTheCapIsPerClient(self):
        """The same with RFC 7239's Forwarded (``for="…"``)."""
        await self.assertCapPerRealClient("forwarded")



HISTORY = {"chat*": {"size": 300, "ttl": 600}}
RETENTION = Retention(300, 600)
CHAT = "ws4tx:broadcast:chat"
STREAM = "/ws/chat?subscribe-broadcast"


class _Node:
    """A ws4tx node of the test, in process: its service, node and listening port;
    :meth:`stop` takes it down as a restart does (it stops listening, then closes its
    clients)."""

    def __init__(self, service: PushService, port: Any, events: Any) -> None:
        self.service, self.port, self.events = service, port, events
        self.node = service.factory.node

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)

    async def stop(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        if self.service.running:
            await self.service.stopService()


def _publications(client: SSEClient) -> list[str]:
    return [e.json()["data"] for e in client.messages()]


class NginxSSETests(ServerTestCase):
    """SSE and POSTs through nginx to two nodes (no sticky sessions), nginx passing
    WebSockets or stripping ``Upgrade``; neither configuration turns buffering off."""

    config = ServerTestCase.config.replace(history=HISTORY)

    async def _setUp(self) -> None:
        # Two nodes of one Redis, and no node of the base class's.
        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.nodes = [await self.startNode(), await self.startNode()]

    async def startNode(self) -> _Node:
        config = self.config.replace(redis=self.redis_server.address)
        service = PushService(config, authenticator=StaticAuthenticator(identity_from_header))
        events = observe_broker(service.factory.node.router)
        service.startService()
        port = await endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(service.site)
        node = _Node(service, port, events)
        self.addCleanup(node.stop)
        self.assertEqual(await events.get().addTimeout(TIMEOUT, reactor), "connected")
        return node

    async def startNginx(self, upgrade: str) -> Nginx:
        nginx = Nginx([n.number for n in self.nodes], "x-forwarded-for", upgrade)
        self.addCleanup(nginx.close)
        await nginx.start()
        return nginx

    async def stream(self, nginx: Nginx, **headers: str) -> SSEClient:
        """A stream through nginx, its position known (its channels subscribed), or,
        resumed, its recovery's verdict in."""
        response, client = await request(nginx.port, STREAM, headers)
        self.addCleanup(client.close)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        told = "ws4tx.recovered" if "last-event-id" in headers else "ws4tx.positions"
        await client.until(lambda c: bool(c.named(told)))
        return client

    def serving(self) -> _Node:
        """The node that holds the (one) stream."""
        holding = [n for n in self.nodes if n.node.clientCount()]
        self.assertEqual(len(holding), 1)
        return holding[0]

    def publish_(self, payload: str) -> None:
        publish_with_history(self.redis, CHAT, payload.encode(), RETENTION)

    async def assertResumesOnTheOtherNode(self, nginx: Nginx) -> None:
        """A stream through nginx gets each message as it is published (nginx does not
        hold it back); its node restarts; meanwhile 3 messages are published; the stream
        comes back through nginx with its Last-Event-ID, to the other node, and gets
        exactly those 3, once, in order, then live ones."""
        client = await self.stream(nginx)
        first = self.serving()
        for n in range(3):
            self.publish_(f"m{n}")
            # Each on its own, before the next is published: not buffered by nginx.
            await client.until(lambda c, n=n: len(c.messages()) == n + 1)
        last = client.last_id
        assert last is not None
        await first.stop()
        await client.until(lambda c: c.ended)
        for n in range(3, 6):
            self.publish_(f"m{n}")
        again = await self.stream(nginx, **{"last-event-id": last})
        second = self.serving()
        self.assertIsNot(second, first)
        await again.until(lambda c: bool(c.named("ws4tx.recovered")))
        self.assertEqual(again.named("ws4tx.recovered")[0].json()["recovered"], True)
        self.assertEqual(_publications(again), ["m3", "m4", "m5"])
        self.publish_("m6")
        await again.until(lambda c: len(c.messages()) == 4)
        self.assertEqual(_publications(again), ["m3", "m4", "m5", "m6"])

    async def assertPostsThrough(self, nginx: Nginx) -> None:
        """A POST through nginx is answered by a node (its ack) and what it sends
        reaches a stream, whichever node each landed on."""
        client = await self.stream(nginx)
        for n in range(2):  # round robin: both nodes answer one
            status, _, body = await post(nginx.port, "/ws/chat?publish-broadcast",
                                         envelope.encode_event("note", n, n + 1).encode())
            self.assertEqual((status, body), (200, [{"ws4tx": "ack", "id": n + 1,
                                                     "data": None}]))
        await client.until(lambda c: len(c.messages()) == 2)
        # On a facility with history: the publication envelope of the event's envelope.
        self.assertEqual(sorted(json.loads(m.json()["data"])["data"]
                                for m in client.messages()), [0, 1])

    async def test_passingWebSocketsResumeOnTheOtherNode(self) -> None:
        await self.assertResumesOnTheOtherNode(await self.startNginx("websocket"))

    async def test_strippingUpgradeResumeOnTheOtherNode(self) -> None:
        await self.assertResumesOnTheOtherNode(await self.startNginx("strip"))

    async def test_passingWebSocketsPostsGoThrough(self) -> None:
        await self.assertPostsThrough(await self.startNginx("websocket"))

    async def test_strippingUpgradePostsGoThrough(self) -> None:
        await self.assertPostsThrough(await self.startNginx("strip"))

    async def test_webSocketOnlyWhereNginxPassesIt(self) -> None:
        """The same handshake gets 101 through the nginx that passes WebSockets; the one
        that strips Upgrade gets the server's 400 saying to upgrade (what makes a client
        fall back to SSE)."""
        passing = await self.startNginx("websocket")
        stripping = Nginx([n.number for n in self.nodes], "none", "strip")
        self.addCleanup(stripping.close)
        await stripping.start()
        clients: list[Any] = []
        for nginx, expected in ((passing, 101), (stripping, 400)):
            handshake = _Handshake(handshake_request("/ws/chat?subscribe-broadcast"))
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", nginx.port,
                                                    timeout=TIMEOUT)
            await endpoints.connectProtocol(endpoint, handshake)
            clients.append(handshake)
            self.addCleanup(handshake.transport.abortConnection)
            self.assertEqual(await handshake.status.addTimeout(TIMEOUT, reactor), expected)
