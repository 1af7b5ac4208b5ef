"""twisted.web resources: the WebSocket endpoint, the health check, and a root that puts
them beside an optional WSGI application (the Django site) on one port."""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource
from twisted.web.server import Request

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
    otherwise, for load balancers."""

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
        return resource.NoResource()

    def render(self, request: Request) -> Any:
        if self.fallback is not None:
            return self.fallback.render(request)
        return resource.NoResource().render(request)
