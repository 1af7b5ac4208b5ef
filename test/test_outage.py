"""Redis outages: the server survives, says so once, resubscribes and delivers again."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import redis
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from ws4tx import closecodes
from ws4tx.redis_address import RedisAddress
from ws4tx.server.config import ServerConfig

from test._server import ServerTestCase, non_probe
from test._wsclient import TIMEOUT, connect, raw_request, status_of


class LogCapture:
    """Collects the log events of a test."""

    def __init__(self, case) -> None:
        self.events: list[dict] = []
        self._waiting: list[tuple[str, defer.Deferred[dict]]] = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        self.events.append(event)
        for item in list(self._waiting):
            if self._has(event, item[0]):
                self._waiting.remove(item)
                item[1].callback(event)

    @staticmethod
    def _has(event: dict, text: str) -> bool:
        """Whether the event's format, or its line as printed, contains ``text``."""
        fmt = event.get("log_format") or ""
        return text in fmt or (bool(fmt) and text in formatEvent(event))

    def count(self, text: str) -> int:
        return sum(1 for e in self.events if self._has(e, text))

    def waitFor(self, text: str) -> defer.Deferred[dict]:
        """Fires with the next event that has ``text`` (bounded)."""
        d: defer.Deferred[dict] = defer.Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(TIMEOUT, reactor)


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
        lines = [formatEvent(e) for e in log.events if e.get("log_format")]
        self.assertEqual(len([t for t in lines if t.startswith("Redis subscriber connection")
                              and " restored after " in t]), 1, lines)
        self.assertEqual(self.service.broker.stats["reconnects"], 1)

    async def test_healthSaysWhyRedisCannotBeReached(self):
        """Redis stopped: the first refused reconnection is a warning with the reason, and
        the health URL answers 503 with the same reason; once Redis is back, the end of
        the outage is logged with its length and the health URL is 200 without reason."""
        log = LogCapture(self)
        port = self.redis_server.address.port
        refused = log.waitFor("cannot reach Redis subscriber connection")
        self.redis_server.stop()
        event = await refused
        self.assertEqual(event["log_level"].name, "warn")
        self.assertRegex(formatEvent(event),
                         rf"^cannot reach Redis subscriber connection to "
                         rf"redis://127\.0\.0\.1:{port}/0: connection refused; "
                         r"retrying in \d+\.\d s$")
        request = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, rest = status_of(await raw_request(self.port, request))
        body = json.loads(rest.split("\r\n\r\n", 1)[1])
        self.assertEqual(status, 503)
        self.assertEqual({k: body[k] for k in ("status", "redis", "reason")}, {
            "status": "unavailable", "redis": "disconnected",
            "reason": "subscriber connection: connection refused"})
        restored = log.waitFor("Redis subscriber connection to redis://")
        # The command connection comes back on its own backoff, maybe after the subscriber.
        command_back = log.waitFor(
            f"Redis command connection to redis://127.0.0.1:{port}/0 restored")
        self.redis_server.start()
        self.assertRegex(formatEvent(await restored),
                         r" restored after \d+\.\d s \(\d+ failed attempts\)$")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        await command_back
        # Said once the reason is gone (this test resumes inside the line's logging).
        self.assertIsNone(self.service.broker.problem)
        await self.service.broker.barrier()  # a message made the whole trip again
        status, rest = status_of(await raw_request(self.port, request))
        body = json.loads(rest.split("\r\n\r\n", 1)[1])
        self.assertEqual((status, body["status"], body["redis"], body.get("reason")),
                         (200, "ok", "delivering", None))

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


class PausedDuringSetupTests(ServerTestCase):
    """Redis is paused (SIGSTOP) while the server sets up its subscriber connection: the
    TCP connection is accepted, the SUBSCRIBEs wait for an answer."""

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        pid = self.redis_server.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        await self.startServer(wait=False)

    async def test_clientJoiningDuringSetupIsSubscribed(self):
        """A client that joins while the SUBSCRIBEs are unanswered is subscribed once
        Redis answers, and gets what is published."""
        client = await self.client("/ws/foobar?subscribe-broadcast", subscribed=False)
        self.assertEqual(self.factory.node.router.memberCount(), 1)
        os.kill(self.redis_server.process.pid, signal.SIGCONT)
        await self.brokerEvent("connected")
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:foobar"])
        self.publish("ws4tx:broadcast:foobar", "subscribed after all")
        self.assertEqual(await client.text(), "subscribed after all")


class AclTests(ServerTestCase):
    """The server connects as a Redis ACL user whose channels are restricted."""

    async def redisAddress(self) -> RedisAddress:
        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "on", ">secret", "~*",
                                   "+@all", "allchannels")
        return dataclasses.replace(self.redis_server.address, username="ws4tx",
                                   password="secret")

    async def _health(self) -> tuple[int, dict]:
        request = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, rest = status_of(await raw_request(self.port, request))
        return status, json.loads(rest.split("\r\n\r\n", 1)[1])

    async def test_refusedResubscriptionFailsOnlyThatChannel(self):
        """The ACL is narrowed to ws4tx:broadcast:allowed (and the probe channels): Redis
        drops the subscriber, the resubscription of the other channel is refused
        (NOPERM). Its client is closed with 4503, a warning is logged, and everything
        else works: the allowed client gets messages, health is 200, a new client is
        subscribed; a new client of the refused channel is closed the same way."""
        log = LogCapture(self)
        allowed = await self.client("/ws/allowed?subscribe-broadcast")
        denied = await self.client("/ws/denied?subscribe-broadcast")
        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "resetchannels",
                                   "&ws4tx:broadcast:allowed", "&__ws4tx_probe__:*",
                                   "&ws4tx:control")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        code, reason = await denied.closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual((code, reason),
                         (closecodes.SUBSCRIPTION_REFUSED, "subscription refused by Redis"))
        self.assertEqual(log.count("Redis refused to subscribe"), 1)
        self.assertEqual(log.count("closing its 1 clients (allow the channel to this Redis "
                                   "user)"), 1)
        self.assertEqual(self.publish("ws4tx:broadcast:allowed", "still here"), 1)
        self.assertEqual(await allowed.text(), "still here")
        await self.service.broker.publish("ws4tx:broadcast:allowed", b"after the probe")
        self.assertEqual(await allowed.text(), "after the probe")
        status, body = await self._health()
        self.assertEqual(status, 200, body)
        newcomer = await self.client("/ws/allowed?subscribe-broadcast")
        self.publish("ws4tx:broadcast:allowed", "welcome")
        self.assertEqual(await newcomer.text(), "welcome")
        late = await connect(self.port, "/ws/denied?subscribe-broadcast")
        self.addCleanup(late.close)
        code, _ = await late.closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, closecodes.SUBSCRIPTION_REFUSED)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:allowed"])

    async def test_refusedProbeChannelNamesTheAclFix(self):
        """An ACL without the delivery probe's channels (a real ``ACL SETUSER``): one
        warning names the channels and the command that allows them, nothing is retried
        or said to pass by itself, the health URL follows the connection and the clients
        are served; once the ACL allows them and the subscriber reconnects, the probe is
        subscribed and delivery probed again."""
        log = LogCapture(self)
        client = await self.client("/ws/allowed?subscribe-broadcast")
        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "resetchannels", "&ws4tx:*")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        [line] = [formatEvent(e) for e in log.events if "delivery probe" in formatEvent(e)]
        self.assertRegex(line, r"^Redis refused the delivery probe channel __ws4tx_probe__:"
                         r"\w+ \(NOPERM .*\); allow the channels __ws4tx_probe__:\* to this "
                         r"user \(ACL SETUSER <user> &__ws4tx_probe__:\*\) for the health "
                         r"check to test delivery$")
        status, body = await self._health()
        self.assertEqual(status, 200, body)
        self.assertEqual(self.publish("ws4tx:broadcast:allowed", "still here"), 1)
        self.assertEqual(await client.text(), "still here")
        self.assertEqual(self.redis.pubsub_channels("__ws4tx_probe__*"), [])

        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "allchannels")
        # The kill takes the command connection too: it comes back on its own backoff,
        # maybe after the subscriber, and a barrier is published through it.
        command_back = log.waitFor("Redis command connection to ")
        self.redis.execute_command("CLIENT", "KILL", "USER", "ws4tx")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        self.assertEqual(len(self.redis.pubsub_channels("__ws4tx_probe__*")), 1)
        self.assertEqual(log.count("refused for now"), 0)
        self.assertEqual(log.count("delivery probe channel"), 1)
        self.assertIn("restored", formatEvent(await command_back))
        await self.service.broker.barrier()  # only a subscribed probe channel passes one

    async def test_refusedControlChannelIsLoggedAndClientsAreServed(self):
        """An ACL without the control channel: the node logs an error naming it (it will
        not hear the site's commands), closes nobody, and serves its clients."""
        log = LogCapture(self)
        client = await self.client("/ws/allowed?subscribe-broadcast")
        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "resetchannels",
                                   "&ws4tx:broadcast:*", "&__ws4tx_probe__:*")
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected")
        self.assertEqual(log.count("will not hear the site's commands"), 1)
        self.assertEqual(self.publish("ws4tx:broadcast:allowed", "still here"), 1)
        self.assertEqual(await client.text(), "still here")
        self.assertFalse(client.closed.called)

    async def test_refusedPublishIsToldAsSuch(self):
        """An ACL without the channel a client publishes to: an event client's ack says
        "not permitted by Redis ACL" (not "internal error"), a warning names the refusal,
        no traceback is logged, and the client stays connected and may publish where the
        ACL allows."""
        from ws4tx import envelope

        log = LogCapture(self)
        self.redis.execute_command("ACL", "SETUSER", "ws4tx", "resetchannels",
                                   "&ws4tx:broadcast:allowed", "&__ws4tx_probe__:*",
                                   "&ws4tx:control")
        events = (envelope.SUBPROTOCOL,)
        sender = await connect(self.port, "/ws/denied?publish-broadcast", protocols=events)
        self.addCleanup(sender.close)
        sender.send(envelope.encode_event("note", "hi", id=1))
        self.assertEqual(json.loads(await sender.text()),
                         {"ws4tx": "ack", "id": 1, "error": "not permitted by Redis ACL"})
        self.assertEqual(log.count("not published"), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertFalse(sender.closed.called)
        allowed = await connect(self.port, "/ws/allowed?publish-broadcast", protocols=events)
        self.addCleanup(allowed.close)
        allowed.send(envelope.encode_event("note", "hi", id=2))
        self.assertEqual(json.loads(await allowed.text()),
                         {"ws4tx": "ack", "id": 2, "data": None})
