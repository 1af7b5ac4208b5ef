"""The per-address cap behind a real nginx (Debian's package, started by the test as a
child with its own prefix and configuration in a temporary directory, on a free port).

Without a header naming the client, every connection comes from nginx's 127.0.0.1, a
trusted proxy by default: 150 of them are all accepted (the cap of 100 would otherwise
turn away the 101st user). With ``X-Forwarded-For`` or ``Forwarded``, the cap applies to
each real client: clients connect to nginx from 127.0.0.2 and 127.0.0.3.

A missing nginx skips these tests here and fails them under CI, as a missing browser does
(.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs

from ws4tx.server.config import ServerConfig

from test._process import Twistd
from test._server import ServerTestCase
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


class Nginx:
    """One nginx in the foreground (``daemon off``), proxying WebSockets to ``upstream``;
    :meth:`start` fires once it listens (its master says it starts its worker, which it
    does after binding the port)."""

    def __init__(self, upstream: int, header: str) -> None:
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
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
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

