"""The WebSocket protocol: ws4redis's URL scheme, flags, replay, publishing, echo and
heartbeat, plus the ws4tx event envelope for clients that ask for it.

A connection's channels are decided once, during the handshake, from the facility in its
path, the flags in its query string and the identity its authenticator gives: a client
only ever gets its own user, group and session channels.
"""

from __future__ import annotations

import inspect
from collections import Counter
from fnmatch import fnmatchcase
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import closecodes, envelope, schema
from ws4tx.server import _internals
from ws4tx.server._forwarded import client_address, is_trusted
from ws4tx.server._origin import origin_allowed
from ws4tx.server._ratelimit import Budgets, TokenBucket
from ws4tx.server.auth import (
    AnonymousAuthenticator,
    Grant,
    HandshakeDenied,
    HandshakeRequest,
    IAuthenticator,
)
from ws4tx.server.broker import BrokerUnavailable, IBroker, NotStored, publish_to
from ws4tx.server.config import ServerConfig
from ws4tx.server.handlers import EventHandler, EventRefused, Server, handler_method
from ws4tx.naming import (
    ANONYMOUS,
    Flags,
    Identity,
    InvalidFacility,
    audience_channels,
    check_facility,
    parse_flags,
)
from ws4tx.server.router import Router, is_text

_log = Logger()

#: How many of its own messages a client without ``echo`` may have in flight.
_MAX_UNECHOED = 256


class PushProtocol(WebSocketServerProtocol):
    """One browser connection."""

    factory: "PushFactory"

    identity: Identity = ANONYMOUS
    facility: str = ""
    speaks_events: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._channels: list[str] = []
        self._publish_to: list[str] = []
        self._echo = False
        self._unechoed: Counter[tuple[str, bytes]] = Counter()
        self._joined = False
        self._interrupted = False
        self._paused_at: Optional[float] = None
        self._queued_bytes = self._queued_messages = 0
        self._dropped = False
        self._bucket: Optional[TokenBucket] = None
        self._over_limit = 0
        self._fragments = 0
        #: Whether this client's messages are stored for replay, and whether it has gone
        #: over its storage budget (logged once).
        self._stores = self._over_budget = False
        #: The address this connection counts under for the per-address cap (the peer,
        #: or the client a trusted proxy names); counted once its handshake came.
        self._ip = ""
        self._counted = False
        #: The authentication under way (an authenticator that answers later), if any.
        self._authenticating: Optional[defer.Deferred[Any]] = None
        self._lost = False

    # Handshake

    def connectionMade(self) -> None:
        self._ip = getattr(self.transport.getPeer(), "host", "")
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        # A client that goes away while it is being authenticated is never opened: Autobahn
        # would answer the handshake (and call onOpen) once the authenticator answers.
        self._lost = True
        if self._authenticating is not None:
            self._authenticating.cancel()
        if self._counted:
            per_ip = self.factory.per_ip
            per_ip[self._ip] -= 1
            if not per_ip[self._ip]:
                del per_ip[self._ip]
        super().connectionLost(reason)

    def _countAddress(self, request: ConnectionRequest) -> None:
        """Count this connection under its client's address; 429 past the cap."""
        factory, config = self.factory, self.factory.config
        peer = self._ip
        forwarded = request.headers.get("x-forwarded-for")
        self._ip = client_address(peer, forwarded, factory.trusted_proxies)
        factory.per_ip[self._ip] += 1
        self._counted = True
        if config.max_connections_per_ip and \
                factory.per_ip[self._ip] > config.max_connections_per_ip:
            if not forwarded and not factory.warned_proxy and \
                    is_trusted(peer, factory.trusted_proxies):
                factory.warned_proxy = True
                _log.warn(
                    "{n} connections from {peer}, a trusted proxy that sends no "
                    "X-Forwarded-For: every client behind it counts as that one address "
                    "(have the proxy send X-Forwarded-For, or set --max-connections-per-ip)",
                    n=factory.per_ip[self._ip], peer=peer)
            raise ConnectionDeny(429, "too many connections from your address")

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Check the handshake and authenticate it; the answer (the subprotocol) comes
        at once for an authenticator that answers at once, else as a Deferred."""
        handshake = self._checkHandshake(request)
        try:
            identity = self.factory.authenticator.authenticate(handshake)
        except HandshakeDenied as e:
            raise ConnectionDeny(e.status, e.reason) from None
        if inspect.iscoroutine(identity):
            identity = defer.Deferred.fromCoroutine(identity)
        if isinstance(identity, defer.Deferred):
            self._authenticating = identity
            identity.addBoth(self._authenticated)
            return identity.addCallbacks(self._admit, _denied,
                                         callbackArgs=(request, handshake))
        return self._admit(identity, request, handshake)

    def _authenticated(self, result: Any) -> Any:
        self._authenticating = None
        return result

    def succeedHandshake(self, res: Any) -> None:
        """Answer the handshake, unless the client went away while it was authenticated
        (then nothing more happens: no 101, no onOpen, no subscription)."""
        if not self._lost:
            super().succeedHandshake(res)

    def _checkHandshake(self, request: ConnectionRequest) -> HandshakeRequest:
        """What the authenticator gets, once the limits, the URL and the Origin passed."""
        config = self.factory.config
        self._countAddress(request)
        query = urlsplit(self.http_request_uri).query
        if len(query) > config.max_query_length:
            raise ConnectionDeny(414, "the query string is too long")
        path = request.path
        if not path.startswith(config.websocket_url):
            raise ConnectionDeny(404, f"WebSocket URLs start with {config.websocket_url}")
        try:
            facility = check_facility(path[len(config.websocket_url):],
                                      config.max_facility_length)
        except InvalidFacility as e:
            raise ConnectionDeny(400, str(e)) from None
        origin = request.headers.get("origin")
        if origin and config.allowed_origins and not origin_allowed(
            origin, config.allowed_origins
        ):
            raise ConnectionDeny(403, "this Origin is not allowed")
        return HandshakeRequest(
            peer=request.peer,
            host=request.host,
            path=path,
            query=query,
            params=parse_qs(query, keep_blank_values=True),
            headers=request.headers,
            facility=facility,
            flags=parse_flags(query),
            secure=self._isSecure(),
        )

    def _isSecure(self) -> bool:
        """Whether the connection came over TLS (directly or through twisted.web)."""
        return bool(ISSLTransport.providedBy(self.transport)
                    or getattr(self.factory, "isSecure", False))

    def _admit(self, identity: Identity | Grant, request: ConnectionRequest,
               handshake: HandshakeRequest) -> Optional[str]:
        """Take the identity the authenticator gave: decide the channels; return the
        subprotocol to answer."""
        config = self.factory.config
        flags = handshake.flags
        if isinstance(identity, Grant):
            if identity.flags is not None:
                flags = identity.flags
            identity = identity.identity
        if not self._mayPublish(identity, handshake.facility):
            flags = Flags(flags.subscribe, frozenset(), flags.echo)
        prefix = config.prefix
        self.identity, self.facility = identity, handshake.facility
        self._channels = audience_channels(prefix, self.facility, flags.subscribe, identity)
        self._publish_to = audience_channels(prefix, self.facility, flags.publish, identity)
        self._stores = bool(self._publish_to) and config.expire > 0 and any(
            fnmatchcase(self.facility, pattern) for pattern in config.stored_facilities)
        self._echo = flags.echo
        if envelope.SUBPROTOCOL in request.protocols:
            self.speaks_events = True
            return envelope.SUBPROTOCOL
        # ws4redis answers any requested subprotocol by echoing it.
        return request.protocols[0] if request.protocols else None

    def _mayPublish(self, identity: Identity, facility: str) -> bool:
        """Whether the site lets this client keep its publish flags: not when client
        publishing is off, for anonymous clients (unless allowed), nor on a facility a
        server handler speaks for (unless allowed)."""
        config = self.factory.config
        if not config.client_publish:
            return False
        if identity.user is None and not config.anonymous_publish:
            return False
        return facility not in self.factory.handlers or config.handler_facility_publish

    def onOpen(self) -> None:
        self._joined = True
        config = self.factory.config
        if config.rate_limit:
            self._bucket = TokenBucket(config.rate_limit, config.rate_burst,
                                       self.factory.reactor)
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            # Behind twisted.web the HTTP channel is still registered as the producer.
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        #: Fires once this client's channels are subscribed (and its replay is on the way).
        self.subscribed = self.factory.router.join(self, self._channels)
        self.subscribed.addCallback(self._replay)
        if not self.factory.broker.connected:
            self.deliveryInterrupted()
        handler = self.factory.handlers.get(self.facility)
        if handler is not None:
            self._call(handler.on_connect, None, self)

    def _replay(self, _: object) -> None:
        for channel in self._channels:
            self.factory.broker.fetch(channel).addCallbacks(self._sendStored, self._noReplay)

    def _sendStored(self, payload: Optional[bytes]) -> None:
        if payload is None or self.state != self.STATE_OPEN:
            return
        forged = envelope.server_voice(payload)
        if forged is not None:
            _log.warn("not replaying a stored message to {peer}: it is {what}",
                      peer=self.peer, what=forged)
            return
        self.sendMessage(payload, isBinary=not is_text(payload))

    def _noReplay(self, failure: Failure) -> None:
        _log.debug("no replay for {peer}: {error}", peer=self.peer,
                       error=failure.getErrorMessage())

    # Delivery (the hot path: nothing here that could be done once per message)

    def deliver(self, prepared: Any, channel: str, payload: bytes) -> None:
        """Write a prepared frame; skip a message this client sent itself without echo."""
        unechoed = self._unechoed
        if unechoed:
            key = (channel, payload)
            if unechoed[key]:
                unechoed[key] -= 1
                if not unechoed[key]:
                    del unechoed[key]
                return
        if self._paused_at is not None and self._overflows(len(payload)):
            return
        if self.state != self.STATE_OPEN:
            # No data frame after our close frame (RFC 6455, 5.5.1), which Autobahn's
            # sendPreparedMessage() would still write.
            return
        if self._perMessageCompress is None and not self.send_queue:
            # What sendPreparedMessage() ends up doing, without its per-frame debug-log
            # argument building (a large share of the fan-out CPU).
            self.transport.write(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    # Backpressure: the transport pauses us when its buffer is full.

    def pauseProducing(self) -> None:
        # Twisted calls this again on every write while the buffer is full: the first
        # call starts the slow timeout.
        if self._paused_at is None:
            self._paused_at = self.factory.reactor.seconds()

    def resumeProducing(self) -> None:
        self._paused_at = None
        self._queued_bytes = self._queued_messages = 0

    def stopProducing(self) -> None:
        pass

    def _overflows(self, size: int) -> bool:
        """Count a message written while the socket does not drain; drop a slow client."""
        if self._dropped:
            return True
        config = self.factory.config
        self._queued_bytes += size
        self._queued_messages += 1
        assert self._paused_at is not None
        if (self._queued_bytes <= config.max_queue_bytes
                and self._queued_messages <= config.max_queue_messages
                and self.factory.reactor.seconds() - self._paused_at <= config.slow_timeout):
            return False
        self.factory.stats["slow_consumers"] += 1
        _log.warn("dropping slow client {peer}: {bytes} bytes in {n} messages waiting, not "
                  "drained for {t:.1f} s", peer=self.peer, bytes=self._queued_bytes,
                  n=self._queued_messages, t=self.factory.reactor.seconds() - self._paused_at)
        self._dropped = True
        self.closeWith(closecodes.SLOW_CONSUMER, "too slow: messages were not read in time")
        self.dropConnection(abort=True)
        return True

    def deliveryInterrupted(self) -> None:
        """The server lost Redis: tell an event client (raw payloads must not change)."""
        self._unechoed.clear()
        if not self._interrupted:
            self._interrupted = True
            self.emit(envelope.INTERRUPTED_EVENT)

    def deliveryResumed(self) -> None:
        if self._interrupted:
            self._interrupted = False
            self.emit(envelope.RESUMED_EVENT)

    def messagesDropped(self, count: int) -> None:
        """The server fell behind and dropped ``count`` messages meant for this client."""
        self.emit(envelope.DROPPED_EVENT, {"messages": count})

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client (only to clients that speak the envelope)."""
        if self.speaks_events and self.state == self.STATE_OPEN:
            self.sendMessage(envelope.encode_event(event, data).encode())

    # Incoming

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        """Count the frames of a message: a message in thousands of tiny fragments costs
        the server far more than its size says."""
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments > self.factory.config.max_fragments:
            _internals.fail_connection(
                self, closecodes.POLICY_VIOLATION,
                f"a message may arrive in at most {self.factory.config.max_fragments} frames")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        config = self.factory.config
        if not isBinary and config.heartbeat is not None and payload == self.factory.heartbeat:
            self.sendMessage(payload)
            return
        if self._bucket is not None and not self._bucket.take():
            self._overLimit()
            return
        if self.speaks_events and not isBinary and envelope.is_envelope(payload):
            self._onEnvelope(payload)
            return
        if self._publish_to and envelope.is_envelope(payload):
            # Only the server speaks in envelopes to event clients; a raw payload that
            # they would read as one (an event, an acknowledgement) is never published.
            self.factory.stats["raw_envelopes"] += 1
            self.closeWith(closecodes.POLICY_VIOLATION,
                           "raw messages may not look like ws4tx envelopes")
            return
        # A raw client cannot be told of a failure without changing its payloads:
        # _publishFailed logs it.
        self._publish(payload).addErrback(lambda _: None)

    def _overLimit(self) -> None:
        """A message over the rate limit is dropped; the sender is told (if it speaks
        events) and, past three times the burst, closed with 1008."""
        self._over_limit += 1
        self.factory.stats["rate_limited"] += 1
        if self._over_limit == 1:
            _log.warn("{peer} is over the rate limit", peer=self.peer)
        if self._over_limit > 3 * self.factory.config.rate_burst:
            self.closeWith(closecodes.POLICY_VIOLATION, "rate limit exceeded")
            return
        self.emit(envelope.ERROR_EVENT, {"message": "rate limit exceeded: message dropped"})

    def _publish(self, payload: bytes) -> defer.Deferred[int]:
        if not self._publish_to:
            _log.debug("{peer} sent a message but has no publish flag", peer=self.peer)
            return defer.succeed(0)
        if not self._echo:
            for channel in self._publish_to:
                if channel in self._channels:
                    self._remember(channel, payload)
        expire, unstored = self._storage(payload)
        d = publish_to(self.factory.broker, self._publish_to, payload, expire)
        if unstored:
            d.addCallback(_raiseNotStored, unstored)
        return d.addErrback(self._publishFailed, payload)

    def _storage(self, payload: bytes) -> tuple[int, str]:
        """How long to store ``payload`` for replay (0: not at all), and why a message
        that should have been stored is not ("": it is, or it was never to be)."""
        config, budgets = self.factory.config, self.factory.store_budgets
        if not self._stores:
            return 0, ""
        if budgets is None or budgets.take(self.identity.user or ("@", self._ip),
                                           len(payload) * len(self._publish_to)):
            return config.expire, ""
        self.factory.stats["store_refused"] += 1
        if not self._over_budget:
            self._over_budget = True
            _log.warn("{peer} ({who}) is over its storage budget of {budget} bytes a "
                      "minute: its messages are delivered but not stored",
                      peer=self.peer, who=self.identity.user or "anonymous",
                      budget=config.store_budget)
        return 0, f"over the storage budget of {config.store_budget} bytes a minute"

    def _remember(self, channel: str, payload: bytes) -> None:
        if len(self._unechoed) >= _MAX_UNECHOED:
            self._unechoed.clear()
        self._unechoed[(channel, payload)] += 1

    def _publishFailed(self, failure: Failure, payload: bytes) -> Failure:
        if failure.check(NotStored):
            # Delivered (its echo, if any, is on the way): only the replay copy is missing.
            _log.info("the message of {peer} reached {receivers} subscribers but was not "
                      "stored: {reason}", peer=self.peer, receivers=failure.value.receivers,
                      reason=failure.value.reason)
            return failure
        for channel in self._publish_to:
            key = (channel, payload)
            if self._unechoed[key] > 1:
                self._unechoed[key] -= 1
            else:
                self._unechoed.pop(key, None)
        _log.warn("publishing for {peer} failed: {error}", peer=self.peer,
                      error=failure.value)
        return failure

    def _onEnvelope(self, payload: bytes) -> None:
        try:
            message = envelope.decode(payload)
        except envelope.InvalidEnvelope as e:
            self.emit(envelope.ERROR_EVENT, {"message": f"invalid envelope: {e}"})
            return
        if not isinstance(message, envelope.Event):
            self.emit(envelope.ERROR_EVENT, {"message": "clients may only send events"})
            return
        handler = self.factory.handlers.get(self.facility)
        method = handler_method(handler, message.event)
        if method is not None:
            self._call(method, message.id, self, message.data)
        elif envelope.is_reserved(message.event):
            self._answer(defer.fail(EventRefused(
                f"event names starting with {envelope.RESERVED_PREFIX!r} are the "
                "server's")), message.id)
        elif self._publish_to:
            forwarded = envelope.encode_event(message.event, message.data).encode()
            d = self._publish(forwarded).addCallbacks(lambda _: None, _notStored)
            self._answer(d, message.id)
        else:
            self._answer(defer.fail(EventRefused(f"no handler for event {message.event!r}")),
                         message.id)

    def _call(self, method: Any, ack_id: Optional[int], *args: Any) -> None:
        d = defer.maybeDeferred(method, *args)
        d.addCallback(lambda r: defer.ensureDeferred(r) if inspect.iscoroutine(r) else r)
        self._answer(d, ack_id)

    def _answer(self, d: defer.Deferred[Any], ack_id: Optional[int]) -> None:
        def ok(result: Any) -> None:
            if ack_id is not None:
                self._sendEnvelope(envelope.encode_ack(ack_id, result))  # may raise: failed()

        def failed(failure: Failure) -> None:
            if failure.check(EventRefused, BrokerUnavailable):
                message = str(failure.value)
            else:
                _log.failure("event handler failed for {peer}", failure, peer=self.peer)
                message = "internal error"
            if ack_id is not None:
                self._sendEnvelope(envelope.encode_ack(ack_id, error=message))
            else:
                self.emit(envelope.ERROR_EVENT, {"message": message})

        d.addCallback(ok).addErrback(failed).addErrback(
            lambda f: _log.failure("answering {peer} failed", f, peer=self.peer))

    def _sendEnvelope(self, text: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(text.encode())

    # Closing

    def closeWith(self, code: int, reason: str) -> None:
        """Start the closing handshake with any code (Autobahn's sendClose() refuses the
        protocol-level ones such as 1001, going away)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:120])

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if self._joined:
            self._joined = False
            self.factory.router.leave(self)
            self.factory.clientLeft()
            handler = self.factory.handlers.get(self.facility)
            if handler is not None:
                self._call(handler.on_close, None, self)


def _raiseNotStored(receivers: int, reason: str) -> int:
    raise NotStored(receivers, reason)


def _notStored(failure: Failure) -> dict[str, Any]:
    """A forwarded event that was delivered but not stored is acknowledged (not an error:
    a retry would deliver it twice) with ``{"stored": false, "reason": ...}``."""
    failure.trap(NotStored)
    return {"stored": False, "reason": failure.value.reason}


def _denied(failure: Failure) -> None:
    """An authenticator's HandshakeDenied, as the HTTP answer Autobahn sends; an
    authentication cancelled because the client went away ends quietly (see
    :meth:`PushProtocol.succeedHandshake`)."""
    if failure.check(defer.CancelledError):
        return None
    failure.trap(HandshakeDenied)
    raise ConnectionDeny(failure.value.status, failure.value.reason)


class PushFactory(WebSocketServerFactory):
    """Builds :class:`PushProtocol` and holds what all connections share."""

    protocol = PushProtocol

    def __init__(
        self,
        config: ServerConfig,
        broker: IBroker,
        authenticator: Optional[IAuthenticator] = None,
        handlers: tuple[type[EventHandler], ...] = (),
        server: Optional[Server] = None,
        reactor: Optional[IReactorTime] = None,
    ) -> None:
        # No Server header in the 101 answer (Autobahn sends its name and version).
        super().__init__(reactor=reactor, server=None)
        _internals.format_lazily()
        self.config = config
        self.broker = broker
        self.authenticator = authenticator or AnonymousAuthenticator()
        self.heartbeat = config.heartbeat.encode() if config.heartbeat is not None else None
        self.router = Router(broker, self.prepareMessage, config.max_outgoing_size,
                             clock=self.reactor, max_lag=config.max_lag,
                             max_backlog=config.max_backlog)
        #: What event handlers may do beyond their client (not Autobahn's ``server``,
        #: the string of the Server header).
        self.handler_server = server or Server(broker, config.prefix)
        self.handlers: dict[str, EventHandler] = {
            h.facility: h(self.handler_server) for h in handlers}
        self._drain_waiters: list[defer.Deferred[None]] = []
        #: Counters: clients dropped for not reading, messages over the rate limit, raw
        #: messages refused because they looked like the server's envelopes, client
        #: messages not stored because their sender was over its storage budget.
        self.stats = {"slow_consumers": 0, "rate_limited": 0, "raw_envelopes": 0,
                      "store_refused": 0}
        #: What each user (or anonymous address) may still store for replay.
        self.store_budgets = Budgets(config.store_budget / 60, config.store_budget,
                                     self.reactor) if config.store_budget else None
        #: Open connections per client address (see ``trusted_proxies``).
        self.per_ip: Counter[str] = Counter()
        #: Networks whose X-Forwarded-For names the client.
        self.trusted_proxies = schema.trusted_networks(config.trusted_proxies)
        #: Whether the log said once that a trusted proxy sends no X-Forwarded-For.
        self.warned_proxy = False
        self.setProtocolOptions(
            webStatus=False,
            # Send a close frame with the reason on a protocol violation (not just a drop).
            failByDrop=False,
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_frame_size,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout,
            openHandshakeTimeout=config.handshake_timeout,
            maxConnections=config.max_connections,
            # Origin is checked by ws4tx itself (Autobahn's check trips on default ports).
            allowNullOrigin=True,
        )

    def counters(self) -> dict[str, int]:
        """Every counter of this process: the router's, the broker's and the clients'."""
        return {**self.router.stats, **getattr(self.broker, "stats", {}), **self.stats}

    def closeAll(self, code: int = closecodes.GOING_AWAY, reason: str = "server shutting down") -> int:
        """Start the closing handshake with every client; return how many there are."""
        clients = list(self.router.hub.clients())
        for client in clients:
            client.closeWith(code, reason)  # type: ignore[attr-defined]
        return len(clients)

    def dropAll(self) -> None:
        """Drop every client's connection at once."""
        for client in list(self.router.hub.clients()):
            client.dropConnection(abort=True)  # type: ignore[attr-defined]

    def whenDrained(self) -> defer.Deferred[None]:
        """Fires once no client is connected."""
        if not self.router.memberCount():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    def clientLeft(self) -> None:
        """Called by a protocol after it left the router."""
        if self._drain_waiters and not self.router.memberCount():
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
