"""Redis outages: the server survives, says so once, resubscribes and delivers again."""

from __future__ import annotations

import os
import signal

from twisted.logger import globalLogPublisher

from ws4tx.config import ServerConfig

from test._server import ServerTestCase, non_probe


class LogCapture:
    """Collects the log events of a test."""

    def __init__(self, case) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def count(self, text: str) -> int:
        return sum(1 for e in self.events if text in (e.get("log_format") or ""))


class RestartTests(ServerTestCase):
    """Redis stops and comes back on the same port while clients are connected."""

    async def _restart(self, sig: int) -> None:
        self.redis_server.stop(sig)
        await self.brokerEvent("disconnected")
        self.redis_server.start()
        await self.brokerEvent("connected")

    async def test_deliveryResumesAfterRestart(self):
        """After a restart every client gets what is published; the outage is logged once."""
        log = LogCapture(self)
        clients = [await self.client("/ws/foobar?subscribe-broadcast") for _ in range(5)]
        await self._restart(signal.SIGKILL)
        self.assertEqual(self.publish("ws4tx:broadcast:foobar", "after"), 1)
        for client in clients:
            self.assertEqual(await client.text(), "after")
        self.assertEqual(log.count("lost the Redis subscriber connection"), 1)
        self.assertEqual(log.count("Redis subscriber connection restored"), 1)
        self.assertEqual(self.service.broker.stats["reconnects"], 1)

    async def test_repeatedRestartsLeakNothing(self):
        """Five restarts in a row: still one subscriber, one command connection, and
        only the channels in use."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(5):
            await self._restart(signal.SIGTERM)
            self.publish("ws4tx:broadcast:foobar", f"round {i}")
            self.assertEqual(await client.text(), f"round {i}")
        clients = self.redis.client_list()
        # ours: one subscriber and (once reconnected) one command connection; plus this
        # test's redis-py client
        self.assertLessEqual(len(clients), 3)
        self.assertEqual(len([c for c in clients if int(c["sub"])]), 1)
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds + 1)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:foobar"])

    async def test_clientPublishFailsWhileRedisIsDown(self):
        """While Redis is down a client's publish fails (logged), and the client stays."""
        log = LogCapture(self)
        sender = await self.client("/ws/foobar?subscribe-broadcast&publish-broadcast&echo")
        self.redis_server.stop()
        await self.brokerEvent("disconnected")
        sender.send("lost?")
        self.redis_server.start()
        await self.brokerEvent("connected")
        self.assertGreaterEqual(log.count("publishing for {peer} failed"), 1)
        self.publish("ws4tx:broadcast:foobar", "back")
        self.assertEqual(await sender.text(), "back")


class UnreachableAtStartTests(ServerTestCase):
    """Redis is down when the server starts."""

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        self.redis_server.stop()
        await self.startServer(wait=False)

    async def test_serverStartsAndServesOnceRedisIsUp(self):
        """The server accepts clients while Redis is down and delivers once it is up."""
        import redis

        client = await self.client("/ws/foobar?subscribe-broadcast", subscribed=False)
        self.redis_server.start()
        await self.brokerEvent("connected")
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.addCleanup(self.redis.close)
        self.publish("ws4tx:broadcast:foobar", "finally")
        self.assertEqual(await client.text(), "finally")


class PauseTests(ServerTestCase):
    """A Redis that holds the connection but stops answering is noticed and replaced."""

    config = ServerConfig(ping_interval=0, redis_ping_interval=0.2, redis_timeout=0.5)

    async def test_pausedRedisIsDetectedAndReplaced(self):
        """CLIENT PAUSE past the ping timeout: the subscriber is replaced, delivery resumes."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        self.redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected", timeout=10)
        self.assertGreaterEqual(self.service.broker.stats["deaf"], 1)
        self.publish("ws4tx:broadcast:foobar", "awake")
        self.assertEqual(await client.text(), "awake")

    async def test_killedSubscriberIsReplaced(self):
        """CLIENT KILL TYPE pubsub: the subscriber reconnects and delivery resumes."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        self.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        self.publish("ws4tx:broadcast:foobar", "again")
        self.assertEqual(await client.text(), "again")
