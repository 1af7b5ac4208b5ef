"""The fault suite: Redis killed under load, and a network path to Redis that swallows
everything (a blackhole), against a real Redis and real WebSocket clients."""

from __future__ import annotations

import json
import os
import signal

import redis
from twisted.internet import defer, endpoints, protocol, reactor, task

from ws4tx import envelope
from ws4tx.redis_address import RedisAddress
from ws4tx.server.config import ServerConfig

from test._server import ServerTestCase, non_probe
from test._wsclient import TIMEOUT


class KillUnderLoadTests(ServerTestCase):
    """SIGKILL Redis five times while 100 clients listen and messages flow."""

    async def test_hundredClientsSurviveFiveKills(self):
        """Every client stays connected and gets every message published after each
        resubscription; event clients are told of each interruption and resumption;
        nothing leaks."""
        raw = [await self.client("/ws/load?subscribe-broadcast") for _ in range(80)]
        evented = [await self.client("/ws/load?subscribe-broadcast",
                                     protocols=(envelope.SUBPROTOCOL,)) for _ in range(20)]
        fds = len(os.listdir("/proc/self/fd"))
        seq = [0]
        #: sequence number -> fired once that many messages have been published
        published: dict[int, defer.Deferred[None]] = {}

        def publish() -> None:
            try:
                self.redis.publish("ws4tx:broadcast:load", str(seq[0]))
            except redis.RedisError:
                pass  # Redis is down: this one is lost, as pub/sub loses it
            seq[0] += 1
            if seq[0] in published:
                published.pop(seq[0]).callback(None)

        loop = task.LoopingCall(publish)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        for _ in range(5):
            self.redis_server.stop(signal.SIGKILL)
            await self.brokerEvent("disconnected")
            self.redis_server.start()
            await self.brokerEvent("connected")
            first = seq[0]
            marker = first + 10  # wait until ten more have been published
            published[marker] = defer.Deferred()
            await published[marker].addTimeout(TIMEOUT, reactor)
            for client in raw + evented:
                await self._receivedFrom(client, first, marker)
        loop.stop()
        for client in evented:
            self.assertEqual(client.events.count(envelope.INTERRUPTED_EVENT), 5)
            self.assertEqual(client.events.count(envelope.RESUMED_EVENT), 5)
        for client in raw:
            self.assertEqual(client.events, [])
        self.assertEqual(self.factory.node.router.memberCount(), 100)
        self.assertEqual(len([c for c in self.redis.client_list() if int(c["sub"])]), 1)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:load"])
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds + 2)

    async def _receivedFrom(self, client, first: int, last: int) -> None:
        """Read ``client`` until it has every number from ``first`` to ``last``."""
        if not hasattr(client, "events"):
            client.events, client.numbers = [], set()
        while not set(range(first, last)) <= client.numbers:
            text = await client.text()
            if text.startswith("{"):
                client.events.append(json.loads(text)["event"])
            else:
                client.numbers.add(int(text))


class _Blackhole(protocol.Protocol):
    """One side of the proxy: forwards to its peer unless the factory swallows."""

    peer: _Blackhole | None = None

    def dataReceived(self, data: bytes) -> None:
        if not self.factory.swallow and self.peer is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()


class BlackholeProxy(protocol.Factory):
    """A TCP proxy to Redis that can start swallowing everything, both ways, while it
    keeps accepting connections."""

    protocol = _Blackhole
    swallow = False

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port

    def buildProtocol(self, addr):
        inbound = super().buildProtocol(addr)
        outbound = _Blackhole()
        outbound.factory = self
        inbound.peer, outbound.peer = outbound, inbound
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.target_port)
        endpoints.connectProtocol(endpoint, outbound).addErrback(
            lambda f: inbound.transport.loseConnection())
        return inbound


class BlackholeTests(ServerTestCase):
    """Redis becomes unreachable without any connection being closed."""

    config = ServerConfig(ping_interval=0, redis_ping_interval=0.5, redis_timeout=1.0)

    async def redisAddress(self) -> RedisAddress:
        """The server reaches Redis through the proxy."""
        self.proxy = BlackholeProxy(self.redis_server.port)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.proxy)
        self.addCleanup(port.stopListening)
        return RedisAddress(host="127.0.0.1", port=port.getHost().port)

    async def test_blackholeIsDetectedWithinTheBound(self):
        """A path that swallows everything is noticed within ping interval + timeout
        (1.5 s here), and delivery resumes once the path is back."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        self.proxy.swallow = True
        started = reactor.seconds()
        await self.brokerEvent("disconnected", timeout=5)
        self.assertLessEqual(reactor.seconds() - started, 1.5 + 0.5)
        self.assertGreaterEqual(self.service.broker.stats["deaf"], 1)
        self.proxy.swallow = False
        await self.brokerEvent("connected", timeout=15)
        self.publish("ws4tx:broadcast:foobar", "through again")
        self.assertEqual(await client.text(), "through again")
