"""One flow control for every transport (ws4tx.server._flow): its bounds on a
deterministic clock, then a WebSocket client and an SSE stream that stop reading, on one
channel of a real server and a real Redis, dropped alike while a reader gets everything."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.trial import unittest

from ws4tx import closecodes
from ws4tx.server._flow import Flow
from ws4tx.server.config import ServerConfig
from ws4tx.server.node import close_label
from ws4tx.server.streams import FIRST_PAGE

from test._server import ServerTestCase
from test._wsclient import TIMEOUT, handshake_request, never_reading

CONFIG = ServerConfig(max_queue_bytes=100, max_queue_messages=5, slow_timeout=10.0)


class FlowTests(unittest.SynchronousTestCase):
    """The bounds, whatever transport asks."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.stats = {"slow_consumers": 0}
        self.drops: list[str] = []
        self.flow: Flow[int] = Flow(CONFIG, self.clock, self.stats, self.drops.append)

    def test_bytesOverTheCapDropOnce(self) -> None:
        """Paused, writes are counted: the one that takes the bytes past
        max_queue_bytes is refused and drops the client, once; later ones are refused
        without another drop."""
        self.flow.pause()
        self.assertEqual([self.flow.overflows(40) for _ in range(3)], [False, False, True])
        self.assertTrue(self.flow.overflows(1))
        self.assertEqual(self.stats["slow_consumers"], 1)
        self.assertEqual(len(self.drops), 1)
        self.assertIn("120 bytes in 3 messages", self.drops[0])
        self.assertTrue(self.flow.dropped)

    def test_messagesOverTheCap(self) -> None:
        """max_queue_messages small writes while paused are kept; the next drops."""
        self.flow.pause()
        self.assertEqual([self.flow.overflows(1) for _ in range(6)], [False] * 5 + [True])

    def test_resumeForgetsWhatWasCounted(self) -> None:
        """A socket that drains starts again from nothing."""
        self.flow.pause()
        self.flow.overflows(90)
        self.flow.resume()
        self.assertIsNone(self.flow.paused_at)
        self.flow.pause()
        self.assertFalse(self.flow.overflows(90))
        self.assertEqual(self.drops, [])

    def test_slowTimeoutFromTheFirstPause(self) -> None:
        """The clock starts at the first pause, not the latest (Twisted pauses again on
        every write while the buffer is full): past slow_timeout, the next write drops."""
        self.flow.pause()
        self.clock.advance(6)
        self.flow.pause()
        self.clock.advance(4)
        self.assertFalse(self.flow.overflows(1))
        self.clock.advance(0.1)
        self.assertTrue(self.flow.overflows(1))
        self.assertIn("not drained for 10.1 s", self.drops[0])

    def test_heldPastARecoveryPageDrops(self) -> None:
        """What waits behind a recovery is bounded: max_queue_messages beyond its first
        page, then the client is dropped and nothing more is held."""
        for n in range(CONFIG.max_queue_messages + FIRST_PAGE + 1):
            self.flow.hold(n)
        self.assertEqual(self.drops, [])
        self.flow.hold(-1)
        self.assertEqual(len(self.flow.pending), CONFIG.max_queue_messages + FIRST_PAGE + 1)
        self.assertEqual(self.stats["slow_consumers"], 1)
        self.assertIn("recovery did not drain", self.drops[0])

    def test_aQueueOnlyWhileSomethingWaits(self) -> None:
        """An idle client keeps no queue of its own (every flow shares one empty
        tuple); one is made for what waits and dropped once it is taken, kept or
        cleared away; what waits comes out in order."""
        other: Flow[int] = Flow(CONFIG, self.clock, self.stats, self.drops.append)
        self.assertIs(self.flow.pending, other.pending)
        self.flow.queue(1)
        self.flow.hold(2)
        self.flow.queue(3)
        self.assertEqual(list(self.flow.pending), [1, 2, 3])
        self.assertEqual([self.flow.next(), self.flow.next()], [1, 2])
        self.flow.keep(lambda n: n != 3)
        self.assertIs(self.flow.pending, other.pending)
        self.flow.queue(4)
        self.flow.keep(lambda n: True)
        self.assertEqual(self.flow.next(), 4)
        self.assertIs(self.flow.pending, other.pending)
        self.flow.queue(5)
        self.flow.clear()
        self.assertIs(self.flow.pending, other.pending)
        self.assertFalse(self.flow.pending)

    def test_aRunCountsAllItsMessages(self) -> None:
        """Several messages written at once while the socket does not drain count as
        that many against max_queue_messages."""
        self.flow.pause()
        self.assertFalse(self.flow.overflows(3, messages=3))
        self.assertEqual([self.flow.overflows(1) for _ in range(3)], [False, False, True])
        self.assertIn("6 messages", self.drops[0])


class SlowTransportsTests(ServerTestCase):
    """A slow SSE stream is a slow WebSocket client."""

    config = ServerTestCase.config.replace(max_queue_bytes=64 * 1024)

    async def test_bothDroppedAlikeTheReaderGetsAll(self) -> None:
        """A WebSocket client and an SSE stream of one channel stop reading: both are
        dropped as slow consumers (counted, closed as 4008) once more than
        max_queue_bytes wait for them, well before 20 MB were sent; a reading client
        gets every message, in order; the node keeps only it."""
        node = self.factory.node
        path = "/ws/news?subscribe-broadcast"
        reader = await self.client(path)
        await never_reading(self, self.port, handshake_request(path))
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        await never_reading(
            self, self.port,
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        await node.router.barrier()
        self.assertEqual(node.clientCount(), 3)
        loop, sent = self.publishSteadily("ws4tx:broadcast:news")
        got = 0
        while node.stats["slow_consumers"] < 2:
            self.assertLess(sent[0], 1000)
            text = await reader.text()
            self.assertEqual(int(text.split(" ", 1)[0]), got)
            got += 1
        loop.stop()
        while got < sent[0]:
            self.assertEqual(int((await reader.text()).split(" ", 1)[0]), got)
            got += 1
        # Their connections were aborted (they do not read: they cannot see it); the
        # node forgets them once their ends come round in the reactor.
        deadline = reactor.seconds() + TIMEOUT
        while node.clientCount() > 1 and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(node.stats["slow_consumers"], 2)
        self.assertEqual(node.closed[close_label(closecodes.SLOW_CONSUMER)], 2)
        self.assertEqual(node.clientCount(), 1)
        self.assertEqual(node.addresses.total(), 1)
