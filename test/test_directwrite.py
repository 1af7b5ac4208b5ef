"""The direct write path (ws4tx.server.directwrite) on real loopback sockets: small writes
never wait for writability, a full kernel buffer does (partial writes, EAGAIN), producers
are paused and resumed as by Twisted, closing and resetting while writing, and only
plain-TCP ports take it."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from typing import Any, Optional

from twisted.internet import defer, endpoints, error, reactor, task, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from ws4tx.server import directwrite
from ws4tx.server.directwrite import DirectWritePort, DirectWriteReactor, DirectWriteServer
from ws4tx.server.embedded import free_port
from ws4tx.server.reuseport import ReusePortParser

from test._server import ServerTestCase
from test._wsclient import TIMEOUT, connect

#: More than the kernel buffers between two loopback sockets (send + receive).
BIG = 16 * 1024 * 1024


class Server(Protocol):
    """The server side: tells when it is connected and when it is lost."""

    def __init__(self) -> None:
        self.made: defer.Deferred[Server] = defer.Deferred()
        #: Fires with the reason (in a list: a Failure would errback it) once lost.
        self.lost: defer.Deferred[list[Failure]] = defer.Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.callback([reason])


class Sink(Protocol):
    """A client that keeps what it reads and says when it has ``want`` bytes."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.data = bytearray()
        self.enough: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[list[Failure]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.want and not self.enough.called:
            self.enough.callback(None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed.callback([reason])


@implementer(IPushProducer)
class Producer:
    """Counts how often the transport pauses and resumes it."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed: defer.Deferred[None] = defer.Deferred()

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        if not self.resumed.called:
            self.resumed.callback(None)

    def stopProducing(self) -> None:
        pass


def chunks(total: int, size: int = 65536) -> list[bytes]:
    """``total`` bytes of a reproducible sequence, in chunks."""
    out, n = [], 0
    while n < total:
        block = hashlib.sha256(str(n).encode()).digest() * (size // 32)
        out.append(block[:min(size, total - n)])
        n += len(out[-1])
    return out


class DirectWriteTests(unittest.TestCase):
    """A DirectWritePort on 127.0.0.1 and Twisted clients (or raw sockets)."""

    def setUp(self) -> None:
        self.servers: defer.DeferredQueue[Server] = defer.DeferredQueue()
        self.added: list[Any] = []
        add = reactor.addWriter

        def spy(writer: Any) -> None:
            self.added.append(writer)
            add(writer)

        self.patch(reactor, "addWriter", spy)

    def listen(self) -> int:
        def build(addr: Any) -> Server:
            server = Server()
            server.made.addCallback(self.servers.put)
            return server

        factory = Factory.forProtocol(Server)
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = directwrite.listen(reactor, 0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def connected(self, sink: Sink) -> Server:
        port = self.listen()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await endpoints.connectProtocol(endpoint, sink)
        self.addCleanup(lambda: sink.transport.abortConnection())
        server: Server = await self.servers.get().addTimeout(TIMEOUT, reactor)
        self.assertIsInstance(server.transport, DirectWriteServer)
        return server

    async def test_smallWritesNeverWaitForWritability(self):
        """What fits in the kernel's buffer is sent after the turn, in order, without
        the socket ever being registered for writability (Twisted's tcp.Server
        registers it on every write)."""
        sink = Sink(want=3 * 100)
        server = await self.connected(sink)
        for k in range(3):
            server.transport.write(bytes([65 + k]) * 100)
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(bytes(sink.data), b"A" * 100 + b"B" * 100 + b"C" * 100)
        # Another turn, another write: still never watched.
        sink.want += 5
        sink.enough = defer.Deferred()
        server.transport.writeSequence([b"de", b"f", b"", b"gh"])
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(bytes(sink.data[-5:]), b"defgh")
        self.assertNotIn(server.transport, self.added)
        self.assertNotIn(server.transport, reactor.getWriters())

    async def test_fullKernelBufferWaitsForWritability(self):
        """Past what the kernel takes (a partial send, then EAGAIN) the socket is
        registered for writability; once the reader drains it, every byte arrives in
        order and the socket is no longer watched."""
        blocks = chunks(BIG)
        sink = Sink(want=BIG)
        server = await self.connected(sink)
        sink.transport.pauseProducing()  # the client stops reading
        for block in blocks:
            server.transport.write(block)
        # After the turn: the kernel took part of it, the rest waits for writability.
        await task.deferLater(reactor, 0, lambda: None)
        await task.deferLater(reactor, 0, lambda: None)
        self.assertIn(server.transport, reactor.getWriters())
        self.assertGreater(len(server.transport.dataBuffer) - server.transport.offset
                           + server.transport._tempDataLen, 0)
        sink.transport.resumeProducing()
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(len(sink.data), BIG)
        self.assertEqual(hashlib.sha256(sink.data).digest(),
                         hashlib.sha256(b"".join(blocks)).digest())
        await task.deferLater(reactor, 0, lambda: None)
        self.assertNotIn(server.transport, reactor.getWriters())
        # Small writes go the direct way again.
        self.added.clear()
        sink.want += 10
        sink.enough = defer.Deferred()
        server.transport.write(b"0123456789")
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(bytes(sink.data[-10:]), b"0123456789")
        self.assertNotIn(server.transport, self.added)

    async def test_partialSendOfOneTurnsWrites(self):
        """Turn after turn of writes smaller than one send (SEND_LIMIT) to a client that
        does not read: one send() is partial (the kernel took part of it), the rest
        waits for writability, and once the client reads, every byte arrives in order."""
        blocks = chunks(BIG, size=100_000)
        sink = Sink(want=BIG)
        server = await self.connected(sink)
        transport = server.transport
        sink.transport.pauseProducing()
        given = 0
        for block in blocks:
            transport.write(block)
            given += 1
            await task.deferLater(reactor, 0, lambda: None)
            if transport in reactor.getWriters():
                break
        self.assertIn(transport, self.added)
        self.assertLess(given, len(blocks), "the kernel took 16 MiB without a full buffer")
        for block in blocks[given:]:  # while it waits for writability
            transport.write(block)
        sink.transport.resumeProducing()
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(hashlib.sha256(sink.data).digest(),
                         hashlib.sha256(b"".join(blocks)).digest())

    async def test_producerPausedAndResumed(self):
        """A streaming producer is paused as soon as more than ``bufferSize`` bytes are
        buffered (at the write, as with Twisted's transport: ws4tx's slow-consumer
        bound counts from there), and resumed once everything has been sent."""
        sink = Sink(want=BIG)
        server = await self.connected(sink)
        producer = Producer()
        server.transport.registerProducer(producer, True)
        sink.transport.pauseProducing()
        server.transport.write(b"x" * 1000)
        self.assertEqual(producer.paused, 0)
        for block in chunks(BIG - 1000):
            server.transport.write(block)
        self.assertGreater(producer.paused, 0)  # at once, within the writes
        await task.deferLater(reactor, 0, lambda: None)
        self.assertFalse(producer.resumed.called)
        sink.transport.resumeProducing()
        await producer.resumed.addTimeout(TIMEOUT, reactor)
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(len(sink.data), BIG)

    async def test_producerOfSmallWritesIsNeverPaused(self):
        """Writes that the kernel takes at once never pause the producer."""
        sink = Sink(want=100 * 1000)
        server = await self.connected(sink)
        producer = Producer()
        server.transport.registerProducer(producer, True)
        for _ in range(100):
            server.transport.write(b"y" * 1000)
            await task.deferLater(reactor, 0, lambda: None)
        await sink.enough.addTimeout(TIMEOUT, reactor)
        self.assertEqual(producer.paused, 0)

    async def test_loseConnectionAfterWrites(self):
        """loseConnection() in the turn of the writes: everything arrives, then a clean
        close."""
        blocks = chunks(4 * 1024 * 1024)
        sink = Sink(want=4 * 1024 * 1024)
        server = await self.connected(sink)
        for block in blocks:
            server.transport.write(block)
        server.transport.loseConnection()
        [reason] = await sink.closed.addTimeout(TIMEOUT, reactor)
        self.assertTrue(reason.check(error.ConnectionDone))
        self.assertEqual(bytes(sink.data), b"".join(blocks))
        [lost] = await server.lost.addTimeout(TIMEOUT, reactor)
        self.assertTrue(lost.check(error.ConnectionDone))

    async def test_abortDropsWhatIsBuffered(self):
        """abortConnection() after writes in the same turn: nothing is sent after it, and
        the connection is lost as aborted (no error from the flush)."""
        sink = Sink(want=1)
        server = await self.connected(sink)
        server.transport.write(b"never sent")
        server.transport.abortConnection()
        [lost] = await server.lost.addTimeout(TIMEOUT, reactor)
        self.assertTrue(lost.check(error.ConnectionAborted))
        await sink.closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual(bytes(sink.data), b"")

    async def test_peerResetWhileWriting(self):
        """The peer resets the connection while the server writes (and does not read, so
        only a send can notice): the send fails, the connection is lost as such, and the
        protocol hears it once."""
        port = self.listen()
        raw = socket.create_connection(("127.0.0.1", port))
        server = await self.servers.get().addTimeout(TIMEOUT, reactor)
        server.transport.stopReading()
        server.transport.write(b"hello")
        await task.deferLater(reactor, 0, lambda: None)
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(raw.recv(5), b"hello")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # RST

        def write() -> None:
            if server.transport.connected:
                server.transport.write(b"after the reset")

        writing = task.LoopingCall(write)
        writing.start(0.01)
        self.addCleanup(lambda: writing.running and writing.stop())
        [lost] = await server.lost.addTimeout(TIMEOUT, reactor)
        self.assertTrue(lost.check(error.ConnectionLost), lost)
        self.assertFalse(server.transport.connected)


class WhereItIsUsedTests(unittest.TestCase):
    """Only plain-TCP ports get the direct write path."""

    async def test_tcpDescriptionGetsDirectWrites(self):
        ep = endpoints.serverFromString(DirectWriteReactor(reactor), "tcp:0:interface=127.0.0.1")
        port = await ep.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, DirectWritePort)
        ep = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await ep.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertNotIsInstance(port, DirectWritePort)
        self.assertIs(port.transport, tcp.Server)

    async def test_reusePortGetsDirectWritesAndReusePort(self):
        number = free_port()
        ep = ReusePortParser().parseStreamServer(DirectWriteReactor(reactor), str(number),
                                                 interface="127.0.0.1")
        port = await ep.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, DirectWritePort)
        self.assertTrue(port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        # A second one on the same port: the point of SO_REUSEPORT.
        again = await ReusePortParser().parseStreamServer(
            DirectWriteReactor(reactor), str(number), interface="127.0.0.1").listen(
                Factory.forProtocol(Protocol))
        self.addCleanup(again.stopListening)

    async def test_tlsIsTwistedsOwn(self):
        """``ssl:`` ports listen through the reactor's own listenSSL: no direct writes."""
        pem = os.path.join(os.path.dirname(tcp.__file__), "..", "test", "server.pem")
        ep = endpoints.serverFromString(DirectWriteReactor(reactor),
                                        f"ssl:0:interface=127.0.0.1:privateKey={pem}")
        port = await ep.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertNotIsInstance(port, DirectWritePort)
        self.assertFalse(issubclass(port.transport, DirectWriteServer))


class PushServiceTests(ServerTestCase):
    """ws4tx's own listening ports: direct writes by default, Twisted's when off."""

    async def transportOf(self, **config: Any) -> Optional[type]:
        number = free_port()
        await self.startServer(listen=[f"tcp:{number}:interface=127.0.0.1"], config=config)
        client = await connect(number, "/ws/foobar?subscribe-broadcast")
        self.addCleanup(client.close)
        proto = await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return type(proto.transport)

    async def test_directByDefault(self):
        self.assertIs(await self.transportOf(), DirectWriteServer)

    async def test_twistedsWhenOff(self):
        self.assertIs(await self.transportOf(direct_writes=False), tcp.Server)
