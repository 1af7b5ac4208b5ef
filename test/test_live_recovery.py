"""Positioning on live connections, end to end (issue #11, part 4): a real server and a
real Redis the test starts, killed and restarted; messages published with the Lua script
from redis-py, as either half publishes them; real WebSocket clients that speak ws4tx.v1
and stay connected throughout."""

from __future__ import annotations

import shutil
import signal
import tempfile
from typing import Any

import redis

from ws4tx.history import Position, Retention, with_position
from ws4tx.server.embedded import EmbeddedRedis
from ws4tx.server.streams import FIRST_PAGE

from test._recovering import Follower, publish_with_history
from test._server import ServerTestCase

HISTORY = {"chat*": {"size": 300, "ttl": 600}}
RETENTION = Retention(300, 600)
CHAT = "ws4tx:broadcast:chat"
PATH = "/ws/chat?subscribe-broadcast"


class _LiveTestCase(ServerTestCase):
    """A server with history on ``chat*``; ``self.reads`` counts the node's own history
    reads that Redis answered."""

    #: Redis flags: none (the server forgets everything when it restarts).
    persistence: tuple[str, ...] = ()
    #: The server's settings beyond its history.
    settings: dict[str, Any] = {}

    def startRedis(self) -> EmbeddedRedis:
        if self.persistence:
            directory = tempfile.mkdtemp(prefix="ws4tx-aof-")
            self.addCleanup(shutil.rmtree, directory, True)
            self.redis_args = (*self.persistence, "--dir", directory)
        return super().startRedis()

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startServer(config={"history": HISTORY, **self.settings})
        self.reads = 0
        router = self.factory.node.router
        read = router.streams._read_history
        assert read is not None

        def counted(channel: str, since: Position) -> Any:
            def answered(result: Any) -> Any:
                self.reads += 1
                return result

            return read(channel, since).addCallback(answered)

        router.streams._read_history = counted

    def publish_(self, payload: str, lost: bool = False) -> Position:
        return publish_with_history(self.redis, CHAT, payload.encode(), RETENTION,
                                    publish_to="ws4tx:lost" if lost else None)

    async def followers(self, n: int) -> list[Follower]:
        followers = [Follower(PATH) for _ in range(n)]
        for follower in followers:
            await follower.connect(self.port)
            self.addCleanup(lambda f=follower: f.client and f.client.close())
            await self.factory.test_joined.get()
        for follower in followers:
            await follower.until(lambda f=follower: CHAT in f.positions)
        return followers

    async def restartRedis(self) -> None:
        """SIGKILL Redis and start it again on its port (with its AOF, if it keeps one);
        a fresh redis-py client for the test."""
        self.redis_server.stop(signal.SIGKILL)
        await self.brokerEvent("disconnected")
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)



class LivePositioningTests(_LiveTestCase):
    """The node notices what pub/sub lost, and what an outage lost, and recovers it for
    its clients without their reconnecting."""

    async def test_messagesLostOnTheWayAreRecoveredOnceForAllClients(self) -> None:
        """Two messages reach the history but not pub/sub: the next one shows the skip,
        the node reads the history once (not once per client), and every client gets all
        four in order, once; raw clients too."""
        followers = await self.followers(3)
        raw = await self.client(PATH)
        self.publish_("m1")
        self.publish_("m2", lost=True)
        self.publish_("m3", lost=True)
        self.publish_("m4")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) >= 4)
            self.assertEqual(follower.got[CHAT], ["m1", "m2", "m3", "m4"])
            self.assertEqual(follower.verdicts, [])
        self.assertEqual([await raw.text() for _ in range(4)], ["m1", "m2", "m3", "m4"])
        self.assertEqual(self.reads, 1)
        stats = self.factory.node.router.stats
        self.assertEqual((stats["skips"], stats["recovered"]), (1, 3))  # 4 read too

    async def test_withoutPersistenceTheNewEpochIsTold(self) -> None:
        """Redis restarts empty: the histories are gone; every client is told (reason
        epoch) with where the channel stands now, and gets what is published next."""
        followers = await self.followers(3)
        before = self.publish_("before")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) == 1)
        await self.restartRedis()
        self.publish_("during")
        await self.brokerEvent("connected")
        for follower in followers:
            await follower.until(lambda f=follower: bool(f.verdicts))
            self.assertEqual(follower.verdicts, [{
                "recovered": False, "reason": "epoch",
                "channels": {CHAT: {"recovered": False, "reason": "epoch"}}}])
            self.assertNotEqual(follower.positions[CHAT].epoch, before.epoch)
        after = self.publish_("after")
        for follower in followers:
            await follower.until(lambda f=follower: f.got[CHAT][-1:] == ["after"])
            self.assertEqual(follower.positions[CHAT], after)
            # "during" is live only if the node resubscribed before it was published.
            self.assertIn(follower.got[CHAT], (["before", "after"],
                                               ["before", "during", "after"]))


class PersistentRedisTests(_LiveTestCase):
    """Redis keeps an append-only file, written on every command: a restart loses
    nothing, and the positions go on."""

    persistence = ("--appendonly", "yes", "--appendfsync", "always")

    async def test_afterAnOutageClientsMissNothingWithoutReconnecting(self) -> None:
        """Redis restarts with its AOF: what was published after it came back and before
        the node resubscribed is recovered from the history, once per channel; the
        clients stay connected, get every message once, in order, and are told they
        recovered."""
        followers = await self.followers(3)
        before = self.publish_("before")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) == 1)
        await self.restartRedis()
        for i in range(5):
            self.publish_(f"during {i}")
        await self.brokerEvent("connected")
        self.publish_("after")
        expected = ["before", *(f"during {i}" for i in range(5)), "after"]
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) >= 7)
            self.assertEqual(follower.got[CHAT], expected)
            self.assertEqual(follower.offsets[CHAT],
                             [(before.epoch, o) for o in range(1, 8)])
            await follower.until(lambda f=follower: bool(f.verdicts))
            [verdict] = follower.verdicts
            self.assertTrue(verdict["recovered"])
            # "after" is read too when it was published before the read was made.
            self.assertIn(verdict["channels"][CHAT]["messages"], (5, 6))
        self.assertEqual(self.reads, 1)

class JoinWhileSubscriberDownTests(_LiveTestCase):
    """A client that joins while the node's subscriber connection is down (after a Redis
    restart the command connection may be back first): what is published until the
    subscriber is back reaches it from the history, not silently lost."""

    async def test_messagesPublishedBeforeTheSubscriberIsBackAreRecovered(self) -> None:
        broker = self.factory.node.broker
        subscriber = broker._services[0]  # its connections: subscriber, command
        await subscriber.stopService()
        await self.brokerEvent("disconnected")
        before = self.publish_("before")
        follower = Follower(PATH)
        await follower.connect(self.port)
        self.addCleanup(lambda: follower.client and follower.client.close())
        # It learns where the channel stands (read through the command connection).
        await follower.until(lambda: CHAT in follower.positions)
        self.assertEqual(follower.positions[CHAT], before)
        for i in range(3):
            self.publish_(f"during {i}")
        subscriber.startService()
        await self.brokerEvent("connected")
        self.publish_("after")
        await follower.until(lambda: follower.got.get(CHAT, [])[-1:] == ["after"])
        self.assertEqual(follower.got[CHAT], ["during 0", "during 1", "during 2", "after"])


#: A message of 60 KB: 200 of them are 12 MB, far past the slow-client bound (1 MiB).
BIG = "x" * 60_000


class LargeRecoveryTests(_LiveTestCase):
    """What was missed is delivered through flow control, in pages: never all in one
    reactor turn (which tripped the slow-client bound and dropped the client)."""

    def pages(self) -> list[tuple[Any, Any]]:
        """Record (since, limit) of every history read the node makes from now on."""
        calls: list[tuple[Any, Any]] = []
        broker = self.factory.node.broker
        histories = broker.histories

        def recorded(reads: Any) -> Any:
            calls.extend((read.since, read.limit) for read in reads)
            return histories(reads)

        broker.histories = recorded  # type: ignore[method-assign]
        return calls

    async def test_aClientThatMissed12MegabytesRecoversAllOfItThenLive(self) -> None:
        """200 messages of 60 KB missed: the client gets all 200 in order, once, at the
        pace its socket drains, told it recovered; the live messages published meanwhile
        come after, in order, without gap or duplicate; it is never dropped; every read
        is a page (COUNT-limited), never the whole stream."""
        calls = self.pages()
        first = self.publish_(f"0 {BIG}")
        for i in range(1, 200):
            self.publish_(f"{i} {BIG}")
        follower = Follower(PATH)
        follower.positions[CHAT] = Position(0, first.epoch)
        await follower.connect(self.port)
        self.addCleanup(lambda: follower.client and follower.client.close())
        await follower.until(lambda: follower.count(CHAT) >= 10)
        for i in range(3):
            self.publish_(f"live {i}")
        await follower.until(lambda: follower.count(CHAT) >= 203)
        self.assertEqual([m.split(" ", 1)[0] for m in follower.got[CHAT]],
                         [str(i) for i in range(200)] + ["live"] * 3)
        self.assertEqual(follower.got[CHAT][-3:], ["live 0", "live 1", "live 2"])
        self.assertEqual(follower.offsets[CHAT], [(first.epoch, o) for o in range(1, 204)])
        await follower.until(lambda: bool(follower.verdicts))
        [verdict] = follower.verdicts
        self.assertTrue(verdict["recovered"])
        # The live ones are read from the history too when the last page reached them.
        self.assertIn(verdict["channels"][CHAT]["messages"], range(200, 204))
        self.assertEqual((follower.closes, self.factory.node.stats["slow_consumers"]), (0, 0))
        self.assertTrue(calls)
        self.assertTrue(all(limit is not None and limit <= FIRST_PAGE for _, limit in calls),
                        calls)

    async def test_pastMaxRecoveryTheClientIsToldTrimmedAndNothingIsRead(self) -> None:
        """A client may ask to recover at most MAX_RECOVERY messages: past it, it is told
        trimmed and where the channel stands, and no more than one page is read."""
        await self.service.stopService()
        await self.startServer(config={"history": HISTORY, "max_recovery": 50})
        calls = self.pages()
        first = self.publish_("0")
        for i in range(1, 200):
            self.publish_(str(i))
        follower = Follower(PATH)
        follower.positions[CHAT] = Position(0, first.epoch)
        await follower.connect(self.port)
        self.addCleanup(lambda: follower.client and follower.client.close())
        await follower.until(lambda: bool(follower.verdicts))
        self.assertEqual(follower.verdicts[0]["reason"], "trimmed")
        self.assertEqual(follower.positions[CHAT], Position(200, first.epoch))
        self.assertEqual(follower.count(CHAT), 0)
        self.assertEqual(calls, [(0, FIRST_PAGE)])


class LargeOutageTests(_LiveTestCase):
    """The node's own recovery after its subscriber was down is delivered through each
    client's flow control too."""

    async def test_thirtyBigMessagesMissedInAnOutageReachEveryClient(self) -> None:
        """30 messages of 60 KB published while the subscriber is down: each of 5 clients
        gets all of them, in order, once, and is told it recovered; none is dropped."""
        followers = await self.followers(5)
        before = self.publish_("before")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) == 1)
        subscriber = self.factory.node.broker._services[0]
        await subscriber.stopService()
        await self.brokerEvent("disconnected")
        for i in range(30):
            self.publish_(f"{i} {BIG}")
        subscriber.startService()
        await self.brokerEvent("connected")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) >= 31)
            self.assertEqual([m.split(" ", 1)[0] for m in follower.got[CHAT]],
                             ["before", *(str(i) for i in range(30))])
            self.assertEqual(follower.offsets[CHAT],
                             [(before.epoch, o) for o in range(1, 32)])
            await follower.until(lambda f=follower: bool(f.verdicts))
            self.assertEqual(follower.verdicts, [{
                "recovered": True, "channels": {CHAT: {"recovered": True, "messages": 30}}}])
            self.assertEqual(follower.closes, 0)
        self.assertEqual(self.factory.node.stats["slow_consumers"], 0)


class ForgedPositionTests(_LiveTestCase):
    """A position PUBLISHed raw on a history channel (by anyone allowed to PUBLISH there)
    costs one read, is dropped, and stops nothing."""

    async def test_aPositionPastTheStreamCostsOneRead(self) -> None:
        followers = await self.followers(3)
        self.publish_("m1")
        epoch = self.publish_("m2").epoch
        self.publish(CHAT, with_position(b"evil", Position(999_999_999, epoch)))
        for i in range(3, 8):
            self.publish_(f"m{i}")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) >= 7, timeout=5)
            self.assertEqual(follower.got[CHAT], [f"m{i}" for i in range(1, 8)])
            self.assertEqual(follower.verdicts, [])
        await self.factory.node.router.barrier()
        self.assertEqual(self.reads, 1)
        self.assertEqual(self.factory.node.router.stats["impossible"], 1)

    async def test_aForgedEpochCostsOneReadAndResendsNothing(self) -> None:
        """Another epoch on a live message is believed only when the stream's epoch
        confirms it: here it does not, so nobody is told or sent the history again."""
        followers = await self.followers(3)
        for i in range(1, 4):
            self.publish_(f"m{i}")
        self.publish(CHAT, with_position(b"evil", Position(1, "f0rged")))
        for i in range(4, 9):
            self.publish_(f"m{i}")
        for follower in followers:
            await follower.until(lambda f=follower: f.count(CHAT) >= 8, timeout=5)
            self.assertEqual(follower.got[CHAT], [f"m{i}" for i in range(1, 9)])
            self.assertEqual(follower.verdicts, [])
        await self.factory.node.router.barrier()
        self.assertEqual(self.reads, 1)

