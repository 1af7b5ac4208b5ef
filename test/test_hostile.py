"""Hostile input: each answered with the right status or close code, the server unharmed
and other clients unaffected."""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, endpoints, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel

from ws4tx import closecodes
from ws4tx.naming import Identity
from ws4tx.server.auth import HandshakeRequest
from ws4tx.server.config import ServerConfig
from ws4tx.server.deflate import deflate
from ws4tx.server.service import PushService
from ws4tx.server.web import HeadDeadlines
from ws4tx.testing import MemoryBroker

from test._server import ServerTestCase
from test._wsclient import TIMEOUT, handshake_request, raw_request, status_of


class RawClient(Protocol):
    """Writes what it is told; collects what comes back; ``lost`` fires at the end."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(self.data)


class OpenThenClose(RawClient):
    """Shakes hands, and closes as soon as the server accepted."""

    def connectionMade(self) -> None:
        self.transport.write(handshake_request("/ws/foobar?subscribe-broadcast"))

    def dataReceived(self, data: bytes) -> None:
        first = not self.data
        super().dataReceived(data)
        if first and b" 101 " in data:
            self.transport.write(client_frame(0x8, struct.pack("!H", 1000)))
        elif b"\x88" in data:  # the server's close frame: the handshake is over
            self.transport.loseConnection()


def client_frame(opcode: int, payload: bytes = b"", masked: bool = True,
                 claimed_length: int | None = None, fin: bool = True) -> bytes:
    """A WebSocket frame from a client, optionally unmasked or lying about its length."""
    length = len(payload) if claimed_length is None else claimed_length
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def fragmented(payload: bytes) -> bytes:
    """A text message from a client, one frame per byte."""
    frames = [client_frame(0x1 if i == 0 else 0x0, payload[i:i + 1],
                           fin=i == len(payload) - 1) for i in range(len(payload))]
    return b"".join(frames)


class _RawClients(ServerTestCase):
    """A server, and clients that write raw bytes to it."""

    async def _raw(self, data: bytes) -> RawClient:
        raw = RawClient()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoints.connectProtocol(endpoint, raw)
        self.addCleanup(raw.transport.abortConnection)
        raw.transport.write(data)
        return raw


class _BesideABystander(_RawClients):
    """An attack against a live server beside a normal client."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.bystander = await self.client("/ws/foobar?subscribe-broadcast")

    async def _bystanderFine(self) -> None:
        self.publish("ws4tx:broadcast:foobar", "still here")
        self.assertEqual(await self.bystander.text(), "still here")


class HandshakeDeadlineTests(_BesideABystander):
    """Requests that never end, against a short handshake timeout (only here: under
    load, a burst of honest handshakes may take longer than one second)."""

    config = ServerTestCase.config.replace(handshake_timeout=1.0)

    async def test_slowlorisIsCutOff(self):
        """A handshake whose head never ends is dropped after the handshake timeout."""
        raw = await self._raw(b"GET /ws/foobar HTTP/1.1\r\nHost: x\r\n")
        for i in range(3):
            raw.transport.write(b"X-Slow-%d: 1\r\n" % i)
        await raw.lost.addTimeout(5, reactor)
        await self._bystanderFine()

    async def test_tricklingBodyIsCutOff(self):
        """A request whose body trickles in is dropped once the handshake timeout has
        passed since it began, though each byte comes well within the idle timeout."""
        raw = await self._raw(b"POST /anything HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 100\r\n\r\n")
        started = reactor.seconds()
        for _ in range(3):
            raw.transport.write(b"x")
        answer = await raw.lost.addTimeout(5, reactor)
        self.assertLess(reactor.seconds() - started, 4)
        self.assertEqual(answer, b"")
        await self._bystanderFine()


class HostileInputTests(_BesideABystander):
    """Each attack against a live server beside a normal client (the default handshake
    timeout)."""


    async def _opened(self, path: str = "/ws/foobar?publish-broadcast") -> RawClient:
        raw = await self._raw(handshake_request(path))
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return raw

    def _closeCode(self, data: bytes) -> int:
        """The code of the close frame the server sent after its 101 response."""
        frames = data.partition(b"\r\n\r\n")[2]
        index = frames.find(b"\x88")
        self.assertNotEqual(index, -1, data)
        return struct.unpack("!H", frames[index + 2:index + 4])[0]

    async def test_garbageBeforeHandshake(self):
        """Random bytes instead of an HTTP request get 400 and a closed connection."""
        raw = await self._raw(os.urandom(300).replace(b"\n", b"x") + b"\r\n\r\n")
        answer = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertIn(b"400", answer.split(b"\r\n", 1)[0])
        await self._bystanderFine()

    async def test_handshakeWithABodyIsRefused(self):
        """A WebSocket handshake that declares a body gets 400 and the reason."""
        for header in ({"Content-Length": "3"}, {"Transfer-Encoding": "chunked"}):
            body = b"abc" if "Content-Length" in header else b"3\r\nabc\r\n0\r\n\r\n"
            answer = await raw_request(
                self.port, handshake_request("/ws/foobar?subscribe-broadcast", header) + body)
            status, text = status_of(answer)
            self.assertEqual(status, 400, text)
            self.assertIn("no body", text)
        await self._bystanderFine()

    async def test_tenThousandHeaders(self):
        """A request with 10,000 headers is refused with a 4xx status."""
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10000))
        raw = await self._raw(b"GET /ws/foobar HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertRegex(answer.split(b"\r\n", 1)[0], rb" 4\d\d ")
        await self._bystanderFine()

    async def test_megabyteQueryString(self):
        """A 1 MB query string is refused with 414 and the reason once the server has
        read 16 KiB of it (twisted.web's line bound), without waiting for the rest: the
        client sends only the first 17 KB and must get the answer and the end of the
        connection. (Sending the whole megabyte would race the answer against the reset
        the server's kernel sends for the unread rest.) A header line as long gets 431."""
        request = handshake_request("/ws/foobar?" + "a" * 2**20)
        status, text = status_of(
            await raw_request(self.port, request[:HTTPChannel.MAX_LENGTH + 1024]))
        self.assertEqual(status, 414)
        self.assertIn("request line is too long", text)
        request = handshake_request("/ws/foobar", {"X-Big": "b" * 2**20})
        status, text = status_of(
            await raw_request(self.port, request[:request.index(b"X-Big") + 17 * 1024]))
        self.assertEqual(status, 431)
        self.assertIn("header line is too long", text)
        await self._bystanderFine()

    async def test_frameClaimingTwoToTheSixtyThreeBytes(self):
        """A frame header announcing 2^63 - 1 bytes closes with 1009 at once."""
        raw = await self._opened()
        raw.transport.write(client_frame(0x1, b"", claimed_length=2**63 - 1))
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(self._closeCode(data), closecodes.MESSAGE_TOO_BIG)
        await self._bystanderFine()

    async def test_unmaskedClientFrame(self):
        """An unmasked client frame is a protocol error (1002)."""
        raw = await self._opened()
        raw.transport.write(client_frame(0x1, b"hello", masked=False))
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(self._closeCode(data), closecodes.PROTOCOL_ERROR)
        await self._bystanderFine()

    async def test_messageInThousandsOfFragments(self):
        """A message in 60,000 one-byte fragments (CPU, not bytes) is refused with 1008
        once it passes max_fragments; nothing of it is published. A message in fewer
        fragments goes through."""
        raw = await self._opened()
        raw.transport.write(fragmented(b"x" * 100))
        self.assertEqual(await self.bystander.text(), "x" * 100)
        raw.transport.write(fragmented(b"y" * 60000))
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(self._closeCode(data), closecodes.POLICY_VIOLATION)
        await self._bystanderFine()

    async def test_pingFlood(self):
        """Thousands of pings are answered and harm nobody."""
        raw = await self._opened()
        raw.transport.write(client_frame(0x9, b"p") * 5000)
        raw.transport.write(client_frame(0x8, struct.pack("!H", 1000)))
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(data.count(b"\x8a\x01p"), 5000)  # 5000 pongs
        await self._bystanderFine()

    async def test_peerThatStopsAnsweringPingsIsDropped(self):
        """A peer that reads but never answers WebSocket pings is dropped once the ping
        timeout has passed (here 0.5 s after a 0.5 s interval)."""
        await self.service.stopService()
        await self.startServer(config={"ping_interval": 0.5, "ping_timeout": 0.5})
        raw = await self._opened("/ws/foobar?subscribe-broadcast")
        started = reactor.seconds()
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertIn(b"\x89", data.partition(b"\r\n\r\n")[2])  # it was pinged
        self.assertLess(reactor.seconds() - started, 3)

    async def test_manyConnectsAndDisconnectsLeakNothing(self):
        """5,000 connections opened and closed leave no member, counter or descriptor."""
        fds = len(os.listdir("/proc/self/fd"))

        async def once() -> None:
            raw = OpenThenClose()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
            await endpoints.connectProtocol(endpoint, raw)
            self.assertIn(b" 101 ", await raw.lost.addTimeout(TIMEOUT, reactor))

        for _ in range(50):
            await defer.gatherResults([defer.ensureDeferred(once()) for _ in range(100)])
        while self.factory.node.router.memberCount() > 1:
            await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(self.factory.node.router.memberCount(), 1)  # the bystander
        self.assertEqual(self.factory.node.addresses.total(), 1)
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds + 5)
        await self._bystanderFine()


class HandshakeFuzzTests(SynchronousTestCase):
    """Random bytes into the HTTP/WebSocket stack, with no sockets: nothing escapes."""

    def setUp(self) -> None:
        clock = Clock()
        self.service = PushService(ServerConfig(ping_interval=0), broker=MemoryBroker(),
                                   reactor=clock)
        self.service.node.start()

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(
        st.binary(max_size=2048),
        st.builds(lambda path, junk: handshake_request(path) + junk,
                  st.text(max_size=200).map(
                      lambda t: "/ws/" + t.replace("\r", "").replace("\n", "")),
                  st.binary(max_size=512)),
    ))
    def test_randomBytesNeverCrash(self, data: bytes):
        """Whatever arrives, the server answers or closes; no exception escapes."""
        proto = self.service.site.buildProtocol(("127.0.0.1", 1))
        transport = StringTransport()
        transport.protocol = proto  # as a TCP transport has (Autobahn takes it over)
        proto.makeConnection(transport)
        proto.dataReceived(data)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])


class _Connection:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.aborted = False
        self.transport.abortConnection = self._abort  # type: ignore[method-assign]

    def _abort(self) -> None:
        self.aborted = True


class RequestDeadlineTests(SynchronousTestCase):
    """The Site's deadline covers each whole request, head and body (on a Clock)."""

    def setUp(self) -> None:
        self.clock = Clock()
        service = PushService(ServerConfig(ping_interval=0, handshake_timeout=5.0),
                              broker=MemoryBroker(), reactor=self.clock)
        self.channel = service.site.buildProtocol(("127.0.0.1", 1))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_slowBodyIsAborted(self):
        """A complete head followed by a body that trickles in (a byte every 2 s) is
        aborted when the deadline passes."""
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(2):
            self.clock.advance(2)
            self.channel.dataReceived(b"x")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_eachKeptAliveRequestHasItsOwnDeadline(self):
        """After a whole request, an idle keep-alive connection has no request deadline
        (only the idle timeout, 15 s); the next request has the deadline from its first
        byte."""
        self.channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"404", self.transport.value())
        self.clock.advance(14)
        self.assertFalse(self.transport.disconnecting)
        self.channel.dataReceived(b"GET /nothing HTTP/1.1\r\n")
        self.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)


class HeadDeadlineTests(SynchronousTestCase):
    """One timer serves every connection that still owes its request head."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = HeadDeadlines(5.0, self.clock)

    def test_onlyLateConnectionsAreAborted(self):
        """A connection is aborted when its own deadline passes, unless released."""
        first, second, released = _Connection(), _Connection(), _Connection()
        self.deadlines.watch(first)
        self.clock.advance(2)
        self.deadlines.watch(second)
        self.deadlines.watch(released)
        self.deadlines.release(released)
        self.clock.advance(3)
        self.assertEqual((first.aborted, second.aborted), (True, False))
        self.clock.advance(1.9)
        self.assertFalse(second.aborted)
        self.clock.advance(0.1)
        self.assertTrue(second.aborted)
        self.assertFalse(released.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimerLeftWhenAllReleased(self):
        """Once every watched connection is released, no timer is pending."""
        connection = _Connection()
        self.deadlines.watch(connection)
        self.deadlines.release(connection)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _HeldAuthenticator:
    """Answers each handshake with a Deferred the test fires (a slow session look-up)."""

    def __init__(self) -> None:
        #: One-tuples (a Deferred in a DeferredQueue would chain) of pending answers.
        self.pending: defer.DeferredQueue[tuple[defer.Deferred[Identity]]] = \
            defer.DeferredQueue()

    def authenticate(self, request: HandshakeRequest) -> defer.Deferred[Identity]:
        d: defer.Deferred[Identity] = defer.Deferred()
        self.pending.put((d,))
        return d


class ResetDuringAuthenticationTests(_RawClients):
    """A client that resets its connection while it is being authenticated is never
    opened: no member, no Redis subscription, nothing for a drain to wait for."""

    config = ServerTestCase.config.replace(max_connections_per_ip=0)
    clients = 1000

    async def startServer(self, wait: bool = True, **kwargs: Any) -> None:
        self.authenticator = _HeldAuthenticator()
        await super().startServer(wait, authenticator=self.authenticator, **kwargs)

    async def test_resetWhileAuthenticatingLeaksNothing(self):
        """1,000 handshakes reset while their authentication is pending, then answered:
        0 members, 0 subscriptions in Redis, 0 clients on the health URL, and a drain that
        has nothing to wait for."""
        channel = "ws4tx:user:john:foobar"
        request = handshake_request("/ws/foobar?subscribe-broadcast&subscribe-user")
        raws = [await self._raw(request) for _ in range(self.clients)]
        answers = [await self.authenticator.pending.get().addTimeout(TIMEOUT, reactor)
                   for _ in raws]
        for raw in raws:
            raw.transport.abortConnection()
        for _ in raws:  # the server saw every connection go
            await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        for (answer,) in answers:
            answer.callback(Identity(user="john"))
        self.assertEqual(self.factory.node.router.memberCount(), 0)
        self.assertEqual(self.factory.test_joined.pending, [])
        self.assertEqual(dict(self.redis.pubsub_numsub(channel, "ws4tx:broadcast:foobar")),
                         {channel.encode(): 0, b"ws4tx:broadcast:foobar": 0})
        self.assertEqual(self.factory.node.addresses.total(), 0)
        health = await raw_request(self.port, b"GET /ws4tx/health HTTP/1.0\r\n\r\n")
        self.assertEqual(json.loads(health.partition(b"\r\n\r\n")[2])["clients"], 0)
        self.assertTrue(self.factory.node.whenDrained().called)
        self.assertEqual(self.flushLoggedErrors(), [])



class _HeadClient(RawClient):
    """``head`` fires with the response head once it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.head: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if b"\r\n\r\n" in self.data and not self.head.called:
            self.head.callback(self.data.partition(b"\r\n\r\n")[0])


class ServerHeaderTests(ServerTestCase):
    """The 101 answer says nothing of the server's software or memory."""

    async def test_noServerHeaderIn101(self):
        """No Server header (it once carried a Python object's repr, a heap address)."""
        raw = _HeadClient()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoints.connectProtocol(endpoint, raw)
        self.addCleanup(raw.transport.abortConnection)
        raw.transport.write(handshake_request("/ws/foobar?subscribe-broadcast"))
        head = (await raw.head.addTimeout(TIMEOUT, reactor)).lower()
        self.assertIn(b" 101 ", head)
        self.assertNotIn(b"\r\nserver:", head)


class _CountingInflater:
    """A zlib inflater that adds up what it gives out."""

    def __init__(self, inflater: Any, counts: list[int]) -> None:
        self._inflater, self._counts = inflater, counts

    def decompress(self, data: bytes, *args: Any) -> bytes:
        out = self._inflater.decompress(data, *args)
        self._counts.append(len(out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inflater, name)


class CompressionBombTests(_RawClients):
    """Compressed client messages against a server with compression on."""

    config = HostileInputTests.config.replace(compression=True)

    async def _setUp(self) -> None:
        await super()._setUp()
        self.bystander = await self.client("/ws/foobar?subscribe-broadcast")

    _bystanderFine = HostileInputTests._bystanderFine
    _closeCode = HostileInputTests._closeCode

    async def _bomber(self) -> RawClient:
        raw = await self._raw(handshake_request(
            "/ws/foobar?publish-broadcast",
            {"Sec-WebSocket-Extensions": "permessage-deflate"}))
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return raw

    async def _refused(self, frames: bytes) -> None:
        """``frames`` (a bomb) close with 1009, and the server never inflated more than
        MAX_MESSAGE_SIZE (and one zlib step) of it; nothing was published."""
        inflated: list[int] = []
        real = zlib.decompressobj
        self.patch(zlib, "decompressobj",
                   lambda *a: _CountingInflater(real(*a), inflated))
        raw = await self._bomber()
        raw.transport.write(frames)
        data = await raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertIn(b"permessage-deflate", data.partition(b"\r\n\r\n")[0])
        self.assertEqual(self._closeCode(data), closecodes.MESSAGE_TOO_BIG)
        self.assertLessEqual(sum(inflated), self.factory.config.max_message_size + 1)
        await self._bystanderFine()

    async def test_compressionBombInOneFrame(self):
        """10 MB of zeros deflated to about 10 KB (under the frame limit) closes with
        1009 before it is inflated past MAX_MESSAGE_SIZE."""
        bomb = deflate(b"\x00" * 10_000_000, 15)
        self.assertLess(len(bomb), self.factory.config.max_frame_size)
        await self._refused(client_frame(0x41, bomb))

    async def test_compressionBombInFragments(self):
        """The same bomb in 10 fragments, each inflating to 1 MB: refused with 1009 as
        soon as the message's inflated total passes MAX_MESSAGE_SIZE."""
        bomb = deflate(b"\x00" * 10_000_000, 15)
        step = len(bomb) // 10 + 1
        parts = [bomb[i:i + step] for i in range(0, len(bomb), step)]
        frames = b"".join(
            client_frame((0x41 if i == 0 else 0x0), part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts))
        await self._refused(frames)

    async def test_compressedMessageIsPublished(self):
        """A compressed client message under the limit is inflated and published."""
        raw = await self._bomber()
        raw.transport.write(client_frame(0x41, deflate(b"hello " * 100, 15)))
        self.assertEqual(await self.bystander.text(), "hello " * 100)
