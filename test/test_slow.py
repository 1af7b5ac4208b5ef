"""Slow consumers: a client that stops reading is dropped; the others are not delayed."""

from __future__ import annotations

import json
import resource

from twisted.internet import endpoints, reactor, task
from twisted.internet.protocol import Protocol

from ws4tx import closecodes

from test._server import ServerTestCase
from test._wsclient import TIMEOUT, handshake_request


class NeverReads(Protocol):
    """Shakes hands, then stops reading its socket for good."""

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.pauseProducing()


class SlowConsumerTests(ServerTestCase):
    """Bounded send queues."""

    config = ServerTestCase.config.replace(max_queue_bytes=256 * 1024, slow_timeout=2.0)

    async def test_clientThatNeverReadsIsDropped(self):
        """At 1000 msg/s a client that never reads is dropped with 4008 within the bound,
        memory stays bounded, and a normal client on the channel gets every message."""
        normal = await self.client("/ws/foobar?subscribe-broadcast")
        slow = NeverReads(handshake_request("/ws/foobar?subscribe-broadcast"))
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoints.connectProtocol(endpoint, slow)
        self.addCleanup(slow.transport.abortConnection)
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sent = [0]
        filler = "x" * 1000

        def publish_batch() -> None:  # 10 every 10 ms: 1000 msg/s of ~1 KB
            for _ in range(10):
                payload = json.dumps({"n": sent[0], "f": filler})
                self.service.broker.publish("ws4tx:broadcast:foobar", payload.encode())
                sent[0] += 1

        loop = task.LoopingCall(publish_batch)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        left = await self.factory.test_left.get().addTimeout(15, reactor)
        self.assertIsNot(left, None)
        self.assertEqual(self.factory.stats["slow_consumers"], 1)
        self.assertEqual(left.localCloseCode, closecodes.SLOW_CONSUMER)
        loop.stop()
        last = sent[0] - 1

        received = -1
        while received < last:
            message = json.loads(await normal.text())
            self.assertEqual(message["n"], received + 1)  # nothing lost, in order
            received = message["n"]
        # A loose bound for a shared machine (the queue cap is 256 KiB); the latency of
        # the normal client is measured by bench/, not asserted here.
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        self.assertLess(grown_kib, 64 * 1024)
