"""The protocol without sockets (StringTransport, memory broker), and ws4tx embedded in
another twisted.web Site."""

from __future__ import annotations

import base64
import gc
import json
import os
import pprint
import struct
import tracemalloc
import zlib

import txaio
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import defer, endpoints, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.server import Site

from ws4tx import naming
from ws4tx.naming import Identity
from ws4tx.server import _internals
from ws4tx.server.config import ServerConfig
from ws4tx.server.deflate import deflate
from ws4tx.server.embedded import EmbeddedRedis
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory, PushProtocol
from ws4tx.server.service import PushService
from ws4tx.testing import MemoryBroker, MemoryBus, StaticAuthenticator

from test._server import observe_broker
from test._wsclient import connect

#: The node's own channel, which it always listens to (live control).
CONTROL = naming.control_channel(naming.DEFAULT_PREFIX)


def handshake(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def masked_text(text: str) -> bytes:
    """A client text frame (clients must mask)."""
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


class FullTransport(StringTransport):
    """A transport whose send buffer stays full once ``full`` is set: like Twisted's, it
    pauses its streaming producer again on every write."""

    full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full and self.producer is not None:
            self.producer.pauseProducing()


class StringTransportTests(unittest.SynchronousTestCase):
    """One connection over a StringTransport, routed by the memory broker."""

    def setUp(self) -> None:
        self.clock = Clock()
        # Autobahn's own timers (queued writes, close handshake) run on txaio's loop.
        self.patch(txaio.config, "loop", self.clock)
        self.broker = MemoryBroker(MemoryBus(self.clock))
        config = ServerConfig(ping_interval=0, heartbeat="--hb--", handshake_timeout=0,
                              anonymous_publish=True)
        self.factory = PushFactory(Node(config, self.broker, clock=self.clock),
                                   reactor=self.clock)
        self.factory.node.start()
        self.proto = self.factory.buildProtocol(("127.0.0.1", 1))
        self.transport = FullTransport()
        self.proto.makeConnection(self.transport)

    def _open(self, path: str) -> bytes:
        """Shake hands; return what the server sent after its 101 response."""
        self.proto.dataReceived(handshake(path))
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        self.transport.clear()
        return rest

    def test_handshakeSubscribesAndDeliversFrames(self):
        """After the handshake the client is subscribed and gets published frames."""
        self._open("/ws/foobar?subscribe-broadcast")
        self.assertEqual(self.broker.subscribed, {"ws4tx:broadcast:foobar", CONTROL})
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"hi")
        self.assertEqual(self.transport.value(), b"")  # delivered on the next turn
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"\x81\x02hi")

    def test_storedFirstThenLiveOnceWhileTheReplayIsFetched(self):
        """Live frames that come while the stored messages are being fetched wait for
        them: every stored message first, then the live ones in their order; a stored
        message that also came live is sent once."""
        fetches: dict[str, defer.Deferred] = {}
        self.broker.fetch = lambda key: fetches.setdefault(key, defer.Deferred())
        self._open("/ws/foobar?subscribe-broadcast")
        self.clock.advance(0)  # the turn's stored-message reads go out at its end
        self.assertEqual(list(fetches), ["ws4tx:broadcast:foobar"])
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"b1")
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"b2")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"")  # held for the stored message
        # The barrier went right after the read: once both are answered, all goes out.
        fetches["ws4tx:broadcast:foobar"].callback(b"b0")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"\x81\x02b0\x81\x02b1\x81\x02b2")
        self.transport.clear()
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"b3")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"\x81\x02b3")

    def test_storedMessageThatAlsoCameLiveIsSentOnce(self):
        """Published (live) and then stored while the client joined: sent once, in the
        live order; across channels live frames keep the order they came in."""
        fetches: dict[str, defer.Deferred] = {}
        self.broker.fetch = lambda key: fetches.setdefault(key, defer.Deferred())
        self.factory.authenticator = StaticAuthenticator(Identity(user="john"))
        self._open("/ws/foobar?subscribe-broadcast&subscribe-user")
        self.broker.bus.publish("ws4tx:user:john:foobar", b"u1")
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"b1")
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"b2")
        self.clock.advance(0)
        fetches["ws4tx:broadcast:foobar"].callback(b"b1")  # b1 was stored meanwhile
        self.assertEqual(self.transport.value(), b"")  # the user channel's is still out
        fetches["ws4tx:user:john:foobar"].callback(b"u0")
        self.clock.advance(0)  # the router's barrier, through the broker
        self.assertEqual(self.transport.value(),
                         b"\x81\x02u0\x81\x02u1\x81\x02b1\x81\x02b2")

    def test_closingConnectionGetsNoFrameAfterItsCloseFrame(self):
        """Once the server sent its close frame, a message published on the client's
        channel writes nothing (RFC 6455: no data frame after a close frame)."""
        self._open("/ws/foobar?subscribe-broadcast")
        self.proto.closeWith(1001, "going away")
        self.assertEqual(self.transport.value()[:1], b"\x88")
        self.transport.clear()
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"too late")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"")

    def test_frameDoesNotOvertakeAutobahnsSendQueue(self):
        """Bytes waiting in Autobahn's send queue (a chopped write) go out before a
        published frame, which waits its turn behind them."""
        self._open("/ws/foobar?subscribe-broadcast")
        self.proto.sendData(b"abcdef", chopsize=2)
        self.assertEqual(self.transport.value(), b"ab")
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"hi")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"ab")
        self.clock.pump([1] * 4)
        self.assertEqual(self.transport.value(), b"abcdef\x81\x02hi")

    def test_idleConnectionsShareOneEmptySendQueue(self):
        """Open connections keep no queue of delayed writes of their own (Autobahn
        gives each an empty deque, 760 bytes) until a write asks to be delayed, which
        still goes out, before what comes after it."""
        self._open("/ws/foobar?subscribe-broadcast")
        other = self.factory.buildProtocol(("127.0.0.1", 2))
        other.makeConnection(StringTransport())
        other.dataReceived(handshake("/ws/foobar?subscribe-broadcast"))
        self.assertIs(self.proto.send_queue, other.send_queue)
        self.assertFalse(self.proto.send_queue)
        self.proto.sendMessage(b"delayed", sync=True)
        self.assertIsNot(self.proto.send_queue, other.send_queue)
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"hi")
        self.clock.pump([0, 1, 1])
        self.assertEqual(self.transport.value(), b"\x81\x07delayed\x81\x02hi")

    def test_compressingClientGetsCompressedFrames(self):
        """A site that turns permessage-deflate on gets compressed frames to the clients
        that negotiated it, not the prepared plain frame."""
        self.factory.setProtocolOptions(perMessageCompressionAccept=lambda offers: next(
            PerMessageDeflateOfferAccept(o) for o in offers
            if isinstance(o, PerMessageDeflateOffer)))
        self.proto = self.factory.buildProtocol(("127.0.0.1", 2))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(handshake("/ws/foobar?subscribe-broadcast",
                                          "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        self.assertIn(b"permessage-deflate", self.transport.value())
        self.transport.clear()
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"hello " * 50)
        self.clock.advance(0)
        frame = self.transport.value()
        self.assertEqual(frame[0], 0xC1)  # FIN, RSV1 (compressed), text
        self.assertEqual(frame[1], len(frame) - 2)
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(
            frame[2:] + b"\x00\x00\xff\xff")
        self.assertEqual(inflated, b"hello " * 50)

    def test_clientNotDrainingForSlowTimeoutIsDropped(self):
        """A client whose socket has not drained for slow_timeout seconds is dropped with
        4008, however few messages wait: the clock starts at the first pause, not at the
        latest write (which pauses the producer again)."""
        self._open("/ws/foobar?subscribe-broadcast")
        self.transport.full = True
        timeout = self.factory.config.slow_timeout
        for second in range(int(timeout) + 1):
            self.broker.bus.publish("ws4tx:broadcast:foobar", b"tick")
            self.clock.advance(0)
            self.assertEqual(self.factory.node.stats["slow_consumers"], 0, second)
            self.clock.advance(1)
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"tick")
        self.clock.advance(0)
        self.assertEqual(self.factory.node.stats["slow_consumers"], 1)
        self.assertTrue(self.transport.disconnected)
        self.assertIn(b"\x88", self.transport.value())

    def test_replaySendsStoredMessage(self):
        """The message stored under a channel is sent right after the handshake (once the
        router's barrier says nothing published before it is still on its way)."""
        self.broker.bus.publish("ws4tx:broadcast:foobar", b"kept", expire=60)
        self.assertEqual(self._open("/ws/foobar?subscribe-broadcast"), b"")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), b"\x81\x04kept")

    def test_heartbeatAnsweredNotPublished(self):
        """The heartbeat is answered with itself and never published."""
        self._open("/ws/foobar?publish-broadcast")
        self.proto.dataReceived(masked_text("--hb--"))
        self.assertEqual(self.transport.value(), b"\x81\x06--hb--")
        self.assertEqual(self.broker.published, [])

    def test_publishWithExpire(self):
        """A client message is published to its publish channel with the expiry."""
        self._open("/ws/foobar?publish-broadcast")
        self.proto.dataReceived(masked_text("yo"))
        self.assertEqual(self.broker.published, [("ws4tx:broadcast:foobar", b"yo", 3600)])

    def test_eventClientIsToldOfDroppedMessages(self):
        """When the server fell behind and dropped messages, an event client gets
        ws4tx.dropped with the count once it has caught up (a raw client nothing)."""
        self.proto.dataReceived(handshake("/ws/foobar?subscribe-broadcast",
                                          "Sec-WebSocket-Protocol: ws4tx.v1\r\n"))
        self.transport.clear()
        self.proto.messagesDropped(3)
        self.assertEqual(self.transport.value()[2:], json.dumps(
            {"ws4tx": "event", "event": "ws4tx.dropped", "data": {"messages": 3}},
            separators=(",", ":")).encode())

    def test_closeReleasesSubscriptions(self):
        """Losing the connection unsubscribes its channels."""
        self._open("/ws/foobar?subscribe-broadcast")
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.broker.subscribed, {CONTROL})


def inflated(frame: bytes, window_bits: int = 15) -> bytes:
    """The payload of one compressed server frame (RSV1 set), inflated without context."""
    assert frame[0] & 0x40, frame[:2]
    at = {126: 4, 127: 10}.get(frame[1], 2)
    return zlib.decompressobj(-window_bits).decompress(frame[at:] + b"\x00\x00\xff\xff")


class CompressionTests(unittest.SynchronousTestCase):
    """``compression`` on: permessage-deflate without context takeover, one deflate per
    message (per window size) for every compressing client, nothing kept per connection."""

    EVENT = json.dumps({"type": "order.updated", "lines": [
        {"sku": f"SKU-{k:04d}", "title": f"Product number {k}", "qty": k} for k in range(20)]}
    ).encode()

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)
        self.broker = MemoryBroker(MemoryBus(self.clock))
        self.protocols: dict[StringTransport, PushProtocol] = {}
        self.factory = self._factory(compression=True)
        self.compressors: list[tuple] = []
        real = zlib.compressobj
        self.patch(zlib, "compressobj",
                   lambda *a, **k: self.compressors.append(a) or real(*a, **k))

    def _factory(self, **options: object) -> PushFactory:
        config = ServerConfig(ping_interval=0, handshake_timeout=0, anonymous_publish=True,
                              max_connections_per_ip=0, **options)
        factory = PushFactory(Node(config, self.broker, clock=self.clock), reactor=self.clock)
        factory.node.start()
        return factory

    def _open(self, offer: str | None, factory: PushFactory | None = None,
              path: str = "/ws/foobar?subscribe-broadcast") -> tuple[bytes, StringTransport]:
        """A connection (offering ``offer`` as its extension header): the server's
        handshake answer, and the transport holding what came after it."""
        proto = (factory or self.factory).buildProtocol(("127.0.0.1", 1))
        transport = StringTransport()
        self.protocols[transport] = proto
        proto.makeConnection(transport)
        extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer is not None else ""
        proto.dataReceived(handshake(path, extra))
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        transport.clear()
        transport.io.write(rest)  # what came after the 101 (a stored message)
        return head, transport

    def _publish(self, payload: bytes) -> None:
        self.broker.bus.publish("ws4tx:broadcast:foobar", payload)
        self.clock.advance(0)

    def test_offByDefault(self):
        """Without ``compression`` a client's offer is declined (no extension in the 101)
        and it gets plain frames."""
        head, transport = self._open("permessage-deflate", self._factory())
        self.assertNotIn(b"sec-websocket-extensions", head.lower())
        self._publish(self.EVENT)
        self.assertEqual(transport.value()[0], 0x81)

    def test_acceptedWithoutContextTakeover(self):
        """The 101 accepts permessage-deflate without context takeover either way, and
        with the window the client asked for."""
        head, _ = self._open("permessage-deflate; client_max_window_bits")
        self.assertIn(b"Sec-WebSocket-Extensions: permessage-deflate; "
                      b"client_no_context_takeover; server_no_context_takeover", head)
        head, _ = self._open("permessage-deflate; server_max_window_bits=10")
        self.assertIn(b"server_max_window_bits=10", head)

    def test_mixedClientsOnOneChannelEachGetTheirFrame(self):
        """Plain clients, compressing clients with the default window and with a window
        of 10 bits share a channel: each gets the payload in its own form, the
        compressing ones of a window the very same bytes, and the message is deflated
        once per window size (no compressor of Autobahn's per connection)."""
        plain = [self._open(None)[1] for _ in range(3)]
        full = [self._open("permessage-deflate")[1] for _ in range(5)]
        narrow = [self._open("permessage-deflate; server_max_window_bits=10")[1]
                  for _ in range(2)]
        payload = self.EVENT * 4  # over 1 KB, so the window matters
        self._publish(payload)
        for transport in plain:
            self.assertEqual(transport.value(), b"\x81~" + struct.pack("!H", len(payload))
                             + payload)
        self.assertEqual({t.value() for t in full}.__len__(), 1)
        self.assertEqual({t.value() for t in narrow}.__len__(), 1)
        self.assertEqual(inflated(full[0].value()), payload)
        self.assertEqual(inflated(narrow[0].value(), 10), payload)
        self.assertLess(len(full[0].value()), len(payload) / 4)
        self.assertEqual(sorted(-a[2] for a in self.compressors), [10, 15])

    def test_broadcastDeflatedOnce(self):
        """A broadcast to 20 compressing clients is deflated once: one zlib compressor in
        all, whoever asks first."""
        clients = [self._open("permessage-deflate")[1] for _ in range(20)]
        self._publish(self.EVENT)
        self.assertEqual(len(self.compressors), 1)
        self.assertEqual({inflated(t.value()) for t in clients}, {self.EVENT})

    def test_smallMessagesGoPlain(self):
        """A message under 256 bytes goes to a compressing client uncompressed (RSV1
        clear), and deflate is never run for it."""
        _, transport = self._open("permessage-deflate")
        self._publish(b"x" * 255)
        self.assertEqual(transport.value(), b"\x81\x7e\x00\xff" + b"x" * 255)
        self.assertEqual(self.compressors, [])

    def test_replayAndEventsCompressedWithoutAConnectionCompressor(self):
        """What a compressing client gets besides broadcasts (its stored message, an
        event) is compressed too, through the same one-shot deflate: no compressor is
        kept for the connection."""
        self.broker.bus.publish("ws4tx:broadcast:foobar", self.EVENT, expire=60)
        _, transport = self._open("permessage-deflate")
        proto = self.protocols[transport]
        self.clock.advance(0)  # the replay comes after the router's barrier
        self.assertEqual(inflated(transport.value()), self.EVENT)
        transport.clear()
        proto.sendMessage(self.EVENT, isBinary=True)
        self.assertEqual(transport.value()[0], 0xC2)
        self.assertEqual(inflated(transport.value()), self.EVENT)
        self.assertEqual(len(self.compressors), 2)
        self.assertIsNone(proto._perMessageCompress._compressor)

    def _memoryPerConnection(self, offer: str | None) -> float:
        """Bytes Python allocated per connection (zlib's state included) for 50
        connections to a fresh server that got a stored message and a broadcast, and
        sent a message (compressed when they compress)."""
        self.broker = MemoryBroker(MemoryBus(self.clock))
        factory = self._factory(compression=True)
        self.broker.bus.publish("ws4tx:broadcast:foobar", self.EVENT, expire=60)
        path = "/ws/foobar?subscribe-broadcast&publish-broadcast"
        client_message = _masked(b"hello " * 100, compressed=offer is not None)
        self._open(offer, factory, path)  # warm up: module-level caches
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for _ in range(50):
            _, transport = self._open(offer, factory, path)
            self.protocols[transport].dataReceived(client_message)
            kept.append(transport)
        self._publish(self.EVENT)
        for transport in kept:
            transport.clear()
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / 50
        tracemalloc.stop()
        return per_connection

    def test_idleMemoryPerConnectionAsWithout(self):
        """A compressing connection that sent and got compressed messages holds at most
        1.2 times the memory of a plain one: no zlib compressor or inflater stays (with
        Autobahn's own they would hold about 300 KB each)."""
        plain = self._memoryPerConnection(None)
        compressing = self._memoryPerConnection("permessage-deflate")
        self.assertLessEqual(compressing, 1.2 * plain, (compressing, plain))


def _masked(payload: bytes, compressed: bool) -> bytes:
    """A client's text frame (masked), compressed (RSV1 set) or not."""
    body = deflate(payload, 15) if compressed else payload
    mask = b"\x01\x02\x03\x04"
    first = 0xC1 if compressed else 0x81
    head = bytes([first, 0x80 | 126]) + struct.pack("!H", len(body)) if len(body) > 125 \
        else bytes([first, 0x80 | len(body)])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body))


class LazyDebugFormattingTests(unittest.SynchronousTestCase):
    """Autobahn's per-connection debug values cost nothing unless a line is printed
    (``_internals.format_lazily``, applied by every PushFactory)."""

    def setUp(self) -> None:
        self.formatted: list[object] = []
        real = pprint.pformat

        def counting(value: object, *args: object, **kwargs: object) -> str:
            self.formatted.append(value)
            return real(value, *args, **kwargs)

        # Autobahn's module calls its own ``pformat`` name unless ws4tx replaced it; the
        # lazy value calls pprint's when printed. Both are counted.
        self.patch(_internals._protocol, "pformat", counting)
        self.patch(pprint, "pformat", counting)

    def _open(self) -> PushProtocol:
        clock = Clock()
        node = Node(ServerConfig(ping_interval=0, handshake_timeout=0), MemoryBroker(),
                    clock=clock)
        factory = PushFactory(node, reactor=clock)
        node.start()
        proto = factory.buildProtocol(("127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(handshake("/ws/foobar?subscribe-broadcast"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
        return proto

    def test_openingAConnectionPrettyPrintsNothing(self):
        """With debug logging off, opening a connection calls pprint.pformat zero times."""
        self._open()
        self.assertEqual(self.formatted, [])

    def test_debugLineKeepsItsText(self):
        """With debug logging on, Autobahn's line of connection options reads exactly as
        Autobahn's own pformat wrote it."""
        log = PushProtocol.log
        level, explicit = log._log_level, log._log_level_set_explicitly
        self.addCleanup(setattr, log, "_log_level_set_explicitly", explicit)
        self.addCleanup(log._set_log_level, level)
        log.set_log_level("debug")
        events: list[dict] = []
        self.patch(log._logger, "observer", events.append)
        proto = self._open()
        expected = [(name, getattr(proto, name), "PushFactory") for name in proto.CONFIG_ATTRS]
        lines = [formatEvent(e) for e in events if "attrs" in e]
        self.assertEqual(lines, ["\n" + pprint.pformat(expected)])


class EmbeddingTests(unittest.TestCase):
    """ws4tx mounted in an application's own twisted.web Site."""

    async def test_websocketResourceMountedInAnotherSite(self):
        """service.websocket_resource serves /ws/ beside the application's own pages."""
        redis = EmbeddedRedis()
        redis.start()
        self.addCleanup(redis.stop)
        push = PushService(ServerConfig(redis=redis.address, ping_interval=0,
                                        anonymous_publish=True))
        events = observe_broker(push.factory.node.router)
        push.startService()
        self.addCleanup(push.stopService)
        self.assertEqual(await events.get(), "connected")

        root = resource.Resource()
        root.putChild(b"ws", push.websocket_resource)
        page = resource.Resource()
        page.render_GET = lambda request: b"my app"
        root.putChild(b"", page)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(root))
        self.addCleanup(port.stopListening)

        client = await connect(port.getHost().port, "/ws/foobar?subscribe-broadcast&"
                               "publish-broadcast&echo")
        self.addCleanup(client.close)
        client.send("mounted")
        self.assertEqual(await client.text(), "mounted")


class FrameBytesTests(unittest.SynchronousTestCase):
    """What is bounded is the bytes sent: an event client of a facility with history gets
    each message in a publication envelope, which JSON makes up to six times longer than
    its payload (65,000 bytes of U+0001 become a 390,096-byte frame)."""

    CHANNEL = "ws4tx:broadcast:h"

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)
        self.broker = MemoryBroker(MemoryBus(self.clock))

    def _client(self, **config: object) -> PushProtocol:
        from ws4tx.history import Retention

        self.retention = Retention(100, 600)
        factory = PushFactory(Node(ServerConfig(
            ping_interval=0, handshake_timeout=0, history=(("h", self.retention),),
            **config), self.broker, clock=self.clock), reactor=self.clock)
        factory.node.start()
        proto = factory.buildProtocol(("127.0.0.1", 1))
        self.transport = FullTransport()
        proto.makeConnection(self.transport)
        proto.dataReceived(handshake("/ws/h?subscribe-broadcast",
                                     "Sec-WebSocket-Protocol: ws4tx.v1\r\n"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 101"))
        self.transport.clear()
        return proto

    def _publish(self, payload: bytes) -> None:
        self.broker.bus.publishWithHistory(self.CHANNEL, payload, self.retention)
        self.clock.advance(0)

    def test_outgoingBoundIsOnTheFrame(self):
        """A 65,000-byte message of U+0001 (390,096 bytes as a publication) is dropped,
        logged and counted under a 100,000-byte MAX_OUTGOING_SIZE, where its payload
        alone would pass; the next message goes through."""
        proto = self._client(max_outgoing_size=100_000)
        self._publish(b"\x01" * 65_000)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(proto.node.router.stats["oversized"], 1)
        self._publish(b"small")
        self.assertIn(b'"data":"small"', self.transport.value())

    def test_slowClientQueueCountsFrameBytes(self):
        """A client whose socket does not drain is dropped once the frames waiting for it
        pass MAX_QUEUE_BYTES: two messages of 60,000 bytes of U+0001 waiting are 720 KB of
        frames against a 500,000-byte bound (120 KB of payload)."""
        proto = self._client(max_queue_bytes=500_000)
        self.transport.full = True
        self._publish(b"\x01" * 60_000)   # written; the transport pauses the client
        self._publish(b"\x01" * 60_000)   # waits: 360 KB
        self.assertEqual(proto.node.stats["slow_consumers"], 0)
        self._publish(b"\x01" * 60_000)   # 720 KB wait
        self.assertEqual(proto.node.stats["slow_consumers"], 1)
        self.assertTrue(self.transport.disconnected)
