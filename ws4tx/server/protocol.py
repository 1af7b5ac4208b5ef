"""The WebSocket connection: Autobahn's glue, delivery with backpressure, and what a client
sends (ws4redis's publishing, echo and heartbeat, the ws4tx event envelope).

What a connection may do is decided once, during the handshake, by
:mod:`ws4tx.server.admission` from the URL and the identity its authenticator gives: a
client only ever gets its own user, group and session channels. A connection joins and
leaves through its :class:`~ws4tx.server.node.Node` (which owns the channels, counters and
handlers); what it gets of its channels, and when (replay, recovery, catch-ups), its
:class:`~ws4tx.server.streams.ClientStream` decides, driving the connection through the
:class:`~ws4tx.server.streams.StreamTransport` methods (framing, writing, pacing). Events go
to :mod:`ws4tx.server.events`.
"""

from __future__ import annotations

from collections import Counter
from typing import AbstractSet, Any, Iterable, Optional, cast
from urllib.parse import urlsplit

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx import closecodes, envelope
from ws4tx.history import (
    Position,
    parse_recover,
)
from ws4tx.naming import ANONYMOUS, Flags, Identity
from ws4tx.server import _authgate, _internals, admission, deflate
from ws4tx.server._delivery_events import DeliveryEvents
from ws4tx.server._flow import Flow
from ws4tx.server._log import observer
from ws4tx.server._ratelimit import TokenBucket
from ws4tx.server._resume import IResumer, Renewal, read_counter, resume
from ws4tx.server._runs import Run
from ws4tx.server._sending import Sender
from ws4tx.server.auth import (
    AnonymousAuthenticator,
    Grant,
    HandshakeDenied,
    HandshakeRequest,
    IAuthenticator,
)
from ws4tx.server.expiry import Expiry, reauthenticate, with_token
from ws4tx.server.handlers import EventRefused
from ws4tx.server.node import Node, close_label
from ws4tx.server.streams import LOW_MARK, ClientStream, is_text
from ws4tx.server.subscriptions import Subscriptions

_log = Logger(observer=observer)

#: Autobahn's open state, read once per client and message of a fan-out.
_OPEN: int = WebSocketServerProtocol.STATE_OPEN
#: The positions of a client that asks to recover nothing, or has joined (its stream
#: keeps what it asked): one empty dict that every such connection keeps (read, never
#: written), not one each.
_NOTHING_TO_RECOVER: dict[str, Position] = {}


@implementer(IPushProducer)
# Autobahn's own bases disagree on two attributes' types, which mypy checks once a class
# has a second base.
class PushProtocol(DeliveryEvents, WebSocketServerProtocol, Sender):  # type: ignore[misc]
    """One browser connection; the producer of its transport (a slow reader pauses its
    delivery)."""

    factory: PushFactory

    identity: Identity = ANONYMOUS
    facility: str = ""
    speaks_events: bool = False
    #: Its streams (see ws4tx.server.streams): what it gets of its channels, and when;
    #: set when it joins the node (in onOpen, before anything can be delivered).
    _stream: ClientStream

    def __init__(self) -> None:
        super().__init__()
        self._admitted: Optional[admission.Admission] = None
        self._channels: tuple[str, ...] = ()
        self._publish_to: tuple[str, ...] = ()
        self._unechoed: Counter[tuple[str, bytes]] = Counter()
        self._joined = False
        self._interrupted = False
        self._bucket: Optional[TokenBucket] = None
        self._over_limit = 0
        self._fragments = 0
        self._over_budget = False
        #: The address this connection counts under for the per-address cap (the peer,
        #: or the client a trusted proxy names; None: a trusted proxy that names none),
        #: and whether it is counted (once its handshake came).
        self._address: Optional[str] = None
        self._counted = False
        #: The authentication under way (an authenticator that answers later), if any.
        self._authenticating: Optional[defer.Deferred[Any]] = None
        self._lost = False
        #: Headers of a refusal's answer (``Retry-After``).
        self._refusalHeaders: list[tuple[str, str]] = []
        #: The deflate window of the compressed frames this client takes (None: plain).
        self._window: Optional[int] = None
        #: The positions it asked to recover from, by channel (``recover=``), until it joins.
        self._recover: dict[str, Position] = _NOTHING_TO_RECOVER
        #: Its flow control (made once the factory is known: connectionMade). What is
        #: queued for this client, written as its socket drains (recovered messages, and
        #: what must come after them): (channel, prepared, payload), or ("", None, an
        #: event's text).
        self._flow: Flow[tuple[str, Optional[deflate.Message], bytes]]
        #: The handshake as the authenticator saw it, and the deadline of a token
        #: connection's credential (see :mod:`ws4tx.server.expiry`).
        self._handshake: Optional[Any] = None
        self._expiry: Optional[Expiry] = None
        #: The channels it added by ``subscribe`` frames (an event client).
        self.subscriptions = Subscriptions(self)
        #: The flags it was admitted with, the value of its user's revocation counter
        #: when it was (known at once for a resumed connection), and the renewal of its
        #: resume token (see :mod:`ws4tx.server._resume`).
        self._flags = Flags()
        self._counter: Optional[int] = None
        #: When its identity was last really authenticated (kept across resumes).
        self._authenticated_at: Optional[float] = None
        self._renewal: Optional[Renewal] = None

    @property
    def node(self) -> Node:
        """The node this connection belongs to."""
        return self.factory.node

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this client listens to (by its URL)."""
        return self._channels

    @property
    def subscribed(self) -> defer.Deferred[None]:
        """Fires once this client's channels are subscribed (and its replay is on the
        way): once open."""
        return self._stream.subscribed

    @property
    def handshake(self) -> Optional[Any]:
        """The handshake as the authenticator saw it (None before it came)."""
        return self._handshake

    def isOpen(self) -> bool:
        """Whether the connection is open (it may still get frames)."""
        return self._joined and self.state == self.STATE_OPEN

    # Handshake

    def connectionMade(self) -> None:
        self._flow = Flow(self.factory.config, self.factory.reactor, self.node.stats,
                          self._dropSlow)
        super().connectionMade()
        _internals.share_send_queue(self)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        """Autobahn's, with a queue of its own for writes it delays (see
        :func:`~ws4tx.server._internals.share_send_queue`)."""
        if sync or chopsize:
            _internals.own_send_queue(self)
        super().sendData(data, sync, chopsize)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A client that goes away while it is being authenticated is never opened: Autobahn
        # would answer the handshake (and call onOpen) once the authenticator answers.
        self._lost = True
        if self._authenticating is not None:
            self._authenticating.cancel()
        if self._counted:
            self._counted = False
            self.node.addresses.release(self._address)
        super().connectionLost(reason)

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Admit the handshake: the limits, the URL and the Origin, then the authenticator
        (at once for one that answers at once, else a Deferred); answer the subprotocol."""
        try:
            self._countAddress(request)
            handshake = admission.check_request(
                self.factory.config, peer=request.peer, host=request.host,
                path=request.path, query=urlsplit(self.http_request_uri).query,
                headers=request.headers, secure=self._isSecure(),
                protocols=request.protocols)
            self._recover = _recover_from(handshake.params.get("recover", []))
            answer = self._authenticate(handshake)
        except HandshakeDenied as e:
            raise self._refusal(e) from None
        if isinstance(answer, defer.Deferred):
            self._authenticating = answer
            answer.addBoth(self._authenticated)
            return answer.addCallbacks(self._admit, self._denied,
                                       callbackArgs=(request, handshake))
        return self._admit(answer, request, handshake)

    def _authenticate(self, handshake: HandshakeRequest) -> Any:
        """The authenticator's answer; for a handshake that presents a resume token, the
        token's grant once the user's revocation counter says it still holds, else the
        authenticator's answer all the same."""
        authenticator = self.factory.authenticator
        tokens = handshake.params.get("resume")
        if not tokens or not tokens[0] or not IResumer.providedBy(authenticator):
            return admission.authenticate(authenticator, handshake)

        def resumed(result: Optional[tuple[Grant, int, float]]) -> Any:
            if result is not None:
                grant, self._counter, self._authenticated_at = result
                return grant
            return admission.authenticate(authenticator, handshake)

        node = self.node
        return resume(authenticator, node.broker, self.factory.config.prefix, handshake,
                      tokens[0], self.factory.reactor.seconds(),
                      node.resumes).addCallback(resumed)

    def _countAddress(self, request: ConnectionRequest) -> None:
        """Count this connection under its client's address (429 past the cap)."""
        transport = self.transport
        peer = getattr(transport.getPeer(), "host", "") if transport is not None else ""
        addresses = self.node.addresses
        self._address = addresses.client(peer, request.headers)
        self._counted = True
        addresses.add(self._address, peer)

    def _isSecure(self) -> bool:
        """Whether the connection came over TLS (directly or through twisted.web)."""
        return bool(ISSLTransport.providedBy(self.transport)
                    or getattr(self.factory, "isSecure", False))

    def _denied(self, failure: Failure) -> Optional[Failure]:
        """An authenticator's HandshakeDenied, as the HTTP answer Autobahn sends; an
        authentication cancelled because the client went away ends quietly (see
        :meth:`succeedHandshake`); any other failure goes on."""
        error = failure.value
        if isinstance(error, defer.CancelledError):
            return None
        if isinstance(error, HandshakeDenied):
            raise self._refusal(error)
        return failure

    def _refusal(self, error: HandshakeDenied) -> ConnectionDeny:
        """The answer to a refused handshake (with ``Retry-After`` when it says when)."""
        if error.retry_after is not None:
            self._refusalHeaders = [("Retry-After", str(error.retry_after))]
        return ConnectionDeny(error.status, error.reason)

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        """Autobahn's refusal of a handshake, with the refusal's own headers."""
        headers = [*(responseHeaders or ()), *self._refusalHeaders]
        super().failHandshake(reason, code, headers or None)

    def _authenticated(self, result: Any) -> Any:
        self._authenticating = None
        return result

    def _admit(self, answer: Identity | Grant, request: ConnectionRequest,
               handshake: Any) -> Optional[str]:
        """Take the authenticator's answer: what the client is admitted to."""
        admitted = admission.admit(
            self.factory.config, handshake, answer,
            handled=self.node.events.handles(handshake.facility),
            protocols=request.protocols)
        self._admitted, self._handshake = admitted, handshake
        granted = answer.flags if isinstance(answer, Grant) else None
        self._flags = handshake.flags if granted is None else granted
        self.identity, self.facility = admitted.identity, admitted.facility
        self._channels, self._publish_to = admitted.channels, admitted.publish_to
        self.speaks_events = admitted.speaks_events
        return admitted.subprotocol

    def succeedHandshake(self, res: Any) -> None:
        """Answer the handshake, unless the client went away while it was authenticated,
        or it was already answered (its authentication outlasted the handshake timeout):
        then nothing more happens: no 101, no onOpen, no subscription."""
        if not self._lost and self.state == self.STATE_CONNECTING:
            super().succeedHandshake(res)

    def onOpenHandshakeTimeout(self) -> None:
        """The handshake did not finish within ``handshake_timeout``. A client whose request
        came whole but whose authentication is still waiting (for the authentication gate,
        say, in a storm) is no slow peer: it is answered 503 with ``Retry-After``, which a
        client tries again as any 503, instead of Autobahn's reset. Its authentication is
        cancelled (it leaves the gate's queue; a thread that runs keeps its slot)."""
        authenticating = self._authenticating
        if authenticating is None or self.state != self.STATE_CONNECTING:
            super().onOpenHandshakeTimeout()
            return
        self.openHandshakeTimeoutCall = None
        self._refusalHeaders = [("Retry-After", str(_authgate.RETRY_AFTER))]
        self.failHandshake(_authgate.TIMED_OUT, 503)
        authenticating.cancel()

    def onOpen(self) -> None:
        self._joined = True
        self.node.stats["accepted"] += 1
        self._window = _internals.compression_window(self)
        node, config = self.node, self.factory.config
        if config.rate_limit:
            self._bucket = TokenBucket(config.rate_limit, config.rate_burst,
                                       self.factory.reactor)
        # Its streams first: the transport's producer calls pace them.
        self._stream = node.join(self, self._recover)
        self._recover = _NOTHING_TO_RECOVER
        # A TCP or TLS transport, which is a consumer too.
        transport = cast(IConsumer, self.transport)
        if getattr(transport, "producer", None) is not None:
            # Behind twisted.web the HTTP channel is still registered as the producer.
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        if self._admitted is not None and self._admitted.expires is not None:
            self._expiry = Expiry(self.factory.reactor, self._admitted.expires,
                                  self._askRefresh, self._tokenExpired)
        self._offerResume()

    # What its streams drive (ws4tx.server.streams.StreamTransport)

    @property
    def dropped(self) -> bool:
        """Whether this client is being dropped as slow."""
        return self._flow.dropped

    def sendRaw(self, payload: bytes, binary: bool) -> None:
        """Write ``payload`` as one message now (while the connection is open)."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=binary)

    def sendStored(self, channel: str, payload: bytes) -> None:
        """Write a stored message as it was stored."""
        self.sendRaw(payload, not is_text(payload))

    def sendEvent(self, event: str, data: Any) -> None:
        """Emit an event after what is queued for this client."""
        if not self.speaks_events:
            return
        if self._flow.pending:
            self._flow.queue(("", None, envelope.encode_event(event, data).encode()))
        else:
            self.emit(event, data)

    def send(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        """Write a frame, after what is queued for this client (bounded: past
        ``max_queue_messages`` frames waiting it is dropped as slow)."""
        if not self._flow.pending:
            self._write(prepared, payload)
        else:
            self._flow.hold((channel, prepared, payload))

    def queue(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        """Queue a recovered message: written as the socket drains (:meth:`pace`)."""
        self._flow.queue((channel, prepared, payload))

    def pace(self) -> None:
        """Write what is queued while the socket drains; let the streams read their
        next pages once little is left."""
        flow = self._flow
        while flow.pending and flow.paused_at is None:
            if self.state != self.STATE_OPEN:
                flow.clear()
                return
            _, prepared, payload = flow.next()
            if prepared is None:
                self.sendMessage(payload)
            else:
                self._write(prepared, payload)
        if len(flow.pending) <= LOW_MARK:
            self._stream.drained()
            for stream in self.subscriptions.streams():
                stream.drained()

    def tooSlow(self, why: str) -> None:
        """Drop this client as slow (once)."""
        self._flow.tooSlow(why)

    # Delivery (the hot path: nothing here that could be done once per message)

    def deliver(self, prepared: deflate.Message, channel: str, payload: bytes) -> None:
        """Write a prepared frame; skip a message this client sent itself without echo."""
        flow = self._flow
        if (self._unechoed or self._stream.careful or flow.paused_at is not None
                or flow.pending):
            self._deliverCarefully(prepared, channel, payload)
        elif self.state == _OPEN:
            # The usual client, inline (once per client per message): nothing to skip or
            # hold, no envelope, its socket draining. What _write() does then, with
            # _internals.write_frame() inline too (see there).
            window = self._window
            frame = prepared.plain if window is None else prepared.deflated(window)
            transport = self.transport
            if transport is not None and not self.send_queue:
                transport.write(frame)
            else:
                self.sendData(frame)

    def deliverRun(self, run: Run, channel: str) -> None:
        """Write the frames of one read's messages of ``channel`` (in order): at once, in
        one write, when nothing stands in their way; else each as :meth:`deliver` would.
        A run that fills the socket's buffer counts as written while it does not drain
        (for the slow-client limits), as every frame after it will."""
        flow = self._flow
        if (self._unechoed or self._stream.careful or flow.paused_at is not None
                or flow.pending):
            for prepared, payload in run.items:
                self._deliverCarefully(prepared, channel, payload)
        elif self.state == _OPEN:
            window = self._window
            frames = run.plain if window is None else run.deflated(window)
            transport = self.transport
            if transport is not None and not self.send_queue:
                transport.write(frames)
            else:
                self.sendData(frames)
            if self._flow.paused_at is not None:  # the write filled the socket's buffer
                flow.overflows(len(frames), len(run.items))

    def deliverFor(self, stream: ClientStream, prepared: deflate.Message, channel: str,
                   payload: bytes) -> None:
        """Write a prepared frame of a channel a subscription added (``stream``: its
        streams), as :meth:`deliver` does for the URL's channels."""
        if stream.careful:
            stream.live(channel, prepared, payload)
        elif self._flow.paused_at is not None or self._flow.pending:
            self.send(channel, prepared, payload)
        elif self.state == _OPEN:
            window = self._window
            frame = prepared.plain if window is None else prepared.deflated(window)
            transport = self.transport
            if transport is not None and not self.send_queue:
                transport.write(frame)
            else:
                self.sendData(frame)

    def forgetPending(self, channels: AbstractSet[str]) -> None:
        """Drop what is queued for this client of ``channels`` (it left them)."""
        if self._flow.pending:
            self._flow.keep(lambda item: item[0] not in channels)

    def _deliverCarefully(self, prepared: deflate.Message, channel: str,
                          payload: bytes) -> None:
        unechoed = self._unechoed
        if unechoed:
            key = (channel, payload)
            if unechoed[key]:
                unechoed[key] -= 1
                if not unechoed[key]:
                    del unechoed[key]
                return
        if self._stream.careful:
            self._stream.live(channel, prepared, payload)
        else:
            self.send(channel, prepared, payload)

    def _write(self, prepared: deflate.Message, payload: bytes) -> None:
        window = self._window
        frame = prepared.plain if window is None else prepared.deflated(window)
        # What waits for a slow client is counted in the bytes it is sent (a publication
        # envelope can be six times its payload), not in payload bytes.
        if self._flow.paused_at is not None and self._flow.overflows(len(frame)):
            return
        if self.state != self.STATE_OPEN:
            # No data frame after our close frame (RFC 6455, 5.5.1), which Autobahn's
            # sendPreparedMessage() would still write.
            return
        _internals.write_frame(self, frame)

    def sendMessage(self, payload: bytes, isBinary: bool = False,
                    fragmentSize: Optional[int] = None, sync: bool = False,
                    doNotCompress: bool = False) -> None:
        """Autobahn's, except that a compressing client's message is deflated by
        :mod:`ws4tx.server.deflate` (a small one not at all): never by a zlib compressor
        kept per connection, which Autobahn would allocate (and keep) for it."""
        window = _internals.compression_window(self)
        if window is None or doNotCompress or fragmentSize is not None or sync:
            super().sendMessage(payload, isBinary, fragmentSize, sync,
                                doNotCompress=doNotCompress or window is not None)
            return
        if self.state != self.STATE_OPEN:
            raise Disconnected("Attempt to send on a closed protocol")
        _internals.write_frame(self, deflate.Message(payload, isBinary).deflated(window))

    # Backpressure: the transport pauses us when its buffer is full.

    def pauseProducing(self) -> None:
        self._flow.pause()

    def resumeProducing(self) -> None:
        self._flow.resume()
        if self._flow.pending or self._stream.catching or any(
                stream.catching for stream in self.subscriptions.streams()):
            self.pace()

    def stopProducing(self) -> None:
        pass

    def _dropSlow(self, why: str) -> None:
        """Drop this client as slow (its flow control decided it, once)."""
        _log.warn("dropping slow client {peer}: {why}", peer=self.peer, why=why)
        self.closeWith(closecodes.SLOW_CONSUMER, "too slow: messages were not read in time")
        self.dropConnection(abort=True)

    def deliveryInterrupted(self) -> None:
        """The server lost Redis: tell an event client (raw payloads must not change)."""
        self._unechoed.clear()
        super().deliveryInterrupted()

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client (only to clients that speak the envelope)."""
        if self.speaks_events and self.state == self.STATE_OPEN:
            self.sendMessage(envelope.encode_event(event, data).encode())

    def sendEnvelope(self, text: str) -> None:
        """Send an envelope (an acknowledgement) to this client."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(text.encode())

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

    def onMessageEnd(self) -> None:
        _internals.end_message(self)
        # A compressing client's next message gets a new inflater: keep none meanwhile.
        _internals.forget_inflater(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        stats = self.node.stats
        stats["client_messages"] += 1
        stats["client_bytes"] += len(payload)
        if not isBinary and payload == self.factory.heartbeat:
            self.sendMessage(payload)
            return
        handled = self.received(payload, isBinary)
        if handled is not None:
            # A raw client cannot be told of a failure without changing its payloads:
            # _publishFailed logs it.
            handled.addErrback(lambda _: None)

    def withinRate(self) -> bool:
        return self._bucket is None or self._bucket.take()

    def overLimit(self, text: Optional[bytes] = None) -> None:
        """A message over the rate limit is dropped; the sender is told (if it speaks
        events: a subscribe or unsubscribe, ``text``, is answered ``refused``) and, past
        three times the burst, closed with 1008."""
        self._over_limit += 1
        self.node.stats["rate_limited"] += 1
        if self._over_limit == 1:
            _log.warn("{peer} is over the rate limit", peer=self.peer)
        if self._over_limit > 3 * self.factory.config.rate_burst:
            self.closeWith(closecodes.POLICY_VIOLATION, "rate limit exceeded")
            return
        if text is not None and envelope.is_envelope(text):
            try:
                frame = envelope.decode(text)
            except envelope.InvalidEnvelope:
                frame = None
            if isinstance(frame, (envelope.Subscribe, envelope.Unsubscribe)):
                self.sendEnvelope(envelope.encode_refused(
                    frame.id, f"rate limit exceeded: {frame.__class__.__name__.lower()} "
                    "dropped"))
                return
        self.emit(envelope.ERROR_EVENT, {"message": "rate limit exceeded: message dropped"})

    # The site's commands

    def leaveChannels(self, channels: Iterable[str], event: Any) -> bool:
        """Stop listening and publishing to those of ``channels`` this client has (the
        site's ``unsubscribe``), without closing; an event client gets
        ``ws4tx.unsubscribed`` with ``event``. Whether it had any of them."""
        gone = frozenset(channels) & frozenset(self._channels + self._publish_to)
        if not gone:
            return False
        self._channels = tuple(c for c in self._channels if c not in gone)
        self._publish_to = tuple(c for c in self._publish_to if c not in gone)
        self.forgetPending(gone)
        self.node.leaveChannels(self, gone)
        self.emit(envelope.UNSUBSCRIBED_EVENT, event)
        return True

    # Resumable sessions

    def _offerResume(self) -> None:
        """Hand an event client of a user that asked for one (``resume`` in its URL, empty
        or a token) its resume token, once its user's revocation counter is known (read
        now, unless the connection was resumed)."""
        authenticator, user = self.factory.authenticator, self.identity.user
        if (not self.speaks_events or user is None or self._handshake is None
                or "resume" not in self._handshake.params
                or not IResumer.providedBy(authenticator)):
            return
        renewal = self._renewal = Renewal(self.factory.reactor, self._issueResume,
                                          self._sendResume)
        if self._counter is not None:
            renewal.start()
            return

        def known(counter: int) -> None:
            if self._joined and self._renewal is renewal:
                self._counter = counter
                renewal.start()

        def unknown(failure: Failure) -> None:
            _log.debug("no resume token: the revocation counter could not be read ({e})",
                       e=failure.getErrorMessage())

        read_counter(self.node.broker, self.factory.config.prefix, user).addCallbacks(
            known, unknown)

    def _issueResume(self) -> Optional[tuple[str, float]]:
        from ws4tx._resume import Claim

        assert self._counter is not None
        expiry = self._expiry
        if self._authenticated_at is None:  # authenticated by its credential just now
            self._authenticated_at = self.factory.reactor.seconds()
        claim = Claim(self.identity, self.facility, self._flags, self._counter,
                      None if expiry is None else expiry.deadline, self._authenticated_at)
        resumer: Any = self.factory.authenticator
        issued: Optional[tuple[str, float]] = resumer.issueResume(claim)
        return issued

    def _sendResume(self, token: str, expires: float) -> None:
        self.sendEvent(envelope.SESSION_EVENT, {"resume": token, "expires": expires})

    # Token expiry

    def _askRefresh(self, deadline: float) -> None:
        """The token expires soon: ask an event client for a fresh one."""
        self.emit(envelope.REFRESH_EVENT, {"expires": deadline})

    def _tokenExpired(self) -> None:
        self.closeWith(closecodes.TOKEN_EXPIRED, "token expired")

    def refreshToken(self, data: Any) -> defer.Deferred[Any]:
        """The client sent a fresh token (``ws4tx.refresh``): check it as the first was
        and move the deadline; fires with ``{"expires": ...}`` (the acknowledgement)."""
        if self._expiry is None or self._handshake is None:
            return defer.fail(EventRefused("this connection has no token to refresh"))
        expiry = self._expiry

        handshake = self._handshake

        def extended(deadline: Optional[float]) -> dict[str, Any]:
            expiry.extend(deadline)
            # Its subscribes are authorized with the fresh token from now on.
            self._handshake = with_token(handshake, data["token"])
            return {"expires": deadline}

        return reauthenticate(self.factory.authenticator, self._handshake, data,
                              self.identity).addCallback(extended)

    # Closing

    def closeWith(self, code: int, reason: str) -> None:
        """Start the closing handshake with any code (Autobahn's sendClose() refuses the
        protocol-level ones such as 1001, going away)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:120])

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if self._joined:
            self._joined = False
            node = self.node
            # A close the server started is counted under its own code, not the echo.
            node.closed[close_label(self.localCloseCode if self.closedByMe else code)] += 1
            if self._expiry is not None:
                self._expiry.stop()
            if self._renewal is not None:
                self._renewal.stop()
                self._renewal = None
            self._flow.clear()
            self.subscriptions.close()
            node.leave(self)


def _recover_from(values: list[str]) -> dict[str, Position]:
    """The ``recover`` query parameters of a handshake (400 when one is malformed)."""
    try:
        return parse_recover(values)
    except ValueError as e:
        raise HandshakeDenied(str(e), 400) from None


class PushFactory(WebSocketServerFactory):
    """Builds :class:`PushProtocol` for a :class:`~ws4tx.server.node.Node`, with the
    Autobahn options ws4tx's configuration asks for."""

    # Twisted's Factory annotates it with an unbound type variable here (Autobahn's base
    # with its own protocol class): no annotation satisfies both.
    protocol = PushProtocol  # type: ignore[assignment]

    def __init__(
        self,
        node: Node,
        authenticator: Optional[IAuthenticator] = None,
        reactor: Optional[IReactorTime] = None,
    ) -> None:
        # No Server header in the 101 answer (Autobahn sends its name and version).
        super().__init__(reactor=reactor, server=None)
        _internals.format_lazily()
        config = node.config
        self.node = node
        self.config = config
        self.authenticator = authenticator or AnonymousAuthenticator()
        self.heartbeat = config.heartbeat.encode() if config.heartbeat is not None else None
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
        if config.compression:
            # permessage-deflate without context takeover, deflated once per message.
            self.setProtocolOptions(perMessageCompressionAccept=deflate.accept)
