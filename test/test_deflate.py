"""permessage-deflate deflated once per message (ws4tx.server.deflate), and real clients
that compress: Autobahn's own client and the ``websockets`` package (what a browser-like
client negotiates)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import defer, endpoints, reactor, threads
from twisted.trial import unittest

from ws4tx import closecodes
from ws4tx.server import deflate
from ws4tx.server.deflate import MIN_SIZE, Message

from test._server import ServerTestCase
from test._wsclient import TIMEOUT
from test.test_runs import CountedWrites, pubsub_message


def event(i: int) -> bytes:
    """A typical JSON event of an application (about 900 bytes)."""
    return json.dumps({
        "type": "order.updated", "id": 1_000_000 + i, "version": 3 + i % 7,
        "at": (f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(7 * i) % 60:02d}"
               f".{i % 1000:03d}Z"),
        "user": {"id": 4200 + i % 50, "name": f"user{i % 50}", "avatar": f"/media/a/{i % 50}.png"},
        "order": {"status": ["new", "paid", "shipped", "delivered"][i % 4],
                  "total": {"amount": f"{(i * 37) % 1000}.{i % 100:02d}", "currency": "EUR"},
                  "lines": [{"sku": f"SKU-{(i + k) % 900:04d}", "qty": 1 + k,
                             "title": f"Product number {(i + k) % 900}"} for k in range(10)]},
    }).encode()


def parse(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one whole unmasked frame."""
    length, at = frame[1] & 0x7F, 2
    if length == 126:
        (length,), at = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), at = struct.unpack("!Q", frame[2:10]), 10
    assert len(frame) == at + length, (len(frame), at, length)
    return frame[0], frame[at:]


def inflate(body: bytes, window_bits: int = 15) -> bytes:
    """A compressed message's payload, inflated by a fresh inflater (no context)."""
    return zlib.decompressobj(-window_bits).decompress(body + b"\x00\x00\xff\xff")


class MessageTests(unittest.SynchronousTestCase):
    """One message framed once: plain, and deflated once per window size."""

    def test_plainFrameIsAutobahnsFrame(self):
        """The plain frame is byte for byte the frame Autobahn prepares, at each length
        encoding, text and binary."""
        for size in (0, 2, 125, 126, 65535, 65536):
            for binary in (False, True):
                payload = os.urandom(size) if binary else b"x" * size
                self.assertEqual(Message(payload, binary).plain,
                                 PreparedMessage(payload, binary, False, True).payloadHybi)

    def test_deflatedFrameInflatesWithoutContext(self):
        """A compressed frame has FIN and RSV1 set, keeps its opcode, and inflates to the
        payload with a fresh inflater of the client's window, after any other message."""
        for window in (9, 12, 15):
            for binary in (False, True):
                payload = event(window) * 40  # over 16 KB: longer than a small window
                first, body = parse(Message(payload, binary).deflated(window))
                self.assertEqual(first, 0xC2 if binary else 0xC1)
                self.assertEqual(inflate(body, window), payload)

    def test_smallAndIncompressibleMessagesGoPlain(self):
        """Under MIN_SIZE bytes, or not shrunk by deflate, a message goes out plain."""
        small = Message(b"a" * (MIN_SIZE - 1), False)
        self.assertIs(small.deflated(15), small.plain)
        noise = Message(os.urandom(4096), True)
        self.assertIs(noise.deflated(15), noise.plain)
        self.assertEqual(Message(b"a" * MIN_SIZE, False).deflated(15)[0], 0xC1)

    def test_deflatedOncePerWindowSize(self):
        """However many clients take it, a message is deflated once per window size."""
        calls: list[int] = []
        real = deflate.deflate
        self.patch(deflate, "deflate", lambda p, w: calls.append(w) or real(p, w))
        message = Message(event(1), False)
        for window in (15, 15, 15, 10, 15, 10):
            message.deflated(window)
        self.assertEqual(calls, [15, 10])

    def test_typicalJsonEventsTakeUnder40PercentOnTheWire(self):
        """Typical JSON events (about 900 bytes each, as in Centrifugo's measurements)
        take at most 40 % of their plain frames' bytes, each compressed on its own (no
        context between messages: events of 400 bytes take about 55 %)."""
        plain = compressed = 0
        for i in range(200):
            message = Message(event(i), False)
            plain += len(message.plain)
            compressed += len(message.deflated(15))
        self.assertLessEqual(compressed, 0.40 * plain, compressed / plain)

    def test_acceptAnswersNoContextTakeover(self):
        """The server takes the first permessage-deflate offer, answers
        server_no_context_takeover (asked or not) and client_no_context_takeover, and
        keeps the window the client asked for."""
        self.assertIsNone(deflate.accept([]))
        accepted = deflate.accept([PerMessageDeflateOffer.parse({})])
        self.assertEqual(accepted.get_extension_string(), "permessage-deflate; "
                         "client_no_context_takeover; server_no_context_takeover")
        accepted = deflate.accept([PerMessageDeflateOffer.parse(
            {"server_no_context_takeover": [True], "server_max_window_bits": ["10"]})])
        self.assertEqual(accepted.get_extension_string(), "permessage-deflate; "
                         "server_no_context_takeover; server_max_window_bits=10; "
                         "client_no_context_takeover")


class _Compressing(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        self.factory.closed.put(code)


class RealClientsTests(ServerTestCase):
    """A server with ``compression`` on, real Redis, real compressing clients."""

    config = ServerTestCase.config.replace(compression=True)

    async def autobahnClient(self, path: str, window: int = 0) -> _Compressing:
        """Autobahn's client, offering permessage-deflate (a window, if given)."""
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}{path}")
        factory.setProtocolOptions(
            autoPingInterval=0, openHandshakeTimeout=TIMEOUT,
            perMessageCompressionOffers=[PerMessageDeflateOffer(
                accept_no_context_takeover=True, accept_max_window_bits=True,
                request_max_window_bits=window)],
            perMessageCompressionAccept=lambda response: PerMessageDeflateResponseAccept(
                response) if isinstance(response, PerMessageDeflateResponse) else None)
        factory.protocol = _Compressing
        factory.opened, factory.messages, factory.closed = (
            defer.Deferred(), defer.DeferredQueue(), defer.DeferredQueue())
        await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)
        proto = await factory.opened.addTimeout(TIMEOUT, reactor)
        self.addCleanup(lambda: proto.transport.abortConnection())
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return proto

    async def test_mixedClientsOnOneChannel(self):
        """Autobahn's client (window 15 and window 10), ``websockets`` with
        compression="deflate" and a plain client share a channel: each gets every payload,
        large and small; the compressing ones negotiated permessage-deflate."""
        from websockets.sync.client import connect

        path = "/ws/foobar?subscribe-broadcast"
        full = await self.autobahnClient(path)
        narrow = await self.autobahnClient(path, window=10)
        browser = await threads.deferToThread(
            lambda: connect(f"ws://127.0.0.1:{self.port}{path}", compression="deflate",
                            open_timeout=TIMEOUT).__enter__())
        self.addCleanup(browser.close)
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        plain = await self.client(path)
        self.assertEqual([type(e).__name__ for e in browser.protocol.extensions],
                         ["PerMessageDeflate"])
        self.assertEqual(narrow._perMessageCompress.server_max_window_bits, 10)
        payloads = [event(1) * 30, b"small", event(2)]
        for payload in payloads:
            self.publish("ws4tx:broadcast:foobar", payload)
        for payload in payloads:
            self.assertEqual(await full.factory.messages.get().addTimeout(TIMEOUT, reactor),
                             payload)
            self.assertEqual(await narrow.factory.messages.get().addTimeout(TIMEOUT, reactor),
                             payload)
            self.assertEqual(await plain.next(), (payload, False))
            received = await threads.deferToThread(browser.recv, TIMEOUT)
            self.assertEqual(received, payload.decode())

    async def test_aReadsMessagesReachEveryWindowInOneWrite(self):
        """The messages of one Redis read reach compressing clients of two windows and a
        plain client in one write each (deflated once per message and window, joined
        once per window), every payload intact and in order."""
        path, channel = "/ws/foobar?subscribe-broadcast", "ws4tx:broadcast:foobar"
        full = await self.autobahnClient(path)
        narrow = await self.autobahnClient(path, window=10)
        plain = await self.client(path)
        self.publish(channel, b"first")  # past their joins (a join holds live messages)
        for queue in (full.factory.messages, narrow.factory.messages):
            self.assertEqual(await queue.get().addTimeout(TIMEOUT, reactor), b"first")
        self.assertEqual(await plain.next(), (b"first", False))
        counted = [CountedWrites(proto)
                   for proto in self.factory.node.router.hub.members(channel)]
        payloads = [event(1) * 30, b"small", event(2) * 10]
        self.factory.node.broker._sub.dataReceived(
            b"".join(pubsub_message(channel, payload) for payload in payloads))
        for payload in payloads:
            for queue in (full.factory.messages, narrow.factory.messages):
                self.assertEqual(await queue.get().addTimeout(TIMEOUT, reactor), payload)
            self.assertEqual(await plain.next(), (payload, False))
        self.assertEqual([len(c.writes) for c in counted], [1, 1, 1])
        deflated = [c.writes[0] for c in counted if c.writes[0][0] & 0x40]
        self.assertEqual(len(deflated), 2)  # the compressing clients' runs start deflated
        self.assertNotEqual(deflated[0], deflated[1])  # one per window

    async def test_compressedClientMessagesArePublished(self):
        """A message a client sends compressed is inflated and published."""
        client = await self.autobahnClient("/ws/foobar?subscribe-broadcast&publish-broadcast"
                                           "&echo")
        client.sendMessage(event(3))
        self.assertEqual(await client.factory.messages.get().addTimeout(TIMEOUT, reactor),
                         event(3))

    async def test_compressionBombClosesWith1009(self):
        """10 MB of zeros deflated to about 10 KB (under the frame limit) is refused with
        1009 once it inflates past MAX_MESSAGE_SIZE; another client is unaffected."""
        bystander = await self.client("/ws/foobar?subscribe-broadcast")
        bomber = await self.autobahnClient("/ws/foobar?publish-broadcast")
        bomber.sendMessage(b"\x00" * 10_000_000, isBinary=True)
        self.assertEqual(await bomber.factory.closed.get().addTimeout(TIMEOUT, reactor),
                         closecodes.MESSAGE_TOO_BIG)
        self.publish("ws4tx:broadcast:foobar", b"still here")
        self.assertEqual(await bystander.next(), (b"still here", False))
