"""twisted.web resources: the WebSocket endpoint, the health check, and a root that puts
them beside an optional WSGI application (the Django site) on one port."""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import pages, resource
from twisted.web.server import Request, Site

from ws4tx.protocol import PushFactory

_UPGRADE_TEXT = (
    b"This URL speaks WebSocket only: connect with a WebSocket client "
    b"(an HTTP GET with 'Connection: Upgrade' and 'Upgrade: websocket').\n"
)


def _plain(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body


class WebSocketEndpoint(resource.Resource):
    """Upgrades WebSocket handshakes; answers anything else with 400 and the reason."""

    isLeaf = True

    def __init__(self, factory: PushFactory) -> None:
        super().__init__()
        self.factory = factory
        self._ws = WebSocketResource(factory)

    def render(self, request: Request) -> Any:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return _plain(request, 400, b"WebSocket handshakes are GET requests.\n")
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if b"websocket" not in upgrade:
            request.setHeader(b"upgrade", b"websocket")
            return _plain(request, 400, _UPGRADE_TEXT)
        return self._ws.render(request)


class HealthCheck(resource.Resource):
    """200 while messages flow from Redis (a probe message made the trip lately), 503
    otherwise, for load balancers; the body (JSON) adds the counters of the process."""

    isLeaf = True

    def __init__(self, factory: PushFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        broker = self.factory.broker
        up = bool(broker.delivering)
        body = {
            "status": "ok" if up else "unavailable",
            "redis": "delivering" if up else (
                "connected" if broker.connected else "disconnected"),
            "clients": self.factory.router.memberCount(),
            "backlog": self.factory.router.backlog,
            "counters": self.factory.counters(),
        }
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setResponseCode(200 if up else 503)
        return json.dumps(body).encode() + b"\n"


class Root(resource.Resource):
    """Routes by path prefix: ``websocket_url`` to the WebSocket endpoint, the health URL
    to the health check, everything else to ``fallback`` (a WSGI resource, say) or 404."""

    def __init__(self, factory: PushFactory, fallback: Optional[resource.Resource] = None) -> None:
        super().__init__()
        self.websocket = WebSocketEndpoint(factory)
        self.health = HealthCheck(factory)
        self.fallback = fallback
        self._ws_prefix = factory.config.websocket_url.encode()
        self._health_path = factory.config.health_url.encode()

    def getChildWithDefault(self, path: bytes, request: Request) -> resource.Resource:
        full = request.path
        if full.startswith(self._ws_prefix):
            return self.websocket
        if self._health_path and full == self._health_path:
            return self.health
        if self.fallback is not None:
            # Hand the fallback the whole path, as if it were the root.
            request.postpath.insert(0, request.prepath.pop())
            return self.fallback
        return pages.notFound()

    def render(self, request: Request) -> Any:
        if self.fallback is not None:
            return self.fallback.render(request)
        return pages.notFound().render(request)


class _HeadDeadline(ProtocolWrapper):
    """Drops a connection whose first request head (request line and headers) has not
    arrived within the deadline: a handshake that never ends (slowloris) costs a socket for
    seconds, not hours. After the head it is a plain pass-through."""

    factory: "HeadDeadlineFactory"

    def __init__(self, factory: "HeadDeadlineFactory", wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._timer: Optional[IDelayedCall] = None
        self._tail = b""

    def makeConnection(self, transport: Any) -> None:
        self._timer = self.factory.clock.callLater(self.factory.deadline, self._expire)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._cancel()
            else:
                self._tail = seen[-3:]
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self._cancel()
        super().connectionLost(reason)

    def _cancel(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self.transport.abortConnection()


class HeadDeadlineFactory(WrappingFactory):
    """Wraps a Site so that every connection must send its request head in time."""

    protocol = _HeadDeadline
    noisy = False

    def __init__(self, site: Site, deadline: float, clock: IReactorTime) -> None:
        super().__init__(site)
        self.deadline = deadline
        self.clock = clock

    def logPrefix(self) -> str:
        """Log as the site itself ("Site starting on 8000")."""
        return self.wrappedFactory.logPrefix()  # type: ignore[no-any-return]
