"""Server-Sent Events: a second transport of a client's streams, for networks that strip
``Upgrade``.

A ``GET`` of a WebSocket URL with ``Accept: text/event-stream`` is admitted as its
handshake would be (the per-address and total connection caps, the query cap, the URL,
the Origin, then the authenticator, with its gate and hooks: :func:`ws4tx.server._verdict.judge`
and :func:`ws4tx.server.admission.admit`), gets the same identity and channels, and joins
the node as a WebSocket client does (:meth:`ws4tx.server.node.Node.join`): its
:class:`~ws4tx.server.streams.ClientStream` decides what goes out and when; an
:class:`SSEStream` frames and writes it as SSE (see :mod:`ws4tx.server._sse_format`) and
paces it by the producer of the HTTP response, with the flow control of a WebSocket
client (:class:`ws4tx.server._flow.Flow`: a client that does not read is dropped by the
same bounds).

An SSE client speaks the event envelope as a ``ws4tx.v1`` WebSocket client does: each
message's ``data:`` is what such a client would get (on a facility with history, the
publication envelope with its position), events carry their name in ``event:`` and their
data as JSON; on a facility with history every event's ``id:`` holds the position of each
of the stream's channels, which the browser sends back as ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ws4tx import closecodes, envelope
from ws4tx.history import UNKNOWN_POSITION, Position, parse_recover
from ws4tx.naming import ANONYMOUS, Identity
from ws4tx.server import _sse_format, _verdict, admission, deflate
from ws4tx.server._delivery_events import DeliveryEvents
from ws4tx.server._flow import Flow
from ws4tx.server._log import observer
from ws4tx.server.auth import HandshakeDenied
from ws4tx.server.expiry import Expiry
from ws4tx.server.handlers import EventRefused
from ws4tx.server.node import close_label
from ws4tx.server.streams import LOW_MARK, ClientStream, is_text

if TYPE_CHECKING:
    from ws4tx.server._runs import Run
    from ws4tx.server.protocol import PushFactory

_log = Logger(observer=observer)

#: The events of the message being fanned out, made once for every stream: as an event
#: (what Request.write is given), and as a chunk of an HTTP/1.1 body (what a direct
#: stream writes to its connection).
_EVENTS = _sse_format.MessageEvents()
_CHUNKS = _sse_format.MessageEvents(chunked=True)

#: What a stream's queue holds: a message (channel, prepared) or an event (name, data).
_Item = tuple[str, Union[deflate.Message, "_Event"]]


class _Event:
    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def wants_events(request: Request) -> bool:
    """Whether ``request`` asks for an event stream (``Accept: text/event-stream``)."""
    return b"text/event-stream" in (request.getHeader(b"accept") or b"").lower()


def serve(factory: PushFactory, request: Request) -> Any:
    """Answer an SSE request of a WebSocket URL: the stream, or the refusal the
    handshake would get (its status, a JSON body)."""
    SSEStream(factory, request).admit()
    return NOT_DONE_YET


@implementer(IPushProducer)
class SSEStream(DeliveryEvents):
    """One SSE client: a member of the node (as a WebSocket connection is), the
    :class:`~ws4tx.server.streams.StreamTransport` of its streams, and the producer of its
    HTTP response."""

    #: What the metrics count it as.
    transport_name = "sse"
    identity: Identity = ANONYMOUS
    facility: str = ""
    speaks_events = True
    _stream: ClientStream

    def __init__(self, factory: PushFactory, request: Request) -> None:
        self.factory = factory
        self.node = factory.node
        self._request = request
        #: The TCP (or TLS) connection it comes on.
        self._connection: Any = request.channel.transport
        address = request.getClientAddress()
        self.peer: Optional[str] = f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"
        self.channels: tuple[str, ...] = ()
        self._authenticating: Optional[defer.Deferred[Any]] = None
        self._address: Optional[str] = None
        self._counted = self._counted_connection = False
        self._lost = self._joined = self._open = False
        self._interrupted = False
        self._close_code: Optional[int] = None
        #: Its flow control, as a WebSocket client's: what waits for it, and when it is
        #: too slow to keep.
        self._flow: Flow[_Item] = Flow(factory.config, self.node.clock, self.node.stats,
                                       self._dropSlow)
        #: The channels an event id holds positions of (None: no id), its tag, and where
        #: each stands in what was written.
        self._id_channels: tuple[str, ...] = ()
        self._tag: Optional[str] = None
        #: The only channel of its id when it has one (its events' ids are then made once
        #: per message for all such streams: the tag and the message's position).
        self._single: Optional[str] = None
        self._positions: dict[str, Position] = {}
        self._heartbeat: Optional[LoopingCall] = None
        self._direct = False
        self._events = _EVENTS
        self._expiry: Optional[Expiry] = None

    # Admission

    def admit(self) -> None:
        """Count the connection, then judge it as a handshake; open or refuse."""
        request, config = self._request, self.factory.config
        request.notifyFinish().addBoth(self._finished)
        _verdict.allow_reading(config, request)
        upgrading = getattr(request.channel, "upgrading", None)
        if upgrading is not None:
            upgrading()  # counted below as a WebSocket is, under its client's address
        try:
            self._count()
        except HandshakeDenied as e:
            self._refuse(e)
            return
        self._authenticating = _verdict.judge(config, self.factory.authenticator, request)
        # An exception while opening is refused too (or aborts a stream already answered).
        self._authenticating.addCallback(self._opened).addErrback(self._denied)

    def _count(self) -> None:
        """Count this stream under its client's address (429 past the cap) and among the
        server's connections (503 past ``max_connections``)."""
        request, factory = self._request, self.factory
        headers = {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in vs)
                   for name, vs in request.requestHeaders.getAllRawHeaders()}
        peer = getattr(request.getClientAddress(), "host", "")
        addresses = self.node.addresses
        self._address = addresses.client(peer, headers)
        self._counted = True
        addresses.add(self._address, peer)
        cap = factory.config.max_connections
        if cap and factory.countConnections >= cap:
            raise HandshakeDenied("maximum number of connections reached", 503)
        factory.countConnections += 1
        self._counted_connection = True

    def _denied(self, failure: Failure) -> None:
        self._authenticating = None
        if self._lost:
            return
        if self._request.startedWriting:  # failed once answered: the stream ends
            _log.failure("opening the SSE stream of {uri}", failure, uri=self._request.uri)
            channel = getattr(self._request, "channel", None)
            if channel is not None:
                channel.loseConnection()
            return
        if isinstance(failure.value, HandshakeDenied):
            self._refuse(failure.value)
            return
        _log.failure("admitting the SSE stream of {uri}", failure, uri=self._request.uri)
        self._refuse(HandshakeDenied("the server failed to admit this stream", 500))

    def _refuse(self, denied: HandshakeDenied) -> None:
        request = self._request
        if self._lost:
            return
        channel = getattr(request, "channel", None)  # gone once the request finished
        body = _verdict.refusal_body(denied)
        request.setResponseCode(denied.status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        if denied.retry_after is not None:
            request.setHeader(b"retry-after", str(denied.retry_after).encode())
        request.write(body)
        request.finish()
        # The connection stopped counting as HTTP when the stream was judged (upgrading):
        # a refused one must not stay open uncounted.
        if channel is not None:
            channel.loseConnection()

    def _opened(self, judged: tuple[Any, Any]) -> None:
        """Admitted: answer 200 and join the node with the positions to recover."""
        self._authenticating = None
        if self._lost:
            return
        handshake, answer = judged
        node, config, request = self.node, self.factory.config, self._request
        admitted = admission.admit(config, handshake, answer,
                                   handled=node.events.handles(handshake.facility),
                                   protocols=[envelope.SUBPROTOCOL])
        self.identity, self.facility = admitted.identity, admitted.facility
        self.channels = admitted.channels
        recover = parse_recover(handshake.params.get("recover", []))  # checked by judge
        unknown = False
        if config.history_for(self.facility) is not None and self.channels:
            self._id_channels = self.channels
            self._tag = _sse_format.channels_tag(self.channels)
            if len(self.channels) == 1:
                self._single = self.channels[0]
            last = request.getHeader(b"last-event-id")
            if last is not None:
                parsed = _sse_format.parse_id(last.decode("latin-1"), self._tag,
                                              self.channels)
                unknown = parsed is None
                recover = parsed or {}
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each event on
        request.write(b": ws4tx\n\n")  # the head goes out now
        #: Whether events go straight to the connection, each in one write framed as
        #: Request.write frames it (one chunk over HTTP/1.1, as it is over HTTP/1.0):
        #: on an HTTP/1.x channel, whose connection carries nothing else now. Through
        #: the request otherwise (HTTP/2: the connection is shared).
        self._direct = isinstance(request.channel, HTTPChannel)
        self._events = _CHUNKS if request.chunked else _EVENTS
        self._open = self._joined = True
        node.stats["sse_accepted"] += 1
        request.registerProducer(self, True)
        self._stream = node.join(self, recover)
        if unknown:
            node.recovered(UNKNOWN_POSITION)
            self.sendEvent(envelope.RECOVERED_EVENT,
                           {"recovered": False, "reason": UNKNOWN_POSITION, "channels": {}})
        if config.ping_interval > 0:
            self._heartbeat = LoopingCall(self._ping)
            self._heartbeat.clock = node.clock
            self._heartbeat.start(config.ping_interval, now=False)
        if admitted.expires is not None:
            # No way to send a fresh token on a stream: it ends at the deadline.
            self._expiry = Expiry(node.clock, admitted.expires, lambda _: None,
                                  lambda: self.closeWith(closecodes.TOKEN_EXPIRED,
                                                         "token expired"))

    @property
    def subscribed(self) -> defer.Deferred[None]:
        """Fires once its channels are subscribed (and its replay is on the way): once
        joined."""
        return self._stream.subscribed

    # What its streams drive (ws4tx.server.streams.StreamTransport)

    @property
    def dropped(self) -> bool:
        return self._flow.dropped

    def sendStored(self, channel: str, payload: bytes) -> None:
        """Write a stored message as it was stored."""
        self._writeMessage("", deflate.Message(payload, not is_text(payload)))

    def sendEvent(self, event: str, data: Any) -> None:
        if self._flow.pending:
            self._flow.queue((event, _Event(data)))
        else:
            self._writeEvent(event, data)

    def send(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        if not self._flow.pending:
            self._writeMessage(channel, prepared)
        else:
            self._flow.hold((channel, prepared))

    def queue(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        self._flow.queue((channel, prepared))

    def pace(self) -> None:
        flow = self._flow
        while flow.pending and flow.paused_at is None:
            if not self._open:
                flow.clear()
                return
            name, item = flow.next()
            if isinstance(item, _Event):
                self._writeEvent(name, item.data)
            else:
                self._writeMessage(name, item)
        if len(flow.pending) <= LOW_MARK and self._joined:
            self._stream.drained()

    def tooSlow(self, why: str) -> None:
        self._flow.tooSlow(why)

    # Writing

    def _id(self) -> Optional[str]:
        if self._tag is None:
            return None
        positions = self._positions
        return _sse_format.position_id(self._tag, [positions.get(c) for c in self._id_channels])

    def _singleId(self) -> str:
        """The id of a stream of one channel (it has a tag)."""
        assert self._tag is not None and self._single is not None
        position = self._positions[self._single]
        return f"{self._tag}.{position.epoch}:{position.offset}"

    def _writeMessage(self, channel: str, prepared: deflate.Message) -> None:
        if not self._open:
            return
        if prepared.binary:
            # SSE carries text only.
            self.node.stats["sse_binary_dropped"] += 1
            return
        position = prepared.position
        if position is not None and channel:
            self._positions[channel] = position
        events = self._events if self._direct else _EVENTS
        if self._tag is None:
            data = events.written(prepared.payload)
        elif position is not None and channel == self._single:
            # Its id is the tag and this message's position: the same for every stream
            # of this one channel, made once.
            data = events.written(prepared.payload, self._tag, self._singleId)
        else:
            text = events.event(prepared.payload, self._id())
            data = _sse_format.chunk(text) if events is _CHUNKS else text
        self._write(data)

    def _writeEvent(self, event: str, data: Any) -> None:
        if not self._open:
            return
        if event == envelope.POSITIONS_EVENT and isinstance(data, dict):
            for channel, p in data.get("channels", {}).items():
                self._positions[channel] = Position(p["offset"], p["epoch"])
        text = _sse_format.event(json.dumps(data, separators=(",", ":")).encode(),
                                 name=event, id=self._id())
        self._write(_sse_format.chunk(text) if self._direct and self._events is _CHUNKS
                    else text)

    def _write(self, data: bytes) -> None:
        """Write an event as made for this stream (framed as a chunk when it is direct and
        chunked)."""
        if self._flow.paused_at is not None and self._flow.overflows(len(data)):
            return
        if self._direct:
            # Request.write would frame it in three calls and four writes per event
            # (twice the server's CPU per event of a WebSocket frame); the chunk is made
            # once per message for all streams.
            self._request.sentLength += len(data)
            self._connection.write(data)
        else:
            self._request.write(data)

    def _ping(self) -> None:
        if self._open and self._flow.paused_at is None:
            self._request.write(_sse_format.PING)

    # Backpressure: the HTTP channel pauses its request's producer when its socket's
    # buffer is full.

    def pauseProducing(self) -> None:
        self._flow.pause()

    def resumeProducing(self) -> None:
        self._flow.resume()
        if self._joined and (self._flow.pending or self._stream.catching):
            self.pace()

    def stopProducing(self) -> None:
        pass

    def _dropSlow(self, why: str) -> None:
        """Drop this stream as slow (its flow control decided it, once)."""
        _log.warn("dropping slow SSE client {peer}: {why}", peer=self.peer, why=why)
        self._close_code = closecodes.SLOW_CONSUMER
        self.dropConnection(abort=True)

    # What the router, the node and the event handlers ask of a client

    def deliver(self, prepared: deflate.Message, channel: str, payload: bytes) -> None:
        if self._stream.careful:
            self._stream.live(channel, prepared, payload)
        elif (self._direct and self._open and not self._flow.pending
              and self._flow.paused_at is None and not prepared.binary):
            # The usual stream, inline (once per stream per message, as a WebSocket
            # client's deliver): no id, nothing waiting, its socket draining; the event
            # (and its chunk) made once for all of them.
            events = self._events
            if prepared.payload is events.plain_of:
                self._request.sentLength += events.plain_size
                self._connection.write(events.plain)
            else:
                data = events.written(prepared.payload)
                self._request.sentLength += len(data)
                self._connection.write(data)
        else:
            self.send(channel, prepared, payload)

    def deliverRun(self, run: Run, channel: str) -> None:
        """Write the events of one read's messages of ``channel`` (in order): at once, in
        one write joined once per run for every such stream, when nothing stands in their
        way (as a WebSocket client's run); else each as :meth:`deliver` would."""
        flow = self._flow
        if (self._stream.careful or not self._direct or not self._open or flow.pending
                or flow.paused_at is not None or run.binary):
            for prepared, payload in run.items:
                self.deliver(prepared, channel, payload)
            return
        events = self._events
        data = run.joined(events, lambda prepared: events.written(prepared.payload))
        self._request.sentLength += len(data)
        self._connection.write(data)
        if self._flow.paused_at is not None:  # the write filled the socket's buffer
            flow.overflows(len(data), len(run.items))

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client (after what is queued)."""
        self.sendEvent(event, data)

    def sendEnvelope(self, text: str) -> None:
        self._writeMessage("", deflate.Message(text.encode(), False))

    def mayPublish(self) -> bool:
        return False

    def publish(self, payload: bytes) -> defer.Deferred[int]:
        return defer.fail(EventRefused("an SSE stream does not publish"))

    def refreshToken(self, data: Any) -> defer.Deferred[Any]:
        return defer.fail(EventRefused("an SSE stream has no token to refresh"))

    def leaveChannels(self, channels: Iterable[str], event: Any) -> bool:
        """Stop listening to those of ``channels`` this client has (the site's
        ``unsubscribe``); it is told with ``ws4tx.unsubscribed``."""
        gone = frozenset(channels) & frozenset(self.channels)
        if not gone:
            return False
        self.channels = tuple(c for c in self.channels if c not in gone)
        self._flow.keep(lambda item: isinstance(item[1], _Event) or item[0] not in gone)
        self.node.leaveChannels(self, gone)
        self.emit(envelope.UNSUBSCRIBED_EVENT, event)
        return True

    def closeWith(self, code: int, reason: str) -> None:
        """End the stream, saying why in a last event ``ws4tx.closed``."""
        if not self._open:
            return
        self._flow.clear()
        self._writeEvent("ws4tx.closed", {"code": code, "reason": reason})
        self._close_code = code
        self._open = False
        request = self._request
        request.unregisterProducer()
        request.finish()
        # Not kept alive: the connection stopped counting as an HTTP one when it
        # became a stream.
        self._connection.loseConnection()

    def dropConnection(self, abort: bool = True) -> None:
        self._open = False
        self._connection.abortConnection()

    # Going away

    def _finished(self, result: Any) -> None:
        """The response ended (the stream was closed, or the client went away)."""
        self._lost = True
        self._open = False
        if self._authenticating is not None:
            self._authenticating.cancel()
        if self._counted:
            self._counted = False
            self.node.addresses.release(self._address)
        if self._counted_connection:
            self._counted_connection = False
            self.factory.countConnections -= 1
        if self._joined:
            self._joined = False
            if self._heartbeat is not None and self._heartbeat.running:
                self._heartbeat.stop()
            if self._expiry is not None:
                self._expiry.stop()
            self._flow.clear()
            node = self.node
            node.closed[close_label(self._close_code or 1006)] += 1
            node.leave(self)
