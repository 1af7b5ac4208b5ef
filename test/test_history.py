"""Channel history (setting HISTORY) end to end: the Django side and the server on one real
Redis, real WebSocket clients, the one publish script both halves load."""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ws4tx import api, history, naming
from ws4tx.history import Position, Publication, Retention, Rule
from ws4tx.publisher import RedisPublisher

from test._djangoredis import DjangoRedisTestCase
from test._server import ServerTestCase, identity_header

HISTORY = {"chat*": {"size": 5, "ttl": 600}}
RULES = (Rule("chat*", Retention(5, 600)),)
CHAT = "ws4tx:broadcast:chat"
LUA = Path(__file__).resolve().parent.parent / "ws4tx" / "lua"


class PureTests(SynchronousTestCase):
    """The pure parts: which facility keeps what, and the position prefix."""

    def test_firstMatchingGlobWins(self):
        rules = (Rule("chat-vip", Retention(50, 60)), Rule("chat*", Retention(5, 600)))
        self.assertEqual(history.history_for(rules, "chat-vip"), (50, 60))
        self.assertEqual(history.history_for(rules, "chat-1"), (5, 600))
        self.assertIsNone(history.history_for(rules, "news"))
        self.assertIsNone(history.history_for((), "chat"))

    def test_positionRoundTripsAndOnlyAWellFormedPrefixIsStripped(self):
        payload = b"__ws4tx_p1:7:abc__ payload"
        wrapped = history.with_position(payload, Position(12, "e0f1"))
        self.assertEqual(history.strip_position(wrapped), (Position(12, "e0f1"), payload))
        for raw in (b"plain", b"__ws4tx_p1:x:e__p", b"__ws4tx_p1:1:e", b""):
            self.assertEqual(history.strip_position(raw), (None, raw))

    def test_historyKeysNeverNameAChannelAndTellStreamFromMeta(self):
        stream, meta = naming.history_keys("ws4tx", "ws4tx:group:a:chat")
        self.assertEqual((stream, meta), ("ws4tx:history:{group:a:chat}:s",
                                          "ws4tx:history:{group:a:chat}:m"))
        # A group named "a:chat" on facility "s" would be ws4tx:group:a:chat:s, a
        # channel; the history keys live under ws4tx:history: instead.
        self.assertNotEqual(stream, naming.channel("ws4tx", naming.GROUP, "s", "a:chat"))
        self.assertEqual(naming.history_keys(None, "broadcast:chat")[0],
                         "history:{broadcast:chat}:s")
        self.assertRaises(ValueError, naming.history_keys, "ws4tx", "other:broadcast:chat")

    def test_scriptsAreTheFilesShippedInThePackage(self):
        """One file per script; both halves take the text (and its SHA) from it."""
        for name in (history.PUBLISH_SCRIPT, history.HISTORY_SCRIPT):
            text = (LUA / name).read_bytes()
            self.assertEqual(history.script(name), text)
            self.assertEqual(history.script_sha(name), hashlib.sha1(text).hexdigest())
        setup_py = (LUA.parent.parent / "setup.py").read_text()
        self.assertIn('"lua/*.lua"', setup_py)


class BothHalvesTests(ServerTestCase):
    """The Django side and the server publish to and read one history."""

    async def _setUp(self) -> None:
        import redis

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.useDjangoSide(WS4TX_HISTORY=HISTORY)
        await self.startServer(config={"history": HISTORY})

    @property
    def server(self):
        return self.factory.node.server

    async def test_rawClientsGetExactlyWhatWasPublished(self):
        """A ws4redis client of a history facility gets the payload Django published,
        text or binary, without any position; the router keeps the last position."""
        client = await self.client("/ws/chat?subscribe-broadcast")
        api.publish("chat", "hello", broadcast=True)
        api.publish("chat", b"\x00\xffbin", broadcast=True)
        self.assertEqual(await client.next(), (b"hello", False))
        self.assertEqual(await client.next(), (b"\x00\xffbin", True))
        epoch = api.history("chat", broadcast=True).epoch
        self.assertEqual(self.factory.node.router.positions[CHAT], Position(2, epoch))

    async def test_djangoServerAndClientPublishesShareOneHistory(self):
        """Offsets run on across Django's publish, the server's emit and a client's
        publish; Django and the server read the same history."""
        client = await self.client("/ws/chat?subscribe-broadcast&publish-broadcast&echo")
        api.publish("chat", "from django", broadcast=True)
        self.assertEqual(await client.text(), "from django")
        await self.server.publish("chat", "from the server", broadcast=True)
        self.assertEqual(await client.text(), "from the server")
        client.send("from a client")
        self.assertEqual(await client.text(), "from a client")
        on_django = api.history("chat", broadcast=True)
        on_server = await self.server.history("chat", broadcast=True)
        self.assertEqual(on_django, on_server)
        self.assertEqual(on_server.publications, [
            Publication(1, b"from django"), Publication(2, b"from the server"),
            Publication(3, b"from a client")])
        self.assertEqual(api.history("chat", broadcast=True, since=2).publications,
                         [Publication(3, b"from a client")])

    async def test_serverPublishesAndDjangoReads(self):
        """The server publishes first: Django continues its offsets and reads them."""
        await self.server.emit("said", {"n": 1}, facility="chat", broadcast=True)
        api.emit("chat", "said", {"n": 2}, broadcast=True)
        read = api.history("chat", broadcast=True)
        self.assertEqual([p.offset for p in read.publications], [1, 2])
        self.assertEqual(read, await self.server.history("chat", broadcast=True))

    async def test_scriptsAreLoadedAgainAfterScriptFlush(self):
        """Both halves run the script by its SHA and load it again when Redis lost it."""
        api.publish("chat", "one", broadcast=True)
        await self.server.publish("chat", "two", broadcast=True)
        sha = history.script_sha(history.PUBLISH_SCRIPT)
        self.assertEqual(self.redis.script_exists(sha), [True])
        self.redis.script_flush()
        api.publish("chat", "three", broadcast=True)
        self.redis.script_flush()
        await self.server.publish("chat", "four", broadcast=True)
        self.redis.script_flush()
        self.assertEqual([p.payload for p in (await self.server.history(
            "chat", broadcast=True)).publications], [b"one", b"two", b"three", b"four"])

    async def test_keysLiveForTheTtlAndTheReplayStoreStays(self):
        """Stream and meta expire ttl seconds after the last publish; the message is still
        stored under the channel for replay, as it was published."""
        api.publish("chat", "kept", broadcast=True, expire=60)
        stream, meta = naming.history_keys("ws4tx", CHAT)
        for key in (stream, meta):
            self.assertTrue(0 < self.redis.ttl(key) <= 600, key)
        self.assertEqual(self.redis.get(CHAT), b"kept")
        client = await self.client("/ws/chat?subscribe-broadcast")
        self.assertEqual(await client.text(), "kept")

    async def test_facilityWithoutHistoryIsPublishedAsBefore(self):
        """Other facilities: a plain PUBLISH (+SET), no history keys, no history API;
        a payload that looks like a position reaches clients untouched."""
        client = await self.client("/ws/news?subscribe-broadcast")
        forged = "__ws4tx_p1:99:abc__news"
        api.publish("news", forged, broadcast=True)
        self.assertEqual(await client.text(), forged)
        self.assertEqual(self.redis.keys("ws4tx:history:*"), [])
        self.assertRaises(ValueError, api.history, "news", broadcast=True)
        failure = self.server.history("news", broadcast=True)
        with self.assertRaises(ValueError):
            await failure

    async def test_historyNeedsOneChannel(self):
        """An audience of several channels (or none) is refused on both halves."""
        with self.assertRaises(ValueError):
            api.history("chat", broadcast=True, users=["john"])
        with self.assertRaises(ValueError):
            await self.server.history("chat", users=["john", "mary"])
        with self.assertRaises(ValueError):
            api.history("chat", broadcast=True, since=-1)

    async def test_aUserChannelHasItsOwnOffsets(self):
        """Each channel of a facility counts on its own; a client gets its own."""
        john = await self.client("/ws/chat?subscribe-user", identity_header("john"))
        api.publish("chat", "all", broadcast=True)
        api.publish("chat", "to john", users=["john"])
        self.assertEqual(await john.text(), "to john")
        self.assertEqual(api.history("chat", users=["john"]).publications,
                         [Publication(1, b"to john")])


class DjangoSideTests(DjangoRedisTestCase):
    """The Django side alone: positions, trimming, a forgotten meta hash."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"chat": {"size": 2, "ttl": 600}})

    def test_publisherKnowsThePositionsOfItsLastMessage(self):
        publisher = RedisPublisher(facility="chat", broadcast=True, users=["john"])
        publisher.publish_message("a")
        publisher.publish_message("b")
        epochs = {p.epoch for p in publisher.positions.values()}
        self.assertEqual(len(epochs), 2)  # each channel has its own epoch
        self.assertEqual({c: p.offset for c, p in publisher.positions.items()},
                         {CHAT: 2, "ws4tx:user:john:chat": 2})

    def test_sizeTrimsAndAnEvictedMetaStartsANewEpoch(self):
        for n in range(4):
            api.publish("chat", f"m{n}", broadcast=True)
        before = api.history("chat", broadcast=True)
        self.assertEqual([p.offset for p in before.publications], [3, 4])
        self.assertEqual(self.store.xlen(naming.history_keys("ws4tx", CHAT)[0]), 2)
        self.store.delete(naming.history_keys("ws4tx", CHAT)[1])  # evicted
        api.publish("chat", "after", broadcast=True)
        after = api.history("chat", broadcast=True)
        self.assertNotEqual(after.epoch, before.epoch)
        self.assertEqual(after.publications, [Publication(1, b"after")])
