"""twisted.web resources: the WebSocket endpoint, the health check, and a root that puts
them beside an optional WSGI application (the Django site) on one port."""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages, resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ws4tx.server import _twisted_internals, _verdict, history_get, posting, sse
from ws4tx.server._log import observer
from ws4tx.server.admission import AddressCounts
from ws4tx.server.auth import HandshakeDenied
from ws4tx.server.metrics import MetricsResource
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory

_log = Logger(observer=observer)

_UPGRADE_TEXT = (
    b"This URL speaks WebSocket only: connect with a WebSocket client "
    b"(an HTTP GET with 'Connection: Upgrade' and 'Upgrade: websocket').\n"
)


def _plain(request: Request, status: int, body: bytes) -> bytes:
    # With the standard reason phrase (Twisted's table lacks some, 429 among them).
    request.setResponseCode(status, HTTPStatus(status).phrase.encode())
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
        if request.method == b"POST":
            return posting.serve(self.factory, request)
        if request.method == b"OPTIONS":
            return self._preflight(request)
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET, POST")
            return _plain(request, 400, b"WebSocket handshakes are GET requests; a "
                                        b"message without a socket is a POST.\n")
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if b"websocket" not in upgrade:
            if history_get.wants_history(request):
                return history_get.serve(self.factory, request)
            if sse.wants_events(request):
                return sse.serve(self.factory, request)
            return self._probe(request)
        if _has_body(request):
            return _plain(request, 400, b"A WebSocket handshake has no body "
                                        b"(no Content-Length, no Transfer-Encoding).\n")
        upgrading = getattr(request.channel, "upgrading", None)
        if upgrading is not None:
            upgrading()  # the WebSocket counts itself, under its client's address
        rendered = self._ws.render(request)
        _forget_upgraded(request)
        return rendered


    def _preflight(self, request: Request) -> bytes:
        """A browser asks whether a page of another origin may POST here (or send
        ``Last-Event-ID``): yes for the Origins the handshake would accept."""
        _verdict.allow_reading(self.factory.config, request)
        request.setResponseCode(204)
        if request.responseHeaders.hasHeader(b"access-control-allow-origin"):
            request.setHeader(b"access-control-allow-methods", b"GET, POST")
            request.setHeader(b"access-control-allow-headers", self._allowedHeaders())
            request.setHeader(b"access-control-max-age", b"600")
        return b""

    def _allowedHeaders(self) -> bytes:
        """What ws4tx.js sends with a POST and a stream: its Content-Type (binary
        messages are ``application/octet-stream``, which a browser asks about), the CSRF
        token (Django's header, ``X-CSRFToken`` unless the authenticator names the site's
        ``CSRF_HEADER_NAME``) and the ``Last-Event-ID`` of a stream that resumes."""
        csrf = getattr(self.factory.authenticator, "csrf_header", None) or "x-csrftoken"
        names = dict.fromkeys(("content-type", "x-csrftoken", csrf, "last-event-id"))
        return ", ".join(names).encode("latin-1")

    def _probe(self, request: Request) -> Any:
        """A plain GET: the refusal the handshake of this URL would get (its status, JSON
        body), else 400 saying to upgrade. ws4tx.js asks when its sockets keep closing
        before they open (see :mod:`ws4tx.server._verdict`)."""
        factory = self.factory
        _verdict.allow_reading(factory.config, request)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
        judged = _verdict.verdict(factory.config, factory.authenticator, request)

        def answer(denied: Optional[HandshakeDenied]) -> None:
            if finished[0]:
                return
            if denied is None:
                request.setHeader(b"upgrade", b"websocket")
                body = _plain(request, 400, _UPGRADE_TEXT)
            else:
                body = _plain(request, denied.status, _verdict.refusal_body(denied))
                request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            _log.failure("judging a plain GET of {uri}", failure, uri=request.uri)
            answer(HandshakeDenied("the server failed to judge this URL", 500))

        judged.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def _forget_upgraded(request: Request) -> None:
    """Once the WebSocket took the connection over (the HTTP channel has no transport
    left), the channel lets go of the handshake's request: the two held each other, so
    the connection left its handshake (about 33 objects: the request, its headers, the
    channel) for the garbage collector to find and free. Let go, they are freed at
    once."""
    channel: Any = request.channel
    if channel.transport is None and request in channel.requests:
        channel.requests.remove(request)


def _has_body(request: Request) -> bool:
    """Whether ``request`` declared a body."""
    if request.getHeader(b"transfer-encoding") is not None:
        return True
    length = request.getHeader(b"content-length")
    return length is not None and length.strip() not in (b"", b"0")


class HealthCheck(resource.Resource):
    """200 while messages flow from Redis (a probe message made the trip lately), 503
    otherwise, for load balancers; the body (JSON) adds the counters of the process
    (``store_failures``: messages published but not stored), behind
    ``Authorization: Bearer <health_token>`` when the configuration has a token. Each
    change to 503 is logged as a warning with its reason, each return to 200 as info."""

    isLeaf = True
    log = Logger(observer=observer)

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        #: Whether the last answer was 200 (None before the first): a change is logged.
        self._was_up: Optional[bool] = None
        token = node.config.health_token
        self._authorization = b"Bearer " + token.encode() if token else None

    def _mayReadCounters(self, request: Request) -> bool:
        if self._authorization is None:
            return True
        given = request.getHeader(b"authorization") or b""
        return hmac.compare_digest(given.strip(), self._authorization)

    def render_GET(self, request: Request) -> bytes:
        node = self.node
        health = node.health()
        self._logTransition(health.up, health.redis, health.reason)
        body: dict[str, Any] = {"status": "ok" if health.up else "unavailable",
                                "redis": health.redis}
        if health.reason is not None:
            body["reason"] = health.reason
        if self._mayReadCounters(request):
            body.update(clients=node.clientCount(), backlog=node.router.backlog,
                        counters=node.counters())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setResponseCode(200 if health.up else 503)
        return json.dumps(body).encode() + b"\n"

    def _logTransition(self, up: bool, redis: str, reason: Optional[str]) -> None:
        """Log once per change: a warning (with the reason) when the answer turns 503,
        info when it is 200 again."""
        was_up, self._was_up = self._was_up, up
        if up == was_up or (up and was_up is None):
            return
        if up:
            self.log.info("health check: 200 again, Redis delivers")
        elif redis == "connected":
            self.log.warn("health check: 503, Redis is connected but the delivery probe "
                          "has not come back lately (Redis too slow or not forwarding)")
        else:
            self.log.warn("health check: 503, not connected to Redis at {url}{why}",
                          url=getattr(getattr(self.node.broker, "address", None),
                                      "safe_url", "the broker"),
                          why=f" ({reason})" if reason else "")


class Root(resource.Resource):
    """Routes by path prefix: ``websocket_url`` to the WebSocket endpoint, the health URL
    to the health check, the metrics URL to the metrics (``metrics_peers``: the directory
    of the other workers' metrics sockets, under ``--workers``), everything else to
    ``fallback`` (a WSGI resource, say) or 404."""

    def __init__(self, factory: PushFactory, fallback: Optional[resource.Resource] = None,
                 metrics_peers: Optional[str] = None) -> None:
        super().__init__()
        self.websocket = WebSocketEndpoint(factory)
        self.health = HealthCheck(factory.node)
        self.metrics = (MetricsResource(factory.node, factory.reactor, metrics_peers)
                        if factory.config.metrics_url else None)
        self.fallback = fallback
        self._ws_prefix = factory.config.websocket_url.encode()
        self._health_path = factory.config.health_url.encode()
        self._metrics_path = factory.config.metrics_url.encode()

    def getChildWithDefault(self, path: bytes, request: Request) -> resource.IResource:
        full = request.path
        if full.startswith(self._ws_prefix):
            return self.websocket
        if self._health_path and full == self._health_path:
            return self.health
        if self.metrics is not None and full == self._metrics_path:
            return self.metrics
        if self.fallback is not None:
            # Hand the fallback the whole path, as if it were the root.
            prepath, postpath = request.prepath, request.postpath
            if prepath and postpath is not None:  # always so while a path is traversed
                postpath.insert(0, prepath.pop())
            return self.fallback
        return pages.notFound()

    def render(self, request: Request) -> Any:
        if self.fallback is not None:
            return self.fallback.render(request)
        return pages.notFound().render(request)


class HeadDeadlines:
    """Connections that must send a whole request (head and body) by a deadline, on one
    timer.

    A request that never ends (slowloris, or a body that trickles in) costs a socket for
    seconds, not hours. The watched connections expire in the order they came, so one
    timer, set for the oldest, serves them all: no timer and no wrapping protocol per
    connection.
    """

    def __init__(self, deadline: float, clock: IReactorTime) -> None:
        self.deadline = deadline
        self._clock = clock
        #: connection -> when its head is due, oldest first.
        self._due: dict[Any, float] = {}
        self._timer: Optional[IDelayedCall] = None

    def watch(self, connection: Any) -> None:
        """Abort ``connection`` unless :meth:`release` is called within the deadline."""
        self._due[connection] = self._clock.seconds() + self.deadline
        if self._timer is None:
            self._timer = self._clock.callLater(self.deadline, self._expire)

    def watching(self, connection: Any) -> bool:
        """Whether ``connection`` owes a request."""
        return connection in self._due

    def release(self, connection: Any) -> None:
        """``connection``'s request is in (or it is gone)."""
        self._due.pop(connection, None)
        if not self._due and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now, due = self._clock.seconds(), self._due
        while due:
            connection, when = next(iter(due.items()))
            if when > now:
                self._timer = self._clock.callLater(when - now, self._expire)
                return
            del due[connection]
            connection.transport.abortConnection()


class _Refused(resource.Resource):
    """The answer to every request of a connection past the per-address cap."""

    isLeaf = True

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def render(self, request: Request) -> bytes:
        return _plain(request, 429, self.reason.encode() + b"\n")


class _DeadlineChannel(_twisted_internals.QuietHTTPChannel):
    """An HTTP connection that must send each whole request (head and body) in time: the
    first from when it connected, each next one from its first byte (an idle keep-alive
    connection is bounded by the Site's idle timeout instead).

    It counts toward the per-address cap from when it connects until it closes or
    upgrades to a WebSocket (which then counts itself): a connection from an address
    past the cap is answered 429 and closed. A connection from a trusted proxy is not
    counted here: whom it is for comes with each request.
    """

    factory: PushSite
    #: Why its requests are refused (past the per-address cap), if they are.
    refused: Optional[str] = None
    #: Whether it is counted, and under what.
    _counted = False
    _client: Optional[str] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.factory.head_deadlines is not None:
            self.factory.head_deadlines.watch(self)
        addresses = self.factory.addresses
        if addresses is not None:
            transport: Any = self.transport
            peer = getattr(transport.getPeer(), "host", "")
            self._client = addresses.client(peer, {})
            if self._client is not None:
                self._counted = True
                try:
                    addresses.add(self._client, peer)
                except HandshakeDenied as e:
                    self.refused = e.reason

    def upgrading(self) -> None:
        """Its request is a WebSocket handshake: the connection stops counting as HTTP."""
        self._release()

    def _release(self) -> None:
        if self._counted and self.factory.addresses is not None:
            self._counted = False
            self.factory.addresses.release(self._client)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.refused is not None:  # answered 429, then closed
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            self.persistent = False
            return False
        return bool(super().checkPersistence(request, version))

    def dataReceived(self, data: bytes) -> None:
        deadlines = self.factory.head_deadlines
        if (deadlines is not None and not self._handlingRequest
                and not deadlines.watching(self)):
            deadlines.watch(self)  # the first byte of a next request
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        if self.factory.head_deadlines is not None:
            self.factory.head_deadlines.release(self)
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.factory.head_deadlines is not None:
            self.factory.head_deadlines.release(self)
        self._release()
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line of the head over twisted.web's bound (``MAX_LENGTH``, 16 KiB): answer
        with the status and the reason before closing (twisted.web just closes)."""
        if self.requests:  # the request line is in: a header line is too long
            status, body = b"431 Request Header Fields Too Large", b"a header line is too long"
        else:
            status, body = b"414 URI Too Long", b"the request line is too long"
        body += b" (at most %d bytes)\n" % self.MAX_LENGTH
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body))
        transport.loseConnection()


class _CappedRequest(Request):
    """A request whose body may not be larger than its Site's cap for its path
    (:meth:`PushSite.body_cap`): refused with 413 and closed as soon as its
    ``Content-Length`` says it is, or as its chunks pass the cap; never handled."""

    _cap: Optional[int] = None
    _received = 0
    _refused = False

    def gotLength(self, length: Optional[int]) -> None:
        super().gotLength(length)
        site = getattr(self.channel, "factory", None)
        if isinstance(site, PushSite):
            self._cap = site.body_cap(_twisted_internals.request_path(self.channel))
        if self._cap is not None and length is not None and length > self._cap:
            self._tooLarge()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self._cap is not None:
            self._received += len(data)
            if self._received > self._cap:
                self._tooLarge()
                return
        super().handleContentChunk(data)

    def process(self) -> None:
        if not self._refused:
            super().process()

    def _tooLarge(self) -> None:
        self._refused = True
        body = _verdict.refusal_body(HandshakeDenied(
            f"the body is larger than max_message_size ({self._cap} bytes)", 413))
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Cache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body))
        transport.loseConnection()


class PushSite(Site):
    """The Site ws4tx listens with: every request must arrive whole (head and body) within
    ``head_deadline`` seconds (0: no deadline); with ``addresses``, each connection counts
    toward the per-address cap; with ``body_limit`` (a path prefix, a size in bytes), the
    bodies of the requests under that prefix are capped (413). HTTP/1.1 only (WebSockets
    upgrade from it; Autobahn does not speak WebSocket over HTTP/2). ``timeout``: seconds a
    keep-alive connection may wait idle for its next request."""

    # Twisted annotates the _GenericHTTPChannelProtocol wrapper (HTTP/2 negotiation);
    # an HTTPChannel subclass is what it wraps, and what this Site wants (HTTP/1.1 only).
    protocol = _DeadlineChannel  # type: ignore[assignment]

    requestFactory = _CappedRequest

    def __init__(self, resource: resource.Resource, head_deadline: float,
                 reactor: IReactorTime, addresses: Optional[AddressCounts] = None,
                 body_limit: Optional[tuple[str, int]] = None, **kwargs: Any) -> None:
        super().__init__(resource, reactor=reactor, **kwargs)
        self.head_deadlines = HeadDeadlines(head_deadline, reactor) if head_deadline else None
        self.addresses = addresses
        #: The paths whose request bodies are capped (a prefix), and the cap in bytes.
        self._body_limit = (None if body_limit is None
                            else (body_limit[0].encode(), body_limit[1]))

    def body_cap(self, path: bytes) -> Optional[int]:
        """The largest body a request of ``path`` may have (None: the Site does not cap
        it; the WSGI application has its own limits)."""
        limit = self._body_limit
        if limit is None or not path.startswith(limit[0]):
            return None
        return limit[1]

    def getResourceFor(self, request: Request) -> resource.IResource:
        refused = getattr(request.channel, "refused", None)
        if refused is not None:
            return _Refused(refused)
        return super().getResourceFor(request)  # type: ignore[no-any-return]
