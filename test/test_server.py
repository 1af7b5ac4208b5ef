"""The WebSocket server against a real Redis, through real WebSocket clients."""

from __future__ import annotations

import gc
import json
import threading

import redis
from twisted.internet import defer, reactor, threads

from ws4tx import closecodes, envelope
from ws4tx.naming import ANONYMOUS
from ws4tx.server import web
from ws4tx.server.auth import HandshakeDenied

from test._server import ServerTestCase, identity_header, non_probe
from test._wsclient import TIMEOUT, connect, handshake_request, raw_request, status_of

JOHN = identity_header("john", ("chatusers",), "s-john")
MARY = identity_header("mary", ("chatusers",), "s-mary")
ADMIN = identity_header("admin", (), "s-admin")
ALL_FLAGS = "?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"


SENTINEL = "sentinel"


class AudienceTests(ServerTestCase):
    """Each audience delivers to exactly its members."""

    async def _clients(self):
        return {
            name: await self.client("/ws/foobar" + ALL_FLAGS, headers)
            for name, headers in (("john", JOHN), ("mary", MARY), ("admin", ADMIN))
        }

    async def _expect(self, clients, channel, recipients):
        """Publish on ``channel``, then a sentinel on the broadcast channel every client
        subscribes to: from one publisher through the server's one subscriber connection
        the two arrive in that order, so the sentinel being a client's next message
        proves the first did not reach it."""
        self.publish(channel, f"to {channel}")
        self.publish("ws4tx:broadcast:foobar", SENTINEL)
        for name, client in sorted(clients.items()):
            if name in recipients:
                self.assertEqual(await client.text(), f"to {channel}", name)
            self.assertEqual(await client.text(), SENTINEL, name)

    async def test_broadcastReachesEverybody(self):
        """A broadcast reaches every subscribed client."""
        clients = await self._clients()
        await self._expect(clients, "ws4tx:broadcast:foobar", {"john", "mary", "admin"})

    async def test_userReachesOnlyThatUser(self):
        """A user message reaches that user alone."""
        clients = await self._clients()
        await self._expect(clients, "ws4tx:user:mary:foobar", {"mary"})

    async def test_groupReachesOnlyItsMembers(self):
        """A group message reaches the group's members alone."""
        clients = await self._clients()
        await self._expect(clients, "ws4tx:group:chatusers:foobar", {"john", "mary"})

    async def test_sessionReachesOnlyThatSession(self):
        """A session message reaches the client of that session alone."""
        clients = await self._clients()
        await self._expect(clients, "ws4tx:session:s-admin:foobar", {"admin"})

    async def test_otherFacilityReachesNobody(self):
        """A message to another facility reaches nobody."""
        clients = await self._clients()
        await self._expect(clients, "ws4tx:broadcast:other", set())

    async def test_anonymousGetsBroadcastOnly(self):
        """An anonymous client asking for every audience gets broadcast channels only."""
        await self.client("/ws/foobar" + ALL_FLAGS)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:foobar"])

    async def test_flagsAreCaseInsensitiveAndUnknownIgnored(self):
        """Flags in any case and order work; unknown flags are ignored."""
        client = await self.client("/ws/foobar?Bogus&SUBSCRIBE-User&x=1", JOHN)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:user:john:foobar"])
        self.publish("ws4tx:user:john:foobar", "hi")
        self.assertEqual(await client.text(), "hi")

    async def test_binaryPayloadIsABinaryFrame(self):
        """A payload that is not UTF-8 arrives as a binary frame, byte for byte."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        self.publish("ws4tx:broadcast:foobar", b"\xff\x00\xfe")
        self.assertEqual(await client.next(), (b"\xff\x00\xfe", True))

    async def test_numbersAreNotConverted(self):
        """A payload that looks like a number arrives exactly as published."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        for text in ("12345", "1.5e3", "007"):
            self.publish("ws4tx:broadcast:foobar", text)
            self.assertEqual(await client.text(), text)


class ReplayTests(ServerTestCase):
    """ws4redis's replay of the stored message on connect."""

    async def test_storedMessageIsReplayed(self):
        """A client gets the message stored under each of its channels when it connects."""
        self.redis.set("ws4tx:broadcast:foobar", "stored broadcast", ex=60)
        self.redis.set("ws4tx:user:john:foobar", "stored for john", ex=60)
        client = await self.client("/ws/foobar?subscribe-broadcast&subscribe-user", JOHN)
        got = {await client.text(), await client.text()}
        self.assertEqual(got, {"stored broadcast", "stored for john"})

    async def test_expiredMessageIsNotReplayed(self):
        """Once its expiry has passed, a stored message is no longer replayed."""
        self.redis.set("ws4tx:broadcast:foobar", "old", px=1)
        # Redis expires the key itself; wait for that event with a bound.
        for _ in range(200):
            if not self.redis.exists("ws4tx:broadcast:foobar"):
                break
            await defer.succeed(None)
        client = await self.client("/ws/foobar?subscribe-broadcast")
        self.publish("ws4tx:broadcast:foobar", "live")
        self.assertEqual(await client.text(), "live")


class ReplayRaceTests(ServerTestCase):
    """The stored message comes first, then live ones, never twice, while a publisher
    publishes and stores (PUBLISH then SET, as Django's publisher does)."""

    clients = 200

    async def test_sequencesStrictlyIncreaseWhileClientsJoin(self):
        """Numbers published and stored in a thread while 200 clients connect: every
        client's numbers (its replayed one first) strictly increase."""
        channel = "ws4tx:broadcast:race"
        stop = threading.Event()

        def publish() -> int:
            publisher = redis.Redis.from_url(self.redis_server.url)
            n = 0
            while not stop.is_set() or n < 10:
                publisher.pipeline(transaction=False).publish(channel, str(n)).set(
                    channel, str(n), ex=60).execute()
                n += 1
            publisher.close()
            return n

        publishing = threads.deferToThread(publish)
        clients = await defer.gatherResults([
            defer.ensureDeferred(connect(self.port, "/ws/race?subscribe-broadcast"))
            for _ in range(self.clients)])
        for client in clients:
            self.addCleanup(client.close)
        for _ in clients:
            await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        stop.set()
        await publishing.addTimeout(TIMEOUT, reactor)
        self.publish(channel, "end")
        for client in clients:
            numbers = []
            while (text := await client.text()) != "end":
                numbers.append(int(text))
            self.assertTrue(numbers)
            self.assertEqual(numbers, sorted(set(numbers)), numbers)


class PublishTests(ServerTestCase):
    """Clients publishing with publish-* flags."""

    async def test_clientPublishReachesOthersAndIsStored(self):
        """A client's message is published to its channel and stored for replay."""
        listener = await self.client("/ws/foobar?subscribe-broadcast")
        sender = await self.client("/ws/foobar?publish-broadcast", subscribed=True)
        sender.send("hello all")
        self.assertEqual(await listener.text(), "hello all")
        self.assertEqual(self.redis.get("ws4tx:broadcast:foobar"), b"hello all")
        self.assertTrue(0 < self.redis.ttl("ws4tx:broadcast:foobar") <= 3600)

    async def test_withoutEchoTheSenderDoesNotGetItsMessage(self):
        """Without echo, a client does not receive back the message it just sent."""
        sender = await self.client("/ws/foobar?subscribe-broadcast&publish-broadcast")
        other = await self.client("/ws/foobar?subscribe-broadcast")
        sender.send("mine")
        self.assertEqual(await other.text(), "mine")
        self.publish("ws4tx:broadcast:foobar", "theirs")
        self.assertEqual(await sender.text(), "theirs")

    async def test_withEchoTheSenderGetsItsMessage(self):
        """With echo, the sender receives its own message too."""
        sender = await self.client("/ws/foobar?subscribe-broadcast&publish-broadcast&echo")
        sender.send("mine")
        self.assertEqual(await sender.text(), "mine")

    async def test_userPublishGoesToOwnChannelOnly(self):
        """publish-user publishes to the sender's own user channel, never a chosen one."""
        john_listener = await self.client("/ws/foobar?subscribe-user", JOHN)
        mary = await self.client("/ws/foobar?subscribe-user", MARY)
        sender = await self.client("/ws/foobar?publish-user", JOHN)
        sender.send("note to self")
        self.assertEqual(await john_listener.text(), "note to self")
        # The server's own publisher connection carried "note to self"; a sentinel sent on
        # it now reaches Redis after it: Mary's next message must be the sentinel.
        await self.service.broker.publish("ws4tx:user:mary:foobar", SENTINEL.encode())
        self.assertEqual(await mary.text(), SENTINEL)

    async def test_binaryFramesArePublishedAsBytes(self):
        """A binary frame is published and stored as bytes."""
        listener = await self.client("/ws/foobar?subscribe-broadcast")
        sender = await self.client("/ws/foobar?publish-broadcast")
        sender.send(b"\x00\xff", binary=True)
        self.assertEqual(await listener.next(), (b"\x00\xff", True))
        self.assertEqual(self.redis.get("ws4tx:broadcast:foobar"), b"\x00\xff")

    async def test_anonymousClientsDoNotPublishByDefault(self):
        """A default server drops the publish flags of clients without a user; a user's
        publish goes through."""
        await self.service.stopService()
        await self.startServer(config={"anonymous_publish": False})
        listener = await self.client("/ws/foobar?subscribe-broadcast")
        anonymous = await self.client("/ws/foobar?publish-broadcast")
        anonymous.send("from nobody")
        john = await self.client("/ws/foobar?publish-broadcast", JOHN)
        john.send("from john")
        self.assertEqual(await listener.text(), "from john")
        # Stored once PUBLISH was answered: the SET may still be on its way.
        self.assertEqual(await self.stored("ws4tx:broadcast:foobar"), b"from john")

    async def test_expireZeroStoresNothing(self):
        """With expire 0 a client's message is published but not stored."""
        await self.service.stopService()
        await self.startServer(config={"expire": 0})
        listener = await self.client("/ws/foobar?subscribe-broadcast")
        sender = await self.client("/ws/foobar?publish-broadcast")
        sender.send("fleeting")
        self.assertEqual(await listener.text(), "fleeting")
        self.assertIsNone(self.redis.get("ws4tx:broadcast:foobar"))


class HeartbeatTests(ServerTestCase):
    """ws4redis's heartbeat: answered with the same string, never published."""

    config = ServerTestCase.config.replace(heartbeat="--heartbeat--")

    async def test_heartbeatIsAnsweredNotPublished(self):
        """The heartbeat comes back to its sender and reaches nobody else."""
        listener = await self.client("/ws/foobar?subscribe-broadcast")
        sender = await self.client("/ws/foobar?subscribe-broadcast&publish-broadcast&echo")
        sender.send("--heartbeat--")
        self.assertEqual(await sender.text(), "--heartbeat--")
        # Had the heartbeat been published, it went out on the server's publisher
        # connection before this sentinel: the listener's next message must be the sentinel.
        await self.service.broker.publish("ws4tx:broadcast:foobar", SENTINEL.encode())
        self.assertEqual(await listener.text(), SENTINEL)
        self.assertIsNone(self.redis.get("ws4tx:broadcast:foobar"))


class SubscriptionTests(ServerTestCase):
    """One shared subscriber connection with reference-counted subscriptions."""

    async def test_subscriptionReleasedWhenLastClientLeaves(self):
        """A channel stays subscribed while a client uses it, and is released after."""
        a = await self.client("/ws/foobar?subscribe-broadcast")
        b = await self.client("/ws/foobar?subscribe-broadcast")
        def numsub() -> dict[bytes, int]:
            return dict(self.redis.pubsub_numsub("ws4tx:broadcast:foobar"))

        self.assertEqual(numsub(), {b"ws4tx:broadcast:foobar": 1})
        await a.close()
        self.assertEqual(self.factory.node.router.memberCount(), 1)
        self.assertEqual(numsub(), {b"ws4tx:broadcast:foobar": 1})
        await b.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        # UNSUBSCRIBE was written before the drain; a round trip on the same server orders it.
        await self.service.broker.fetch("sync")
        self.assertEqual(numsub(), {b"ws4tx:broadcast:foobar": 0})

    async def test_manyClientsShareOneRedisConnection(self):
        """200 clients on one channel use one Redis subscriber connection."""
        clients = await defer.gatherResults([
            defer.ensureDeferred(self.client("/ws/foobar?subscribe-broadcast"))
            for _ in range(200)])
        subscribers = [c for c in self.redis.client_list() if int(c["sub"]) > 0]
        self.assertEqual(len(subscribers), 1)
        self.assertEqual(self.publish("ws4tx:broadcast:foobar", "fan-out"), 1)
        texts = await defer.gatherResults([defer.ensureDeferred(c.text()) for c in clients])
        self.assertEqual(set(texts), {"fan-out"})


class HandshakeTests(ServerTestCase):
    """Bad handshakes get an HTTP status with a reason; subprotocols are echoed."""

    async def _status(self, request: bytes):
        return status_of(await raw_request(self.port, request))

    async def test_upgradeLeavesNoGarbageCycle(self):
        """The handshake's HTTP request and channel are freed once the WebSocket takes
        the connection over, not left in a cycle for the garbage collector (whose pass
        over a burst of connections stalls every client's answers)."""
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        await self.client("/ws/foobar?subscribe-broadcast")
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.set_debug, 0)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, (web._CappedRequest, web._DeadlineChannel))]
        del gc.garbage[:]
        self.assertEqual(left, [])

    async def test_plainGetAnswers400SayingUpgrade(self):
        """A plain GET on the WebSocket URL answers 400 saying to upgrade."""
        status, rest = await self._status(b"GET /ws/foobar HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertIn("WebSocket", rest)
        self.assertIn("Upgrade", rest)

    async def test_nonGetAnswers400(self):
        """A PUT on the WebSocket URL answers 400; a POST (a message sent without a
        socket) of a URL with no publish flag is refused with 403, nothing to publish on."""
        status, _ = await self._status(
            b"PUT /ws/foobar HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(status, 400)
        status, rest = await self._status(
            b"POST /ws/foobar HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(status, 403)
        self.assertIn("nothing to publish on", rest)

    async def test_badFacilityAnswers400(self):
        """A facility with a colon (or empty) is refused with 400 and the reason."""
        for path in ("/ws/a:b", "/ws/", "/ws/%20x"):
            status, rest = await self._status(handshake_request(path))
            self.assertEqual(status, 400, path)
            self.assertIn("facility", rest)

    async def test_longQueryAnswers414(self):
        """A query string over the limit is refused with 414."""
        status, _ = await self._status(handshake_request("/ws/foobar?" + "x" * 5000))
        self.assertEqual(status, 414)

    async def _probe(self, path: str, headers: dict[str, str] | None = None):
        """A plain GET of ``path`` (no Upgrade): its status, its headers (lower-case
        names) and its body."""
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        status, rest = await self._status(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, _, body = rest.partition("\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
        return status, {k.lower(): v for k, v in fields.items()}, body

    async def test_aPlainGetAnswersTheRefusalTheHandshakeGets(self):
        """A plain GET of a WebSocket URL the handshake refuses answers the handshake's
        status with its reason in JSON (ws4tx.js asks so when its sockets keep closing
        before they open: a page cannot see a refused handshake's status)."""

        class Refusing:
            def authenticate(self, request):
                if request.facility == "forbidden":
                    return defer.fail(HandshakeDenied("not for you"))
                return ANONYMOUS

        self.factory.authenticator = Refusing()
        for path, status, reason in (
                ("/ws/foobar?" + "x" * 5000, 414, "the query string is too long"),
                ("/ws/a:b", 400, "facility"),
                ("/ws/foobar?recover=nonsense", 400, "recover"),
                ("/ws/forbidden?subscribe-broadcast", 403, "not for you")):
            handshake, _ = await self._status(handshake_request(path))
            self.assertEqual(handshake, status, path)
            got, headers, body = await self._probe(path)
            self.assertEqual(got, status, path)
            self.assertEqual(headers["content-type"], "application/json")
            answer = json.loads(body)
            self.assertEqual((answer["ws4tx"], answer["status"]), ("refused", status))
            self.assertIn(reason, answer["reason"])
        got, headers, body = await self._probe("/ws/foobar?subscribe-broadcast")
        self.assertEqual((got, headers["upgrade"]), (400, "websocket"))
        self.assertIn("WebSocket", body)

    async def test_aPlainGetIsReadableByTheOriginsTheHandshakeAccepts(self):
        """The answer of a plain GET carries CORS headers (with credentials) for an
        Origin the handshake accepts, none for one it refuses (403 then)."""
        await self.service.stopService()
        await self.startServer(config={"allowed_origins": ("https://app.example.com:443",)})
        path = "/ws/foobar?" + "x" * 5000
        status, headers, _ = await self._probe(path, {"Origin": "https://app.example.com"})
        self.assertEqual(status, 414)
        self.assertEqual(headers["access-control-allow-origin"], "https://app.example.com")
        self.assertEqual(headers["access-control-allow-credentials"], "true")
        status, headers, _ = await self._probe("/ws/foobar", {"Origin": "https://evil.test"})
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)

    async def test_subprotocolIsEchoed(self):
        """A requested subprotocol is answered by echoing it."""
        client = await self.client("/ws/foobar?subscribe-broadcast", protocols=("chat",))
        self.assertEqual(client.protocol, "chat")

    async def test_eventSubprotocolIsPreferred(self):
        """A client offering ws4tx.v1 among others gets ws4tx.v1."""
        client = await self.client("/ws/foobar", protocols=("chat", envelope.SUBPROTOCOL))
        self.assertEqual(client.protocol, envelope.SUBPROTOCOL)

    async def test_healthFollowsDelivery(self):
        """The health check answers 200 once a probe has made the trip through Redis,
        and 503 when Redis is gone; its body carries the process's counters."""
        health = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        client = await self.client("/ws/foobar?subscribe-broadcast")
        # Published after the probe on the same connection, so it arrives after it.
        await self.service.broker.publish("ws4tx:broadcast:foobar", b"after the probe")
        self.assertEqual(await client.text(), "after the probe")
        status, rest = await self._status(health)
        self.assertEqual(status, 200)
        body = json.loads(rest.split("\r\n\r\n", 1)[1])
        self.assertEqual((body["redis"], body["clients"], body["backlog"]), ("delivering", 1, 0))
        self.assertGreaterEqual(body["counters"]["frames"], 1)
        self.assertEqual(body["counters"]["lagged"], 0)
        self.redis_server.stop()
        await self.brokerEvent("disconnected")
        status, rest = await self._status(health)
        self.assertEqual(status, 503)
        self.assertIn('"redis": "disconnected"', rest)


class FrameTests(ServerTestCase):
    """Bad frames close that client with the right code; others are unharmed."""

    config = ServerTestCase.config.replace(max_message_size=1024, max_frame_size=1024)

    async def test_oversizedMessageCloses1009(self):
        """A message over the size cap closes its connection with 1009."""
        other = await self.client("/ws/foobar?subscribe-broadcast")
        big = await self.client("/ws/foobar?publish-broadcast")
        big.send("x" * 2048)
        code, _ = await big.closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, closecodes.MESSAGE_TOO_BIG)
        self.publish("ws4tx:broadcast:foobar", "still here")
        self.assertEqual(await other.text(), "still here")

    async def test_invalidUtf8Closes1007(self):
        """A text frame with invalid UTF-8 closes its connection with 1007."""
        client = await self.client("/ws/foobar?publish-broadcast")
        client.proto.sendMessage(b"\xff\xfe", isBinary=False)
        code, _ = await client.closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, closecodes.INVALID_PAYLOAD)


class NotStoredTests(ServerTestCase):
    """Redis refuses writes (maxmemory with noeviction): PUBLISH goes through, SET does
    not. The sender is told what happened: delivered, not stored."""

    health = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def _refuseWrites(self) -> None:
        self.redis.config_set("maxmemory-policy", "noeviction")
        self.redis.config_set("maxmemory", 1)
        self.addCleanup(self.redis.config_set, "maxmemory", 0)

    async def test_eventIsAcknowledgedAsDeliveredNotStored(self):
        """An event client's forwarded event is acknowledged with stored: false and the
        reason (not an error); the other client got it; the health URL counts it."""
        sender = await self.client("/ws/foobar?publish-broadcast",
                                   protocols=(envelope.SUBPROTOCOL,))
        receiver = await self.client("/ws/foobar?subscribe-broadcast")
        self._refuseWrites()
        sender.send(envelope.encode_event("chat", {"text": "hi"}, id=7))
        ack = envelope.decode(await sender.text())
        self.assertIsInstance(ack, envelope.Ack)
        self.assertIsNone(ack.error)
        self.assertEqual(ack.data["stored"], False)
        self.assertIn("maxmemory", ack.data["reason"])
        self.assertEqual(json.loads(await receiver.text())["data"], {"text": "hi"})
        _status, rest = status_of(await raw_request(self.port, self.health))
        body = json.loads(rest.split("\r\n\r\n", 1)[1])
        self.assertEqual(body["counters"]["store_failures"], 1)

    async def test_rawPublishNotStoredIsLogged(self):
        """A raw client cannot be answered: the not-stored message is logged as such."""
        from test.test_outage import LogCapture

        log = LogCapture(self)
        sender = await self.client("/ws/foobar?publish-broadcast&subscribe-broadcast&echo")
        self._refuseWrites()
        sender.send("raw")
        self.assertEqual(await sender.text(), "raw")
        for _ in range(500):  # 5 s at most
            if log.count("the message of {peer} reached"):
                break
            await task_turn()
        self.assertEqual(log.count("the message of {peer} reached"), 1)
        self.assertEqual(log.count("publishing for {peer} failed"), 0)


async def task_turn() -> None:
    """Let the reactor run once (bounded by the test's timeout)."""
    from twisted.internet import task

    await task.deferLater(reactor, 0.01, lambda: None)


class HealthLogTests(ServerTestCase):
    """The health URL's changes are logged once each, with the reason."""

    async def test_turning503IsLoggedOnceWithTheReason(self):
        from test.test_outage import LogCapture

        health = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        client = await self.client("/ws/foobar?subscribe-broadcast")
        await self.service.broker.publish("ws4tx:broadcast:foobar", b"after the probe")
        await client.text()
        log = LogCapture(self)
        self.assertEqual(status_of(await raw_request(self.port, health))[0], 200)
        self.redis_server.stop()
        await self.brokerEvent("disconnected")
        for _ in range(3):
            self.assertEqual(status_of(await raw_request(self.port, health))[0], 503)
        warnings = [e for e in log.events if "health check: 503" in (e.get("log_format") or "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")
        self.assertIn("not connected to Redis", warnings[0]["log_format"])
