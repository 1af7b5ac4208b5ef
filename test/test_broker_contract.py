"""The broker contract: what every :class:`~ws4tx.server.broker.IBroker` does, run against the
in-memory double applications test with (``MemoryBroker``, on a Clock) and against the Redis
broker on a real Redis the test starts, so that the double behaves like Redis.

Each test case supplies the broker-specific parts: how a broker is made, how its connection
is lost and comes back, how time passes, how channels are refused and stores fail, and how a
test waits for something that happens on a later reactor turn.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import tempfile
from typing import Any, Callable, Iterable

import pytest
import redis
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ws4tx.history import HistoryRead, Position, Publication, Retention, strip_position
from ws4tx.naming import (
    cluster_history_keys,
    control_channel,
    history_keys,
    nodes_keys,
    presence_keys,
    reply_channel,
)
from ws4tx.presence import JOIN, LEAVE, Entry, Stats, parse_entries, parse_stats
from ws4tx.server.broker import (
    BATCH,
    BrokerUnavailable,
    IBroker,
    IBrokerListener,
    IShardListener,
    NotStored,
    SubscriptionRefused,
)
from ws4tx.server.cluster import ClusterBroker
from ws4tx.server.embedded import EmbeddedRedis
from ws4tx.server.redis_broker import RedisBroker
from ws4tx.server.sharded_broker import ShardedBroker
from ws4tx.sharding import key_slot
from ws4tx.testing import MemoryBroker, MemoryBus

from test._wsclient import TIMEOUT


@implementer(IBrokerListener)
class Listener:
    """Records what a broker reports, in order, and refuses to be re-entered from
    ``publish`` (see :meth:`publishing`)."""

    def __init__(self, wanted: tuple[str, ...] = ()) -> None:
        self.wanted = set(wanted)
        #: Everything reported, in order: ("message", channel, payload), "connected",
        #: "disconnected", ("refused", channel).
        self.log: list[Any] = []
        self.messages: defer.DeferredQueue[tuple[str, bytes]] = defer.DeferredQueue()
        self.events: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.reentered = 0
        self._in_publish = False

    def publishing(self, broker: IBroker, channel: str, payload: bytes,
                   expire: int = 0) -> defer.Deferred[int]:
        """``broker.publish(...)``, noting a delivery made before it returns."""
        self._in_publish = True
        try:
            return broker.publish(channel, payload, expire)
        finally:
            self._in_publish = False

    def wantedChannels(self) -> list[str]:
        return sorted(self.wanted)

    def messageReceived(self, channel: str, payload: bytes) -> None:
        if self._in_publish:
            self.reentered += 1
        self.log.append(("message", channel, payload))
        self.messages.put((channel, payload))

    def subscriptionRefused(self, channel: str, reason: str) -> None:
        self.log.append(("refused", channel))
        self.events.put(("refused", channel))

    def brokerConnected(self) -> None:
        self.log.append("connected")
        self.events.put("connected")

    def brokerDisconnected(self) -> None:
        self.log.append("disconnected")
        self.events.put("disconnected")


@implementer(IShardListener)
class ShardListener(Listener):
    """A listener that is told of the outage of some channels only (as the router is):
    records ("interrupted", channels) and ("resumed", channels), channels sorted."""

    def channelsInterrupted(self, channels: Iterable[str]) -> None:
        event = ("interrupted", tuple(sorted(channels)))
        self.log.append(event)
        self.events.put(event)

    def channelsResumed(self, channels: Iterable[str],
                        interrupted: Callable[[str], bool]) -> None:
        event = ("resumed", tuple(sorted(channels)))
        self.log.append(event)
        self.events.put(event)


class BrokerContract:
    """The contract tests; a TestCase mixes them with a broker's hooks (below)."""

    # Hooks each broker's test case implements.

    async def makeBroker(self, listener: Listener) -> IBroker:
        """A started broker (another node when called twice), connected on return."""
        raise NotImplementedError

    async def settle(self, d: defer.Deferred[Any]) -> Any:
        """Let later reactor turns run until ``d`` fires (bounded); its result."""
        raise NotImplementedError

    async def disconnect(self, broker: IBroker) -> None:
        """Make ``broker`` lose its connection; return once it has told its listener.
        It stays down until :meth:`reconnect`."""
        raise NotImplementedError

    async def reconnect(self, broker: IBroker) -> None:
        """Bring the connection back; return once ``broker`` is connected and takes
        commands."""
        raise NotImplementedError

    async def watchExpiry(self, broker: IBroker, key: str) -> Any:
        """Prepare to notice that ``key`` expires (before it is stored)."""
        return None

    async def passTime(self, watch: Any, seconds: int) -> None:
        """Let ``seconds`` pass, until the key :meth:`watchExpiry` watched has expired."""
        raise NotImplementedError

    async def refuseDenied(self, broker: IBroker) -> None:
        """From now on refuse ``broker`` the channels ``denied:*`` (a Redis ACL allowing
        every other channel the test uses)."""
        raise NotImplementedError

    def failStores(self, broker: IBroker) -> None:
        """Make every store fail from now on (Redis out of memory)."""
        raise NotImplementedError

    def flush(self, broker: IBroker) -> None:
        """Make the store forget everything (FLUSHDB, a restart without persistence)."""
        raise NotImplementedError

    # Helpers

    async def start(self, *wanted: str, shards: bool = False) -> tuple[IBroker, Listener]:
        """A broker and its listener (a :class:`ShardListener` with ``shards``)."""
        listener = (ShardListener if shards else Listener)(wanted)
        broker = await self.makeBroker(listener)
        return broker, listener

    async def subscribe(self, broker: IBroker, listener: Listener, channel: str) -> None:
        """Subscribe as the router does: the listener wants the channel from now on."""
        listener.wanted.add(channel)
        await self.settle(broker.subscribe(channel))

    async def unsubscribe(self, broker: IBroker, listener: Listener, channel: str) -> None:
        listener.wanted.discard(channel)
        await self.settle(broker.unsubscribe(channel))

    async def message(self, listener: Listener) -> tuple[str, bytes]:
        return await self.settle(listener.messages.get())

    async def event(self, listener: Listener) -> Any:
        return await self.settle(listener.events.get())

    async def failure(self, d: defer.Deferred[Any], *errors: type) -> Any:
        """The exception ``d`` fails with, which must be one of ``errors``."""
        try:
            result = await self.settle(d)
        except errors as e:
            return e
        self.fail(f"{d} fired with {result!r}, expected {errors}")

    async def delivered(self, broker: IBroker, listener: Listener, channel: str,
                        payload: bytes) -> int:
        """Publish and wait for the message; the receiver count."""
        receivers = await self.settle(broker.publish(channel, payload))
        self.assertEqual(await self.message(listener), (channel, payload))
        return receivers

    # The contract

    async def test_providesTheInterface(self):
        """Both brokers provide IBroker; a started broker is connected."""
        broker, listener = await self.start()
        verifyObject(IBroker, broker)
        self.assertTrue(broker.connected)
        self.assertEqual(listener.log, ["connected"])

    async def test_subscribedChannelGetsWhatIsPublished(self):
        """Once subscribe() fired, a publish on the channel reaches the listener, with
        the channel's name and the payload's exact bytes (numbers stay bytes)."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        self.assertEqual(await self.delivered(broker, listener, "ch", b"12345"), 1)
        self.assertEqual(await self.delivered(broker, listener, "ch", b"\xff\x00"), 1)

    async def test_deliveryHappensAfterPublishReturns(self):
        """A message is never delivered inside publish(): the listener is not re-entered
        from the call, and nothing has arrived when it returns."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        d = listener.publishing(broker, "ch", b"later")
        self.assertEqual(listener.messages.pending, [])
        self.assertEqual(await self.settle(d), 1)
        self.assertEqual(await self.message(listener), ("ch", b"later"))
        self.assertEqual(listener.reentered, 0)

    async def test_messagesOnAChannelArriveInPublishOrder(self):
        """Messages published one after the other (not waiting) arrive in that order."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        await self.subscribe(broker, listener, "other")
        sent = [b"%d" % n for n in range(100)]
        published = []
        for payload in sent:
            published.append(broker.publish("ch", payload))
            published.append(broker.publish("other", b"noise"))
        received = []
        while len(received) < len(sent):
            channel, payload = await self.message(listener)
            if channel == "ch":
                received.append(payload)
        self.assertEqual(received, sent)
        # Every publish was answered (the last "noise" ones may still have been on their
        # way when the last "ch" message arrived: stopping the broker then failed them).
        await self.settle(defer.gatherResults(published, consumeErrors=True))

    async def test_barrierFiresAfterWhatWasPublishedBefore(self):
        """barrier() fires once every message published before it was handed over, on
        every channel (even published through another connection, as Django does)."""
        broker, listener = await self.start()
        other, _ = await self.start()
        await self.subscribe(broker, listener, "a")
        await self.subscribe(broker, listener, "b")
        # Published (answered by Redis) before the barrier, as a Django publish is.
        await self.settle(defer.gatherResults(
            [other.publish("a" if n % 2 else "b", b"%d" % n) for n in range(50)],
            consumeErrors=True))
        await self.settle(broker.barrier())
        got = sorted(int(p) for kind, _, p in
                     (e for e in listener.log if isinstance(e, tuple) and e[0] == "message"))
        self.assertEqual(got, list(range(50)))

    async def test_publishCountsTheNodesSubscribed(self):
        """publish() fires with how many brokers (nodes) are subscribed to the channel;
        each of them gets the message once."""
        here, here_listener = await self.start()
        there, there_listener = await self.start()
        self.assertEqual(await self.settle(here.publish("ch", b"nobody")), 0)
        await self.subscribe(here, here_listener, "ch")
        await self.subscribe(there, there_listener, "ch")
        self.assertEqual(await self.settle(there.publish("ch", b"both")), 2)
        self.assertEqual(await self.message(here_listener), ("ch", b"both"))
        self.assertEqual(await self.message(there_listener), ("ch", b"both"))
        await self.unsubscribe(there, there_listener, "ch")
        self.assertEqual(await self.delivered(there, here_listener, "ch", b"one"), 1)
        self.assertEqual(there_listener.messages.pending, [])

    async def test_messageStoredWithExpireIsFetched(self):
        """publish(expire > 0) stores the message under the channel's name (the last one
        wins), even with nobody subscribed; fetch() gives it back; unknown keys are None."""
        broker, _ = await self.start()
        self.assertEqual(await self.settle(broker.publish("kept", b"first", expire=60)), 0)
        await self.settle(broker.publish("kept", b"last", expire=60))
        self.assertEqual(await self.settle(broker.fetch("kept")), b"last")
        self.assertIsNone(await self.settle(broker.fetch("unknown")))

    async def test_fetchManyGivesEachKeysMessageInOrder(self):
        """fetchMany() gives what fetch() gives of each key, in the keys' order, however
        many (more than one batch: split, on whichever servers the keys live)."""
        broker, _ = await self.start()
        keys = [f"many:{n}" for n in range(BATCH + 7)]
        stored = keys[::3]
        await self.settle(defer.gatherResults(
            [broker.publish(key, key.encode(), expire=60) for key in stored]))
        asked = [*reversed(keys), "unknown"]
        got = await self.settle(defer.gatherResults(broker.fetchMany(asked)))
        self.assertEqual(got, [key.encode() if key in stored else None for key in asked])
        self.assertEqual(broker.fetchMany([]), [])

    async def test_nothingStoredWithoutExpire(self):
        """A publish without expire stores nothing, and leaves a stored message alone."""
        broker, _ = await self.start()
        await self.settle(broker.publish("fleeting", b"gone"))
        self.assertIsNone(await self.settle(broker.fetch("fleeting")))
        await self.settle(broker.publish("kept", b"stored", expire=60))
        await self.settle(broker.publish("kept", b"not stored"))
        self.assertEqual(await self.settle(broker.fetch("kept")), b"stored")

    async def test_unsubscribeStopsDelivery(self):
        """After unsubscribe() fired, nothing more is delivered on the channel; other
        channels go on."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        await self.subscribe(broker, listener, "other")
        await self.unsubscribe(broker, listener, "ch")
        self.assertEqual(await self.settle(broker.publish("ch", b"unheard")), 0)
        self.assertEqual(await self.delivered(broker, listener, "other", b"heard"), 1)
        self.assertNotIn(("message", "ch", b"unheard"), listener.log)



    async def test_presenceWrittenByOneNodeIsReadByAnother(self):
        """updatePresence on one broker, readPresence on another: the facility's
        connections (oldest first), their count and distinct users, those of one
        audience; a leave takes one out."""
        here, _ = await self.start()
        there, _ = await self.start()
        keys = presence_keys(None, "room")
        changes = [(JOIN, conn, user, Entry(conn, user, since).to_json())
                   for conn, user, since in (("c2", None, 2.0), ("c1", "ann", 1.0),
                                             ("c3", "ann", 3.0))]
        await self.settle(here.updatePresence(keys, 60, changes,
                                              {"c1": ("broadcast",), "c3": ("user:ann",)}))
        listed = parse_entries(await self.settle(there.readPresence(keys, "list")))
        self.assertEqual([(e.id, e.user) for e in listed],
                         [("c1", "ann"), ("c2", None), ("c3", "ann")])
        self.assertEqual(parse_stats(await self.settle(there.readPresence(keys, "stats"))),
                         Stats(3, 1))
        self.assertEqual([e.id for e in parse_entries(await self.settle(
            there.readPresence(keys, "list", "broadcast")))], ["c1"])
        await self.settle(there.updatePresence(keys, 60, [(LEAVE, "c1", None, "")]))
        self.assertEqual([e.id for e in parse_entries(await self.settle(
            here.readPresence(keys, "list")))], ["c2", "c3"])

    async def test_nodeRegistryKeepsEveryNode(self):
        """Each node keeps itself in the node registry (its keys, the control channel's
        place); any node reads all of them, and one that leaves is gone."""
        brokers = [(await self.start())[0] for _ in range(2)]
        keys = nodes_keys("ws4tx")
        for n, broker in enumerate(brokers):
            entry = Entry(f"node{n}", None, float(n)).to_json()
            await self.settle(broker.updatePresence(keys, 15, [(JOIN, f"node{n}", None,
                                                                entry)]))
        for broker in brokers:
            self.assertEqual([e.id for e in parse_entries(await self.settle(
                broker.readPresence(keys, "list")))], ["node0", "node1"])
        await self.settle(brokers[0].updatePresence(keys, 15, [(LEAVE, "node0", None, "")]))
        self.assertEqual([e.id for e in parse_entries(await self.settle(
            brokers[1].readPresence(keys, "list")))], ["node1"])

    async def test_controlAndReplyChannelsReachEveryNode(self):
        """The control channel reaches every node, and a node's answer on a reply
        channel reaches the asker (they live apart from client channels on shards and
        clusters)."""
        asker, asker_listener = await self.start()
        node, node_listener = await self.start()
        control = control_channel("ws4tx")
        reply = reply_channel("ws4tx", "abc123")
        await self.subscribe(node, node_listener, control)
        await self.subscribe(asker, asker_listener, reply)
        self.assertEqual(await self.settle(asker.publish(control, b"query")), 1)
        self.assertEqual(await self.message(node_listener), (control, b"query"))
        self.assertEqual(await self.settle(node.publish(reply, b"answer")), 1)
        self.assertEqual(await self.message(asker_listener), (reply, b"answer"))


class HistoryContract(BrokerContract):
    """Channels of facilities with history (publishWithHistory, history), on both brokers."""

    KEEP = Retention(size=3, ttl=60)

    async def published(self, broker: IBroker, channel: str, payload: bytes,
                        retention: Retention = KEEP, expire: int = 0) -> Position:
        result = await self.settle(broker.publishWithHistory(channel, payload, retention,
                                                             expire))
        return result.position

    async def read(self, broker: IBroker, channel: str, retention: Retention = KEEP,
                   **kwargs: Any) -> Any:
        return await self.settle(broker.history(channel, retention, **kwargs))

    async def test_offsetsCountOnePerPublishPerChannelInOneEpoch(self):
        """Offsets go 1, 2, 3 on each channel of its own; the epoch stays; subscribers get
        each message behind its position, in order, and the count of receivers."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "h:a")
        first = await self.published(broker, "h:a", b"one")
        other = await self.published(broker, "h:b", b"elsewhere")
        second = await self.published(broker, "h:a", b"two")
        third = await self.published(broker, "h:a", b"three")
        self.assertEqual([first.offset, second.offset, third.offset, other.offset],
                         [1, 2, 3, 1])
        self.assertEqual({first.epoch, second.epoch, third.epoch}, {first.epoch})
        self.assertNotEqual(other.epoch, first.epoch)
        got = [strip_position((await self.message(listener))[1]) for _ in range(3)]
        self.assertEqual(got, [(first, b"one"), (second, b"two"), (third, b"three")])

    async def test_historyKeepsTheLastSizeMessagesOldestFirst(self):
        """The stream keeps the last `size` messages; without since: the last `limit`;
        with since: the first `limit` after it; with the epoch and the last offset."""
        broker, _ = await self.start()
        for n in range(1, 6):
            position = await self.published(broker, "h:a", b"m%d" % n)
        whole = await self.read(broker, "h:a")
        self.assertEqual((whole.epoch, whole.offset), (position.epoch, 5))
        self.assertEqual(whole.publications,
                         [Publication(n, b"m%d" % n) for n in (3, 4, 5)])
        self.assertEqual([p.offset for p in (await self.read(broker, "h:a", limit=2))
                          .publications], [4, 5])
        self.assertEqual([p.offset for p in (await self.read(broker, "h:a", since=3))
                          .publications], [4, 5])
        self.assertEqual([p.offset for p in (await self.read(broker, "h:a", since=0,
                                                             limit=2)).publications], [3, 4])
        self.assertEqual((await self.read(broker, "h:a", since=5)).publications, [])

    async def test_historyOfAnUntouchedChannelKeepsItsEpoch(self):
        """A read before any publish gives offset 0 and an epoch the first publish keeps."""
        broker, _ = await self.start()
        empty = await self.read(broker, "h:new")
        self.assertEqual((empty.offset, empty.publications), (0, []))
        self.assertEqual(await self.published(broker, "h:new", b"x"),
                         Position(1, empty.epoch))

    async def test_forgottenHistoryStartsANewEpoch(self):
        """After FLUSHDB (or a restart without persistence) offsets start again at 1 in
        another epoch, and nothing of the old epoch is read."""
        broker, _ = await self.start()
        await self.published(broker, "h:a", b"old")
        old = await self.published(broker, "h:a", b"old2")
        self.flush(broker)
        new = await self.published(broker, "h:a", b"new")
        self.assertEqual(new.offset, 1)
        self.assertNotEqual(new.epoch, old.epoch)
        self.assertEqual((await self.read(broker, "h:a")).publications,
                         [Publication(1, b"new")])

    async def test_historyPublishStoresForReplay(self):
        """With expire, the message is also stored under the channel (ws4redis's replay),
        as it is, without its position."""
        broker, _ = await self.start()
        await self.published(broker, "h:a", b"kept", expire=60)
        self.assertEqual(await self.settle(broker.fetch("h:a")), b"kept")

    async def test_historiesReadEachChannelAsHistoryDoes(self):
        """histories() gives what history() gives of each read, in their order, however
        many channels (more than one batch: split, on whichever servers they live): the
        same epochs and offsets, the same messages for the same since and limit, and an
        untouched channel keeps the epoch it is given."""
        broker, _ = await self.start()
        channels = [f"h:many:{n}" for n in range(BATCH + 5)]
        for n, channel in enumerate(channels[:12]):
            for m in range(n % 5):
                await self.published(broker, channel, b"%s/%d" % (channel.encode(), m))
        reads = [HistoryRead(channel, self.KEEP, *((None, None), (0, None), (1, 1),
                                                   (None, 2), (2, None))[n % 5])
                 for n, channel in enumerate(channels)]
        reads.append(HistoryRead(channels[1], Retention(size=3, ttl=90), 0, 1))
        got = await self.settle(defer.gatherResults(broker.histories(reads)))
        self.assertEqual(len(got), len(reads))
        for read, batched in zip(reads, got, strict=True):
            one = await self.read(broker, read.channel, read.retention, since=read.since,
                                  limit=read.limit)
            self.assertEqual(batched, one, read)
        untouched = got[-2]
        self.assertEqual((untouched.offset, untouched.publications), (0, []))
        self.assertEqual(await self.published(broker, channels[-1], b"x"),
                         Position(1, untouched.epoch))
        self.assertEqual([p.payload for p in got[3].publications],
                         [b"h:many:3/1", b"h:many:3/2"])

    async def test_aBadReadOfHistoriesFailsAlone(self):
        """A negative since or a limit below 1 fails its read with ValueError; the
        others of the batch are read."""
        broker, _ = await self.start()
        await self.published(broker, "h:a", b"one")
        answers = broker.histories([HistoryRead("h:a", self.KEEP, -1),
                                    HistoryRead("h:a", self.KEEP, 0),
                                    HistoryRead("h:b", self.KEEP, None, 0)])
        await self.failure(answers[0], ValueError)
        self.assertEqual((await self.settle(answers[1])).publications,
                         [Publication(1, b"one")])
        await self.failure(answers[2], ValueError)
        self.assertEqual(broker.histories([]), [])

    async def test_badSinceOrLimitFails(self):
        """A negative since or a limit below 1 is refused with ValueError."""
        broker, _ = await self.start()
        for kwargs in ({"since": -1}, {"limit": 0}):
            await self.failure(broker.history("h:a", self.KEEP, **kwargs), ValueError)


class OutageContract(BrokerContract):
    """What needs a broker whose one server the test kills, narrows (ACL), fills
    (maxmemory) or watches expire: the memory and single-Redis brokers."""

    async def test_barrierFailsWhileDisconnected(self):
        """Without a connection the broker cannot tell: BrokerUnavailable."""
        broker, _ = await self.start()
        await self.disconnect(broker)
        with self.assertRaises(BrokerUnavailable):
            await self.settle(broker.barrier())
        await self.reconnect(broker)

    async def test_storedMessageExpires(self):
        """A stored message is gone once its expiry has passed."""
        broker, _ = await self.start()
        watch = await self.watchExpiry(broker, "brief")
        await self.settle(broker.publish("brief", b"soon gone", expire=1))
        self.assertEqual(await self.settle(broker.fetch("brief")), b"soon gone")
        await self.passTime(watch, 1)
        self.assertIsNone(await self.settle(broker.fetch("brief")))

    async def test_wantedChannelsResubscribedAfterReconnect(self):
        """After the connection is lost and back, the listener is told disconnected then
        connected, and exactly its wanted channels are subscribed again."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "a")
        await self.subscribe(broker, listener, "b")
        await self.disconnect(broker)
        self.assertFalse(broker.connected)
        await self.reconnect(broker)
        self.assertTrue(broker.connected)
        self.assertEqual(listener.log, ["connected", "disconnected", "connected"])
        self.assertEqual(await self.delivered(broker, listener, "a", b"back"), 1)
        self.assertEqual(await self.delivered(broker, listener, "b", b"back"), 1)

    async def test_unsubscribeWhileDisconnectedSucceeds(self):
        """unsubscribe() while the connection is down succeeds, and a channel the
        listener no longer wants is not subscribed again after reconnection."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "gone")
        await self.subscribe(broker, listener, "kept")
        await self.disconnect(broker)
        await self.unsubscribe(broker, listener, "gone")
        await self.reconnect(broker)
        self.assertEqual(await self.settle(broker.publish("gone", b"unheard")), 0)
        self.assertEqual(await self.delivered(broker, listener, "kept", b"heard"), 1)

    async def test_commandsWhileDisconnectedFail(self):
        """While the connection is down, subscribe, publish and fetch fail with
        BrokerUnavailable (within a bounded time); a channel the listener wants is
        subscribed once the connection is back."""
        broker, listener = await self.start()
        await self.disconnect(broker)
        listener.wanted.add("late")
        await self.failure(broker.subscribe("late"), BrokerUnavailable)
        await self.failure(broker.publish("late", b"lost"), BrokerUnavailable)
        await self.failure(broker.publish("late", b"lost", expire=60), BrokerUnavailable)
        await self.failure(broker.fetch("late"), BrokerUnavailable)
        await self.reconnect(broker)
        self.assertEqual(await self.delivered(broker, listener, "late", b"here"), 1)
        self.assertIsNone(await self.settle(broker.fetch("late")))

    async def test_refusedSubscriptionFailsOnlyThatChannel(self):
        """A channel the broker may not subscribe fails with SubscriptionRefused naming
        it; other channels are subscribed and delivered."""
        broker, listener = await self.start()
        await self.refuseDenied(broker)
        refused = await self.failure(broker.subscribe("denied:x"), SubscriptionRefused)
        self.assertEqual(refused.channel, "denied:x")
        self.assertIn("NOPERM", refused.reason)
        await self.subscribe(broker, listener, "allowed:x")
        self.assertEqual(await self.delivered(broker, listener, "allowed:x", b"fine"), 1)
        # narrowing what was not subscribed leaves the connection alone
        self.assertNotIn("disconnected", listener.log)

    async def test_refusedResubscriptionIsReported(self):
        """A wanted channel refused when the broker resubscribes is reported to the
        listener (subscriptionRefused) before brokerConnected; the others are
        subscribed again."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "allowed:x")
        await self.subscribe(broker, listener, "denied:x")
        await self.refuseDenied(broker)  # narrowing the ACL drops the subscriber
        self.assertEqual(await self.event(listener), "disconnected")
        self.assertEqual(await self.event(listener), ("refused", "denied:x"))
        self.assertEqual(await self.event(listener), "connected")
        self.assertEqual(await self.delivered(broker, listener, "allowed:x", b"fine"), 1)

    async def test_deliveredButNotStoredFailsWithNotStored(self):
        """When the store refuses the message, publish(expire) fails with NotStored
        carrying the receivers: the message was delivered all the same, and a publish
        without expire is unaffected."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        self.failStores(broker)
        not_stored = await self.failure(broker.publish("ch", b"unstored", expire=60),
                                        NotStored)
        self.assertEqual(not_stored.receivers, 1)
        self.assertIn("maxmemory", not_stored.reason)
        self.assertEqual(await self.message(listener), ("ch", b"unstored"))
        self.assertIsNone(await self.settle(broker.fetch("ch")))
        self.assertEqual(await self.delivered(broker, listener, "ch", b"plain"), 1)

    async def test_expiredHistoryStartsANewEpoch(self):
        """`ttl` seconds after the last publish the history is gone: the next publish
        starts a new epoch at offset 1."""
        broker, _ = await self.start()
        _, meta = history_keys(None, "h:a")
        watch = await self.watchExpiry(broker, meta)
        old = await self.published(broker, "h:a", b"old", Retention(3, 1))
        await self.passTime(watch, 1)
        new = await self.published(broker, "h:a", b"new", Retention(3, 1))
        self.assertEqual(new.offset, 1)
        self.assertNotEqual(new.epoch, old.epoch)


class TopologyOutageContract(HistoryContract):
    """One outage of a part of the topology (the whole of it for a single server): the
    server killed and started again, a shard down then back, a Sentinel master or a
    Cluster primary failing over to its replica. Each topology says what it takes down
    and how it comes back (:meth:`takeDown`, :meth:`bringBack`) and which of
    :attr:`CHANNELS` that interrupts (:meth:`downChannels`)."""

    #: Channels subscribed across the outage (on every shard or primary).
    CHANNELS = ("ch", "other", "a", "b", "h:a", "h:b")

    def downChannels(self, broker: IBroker) -> list[str]:
        """The channels of :attr:`CHANNELS` the outage interrupts (all by default)."""
        return list(self.CHANNELS)

    async def takeDown(self, broker: IBroker) -> None:
        """Take down what serves :meth:`downChannels` (what was written there stays:
        persisted, or replicated before a failover)."""
        raise NotImplementedError

    async def bringBack(self, broker: IBroker) -> None:
        """Bring it back (or let the failover happen); return once ``broker`` was told
        and its command connections are ready."""
        raise NotImplementedError

    async def test_anOutageInterruptsItsChannelsAndResubscribesThem(self):
        """A part of the topology goes down and comes back: the listener is told that
        its channels, and only they, were interrupted, then resumed (for a whole single
        server: disconnected, then connected), never that the whole broker came back
        when only a part went; the other channels deliver meanwhile; every channel is
        subscribed again and delivers; histories, epochs and offsets are intact (the
        next publish goes on from them)."""
        broker, listener = await self.start(shards=True)
        for channel in self.CHANNELS:
            await self.subscribe(broker, listener, channel)
        before = {}
        for channel in self.CHANNELS:
            for n in (1, 2):
                before[channel] = await self.published(broker, channel, b"%d" % n)
                self.assertEqual(strip_position((await self.message(listener))[1]),
                                 (before[channel], b"%d" % n))
        down = sorted(self.downChannels(broker))
        up = sorted(set(self.CHANNELS) - set(down))
        whole = not up
        await self.takeDown(broker)
        self.assertEqual(await self.event(listener),
                         "disconnected" if whole else ("interrupted", tuple(down)))
        for channel in up:
            self.assertEqual(await self.delivered(broker, listener, channel, b"meanwhile"),
                             1)
        await self.bringBack(broker)
        self.assertEqual(await self.event(listener),
                         "connected" if whole else ("resumed", tuple(down)))
        self.assertEqual((listener.log.count("connected"), listener.log.count("disconnected")),
                         (2, 1) if whole else (1, 0))
        self.assertTrue(broker.connected)
        for channel in self.CHANNELS:
            self.assertEqual(await self.delivered(broker, listener, channel, b"after"), 1)
        for channel in self.CHANNELS:
            history = await self.read(broker, channel)
            self.assertEqual((history.epoch, [p.payload for p in history.publications]),
                             (before[channel].epoch, [b"1", b"2"]), channel)
            self.assertEqual(await self.published(broker, channel, b"3"),
                             Position(3, before[channel].epoch))
        self.assertEqual(listener.events.pending, [])


class MemoryBrokerContractTests(TopologyOutageContract, OutageContract, unittest.TestCase):
    """The contract of the in-memory double, on a Clock the test drives."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = MemoryBus(self.clock)

    async def makeBroker(self, listener: Listener) -> IBroker:
        broker = MemoryBroker(self.bus)
        broker.start(listener)
        self.addCleanup(broker.stop)
        self.assertEqual(await self.event(listener), "connected")
        return broker

    async def settle(self, d: defer.Deferred[Any]) -> Any:
        self.clock.advance(0)
        if not d.called:
            self.fail(f"{d} did not fire on the next turn")
        return await d

    async def disconnect(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.disconnect()

    async def reconnect(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.reconnect()

    async def passTime(self, watch: Any, seconds: int) -> None:
        self.clock.advance(seconds)

    async def takeDown(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.disconnect()

    async def bringBack(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.reconnect()

    async def refuseDenied(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.refuse("denied:*")

    def failStores(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.bus.refuseStores()

    def flush(self, broker: MemoryBroker) -> None:  # type: ignore[override]
        broker.bus.flush()

    async def test_nothingIsDeliveredUntilTheClockTurns(self):
        """On a Clock, a test delivers what was published by advancing it (documented
        for applications' tests)."""
        broker, listener = await self.start()
        await self.subscribe(broker, listener, "ch")
        self.assertEqual(self.bus.publish("ch", b"from elsewhere"), 1)
        self.assertEqual((listener.messages.pending, self.bus.undelivered), ([], 1))
        self.clock.advance(0)
        self.assertEqual(listener.messages.pending, [("ch", b"from elsewhere")])

    async def test_messagePendingAcrossAReconnectionIsLost(self):
        """A message published just before the connection was lost is lost, even when
        the connection is back before the clock turns (as with Redis, whose subscriber
        loses what was not read from its socket)."""
        broker, listener = await self.start("ch")
        await self.settle(broker.subscribe("ch"))
        self.assertEqual(self.bus.publish("ch", b"in flight"), 1)
        broker.disconnect()
        broker.reconnect()
        self.assertEqual(await self.delivered(broker, listener, "ch", b"after"), 1)
        self.assertNotIn(("message", "ch", b"in flight"), listener.log)


class RedisBrokerContractTests(TopologyOutageContract, OutageContract, unittest.TestCase):
    """The contract of the Redis broker, on a real Redis this test starts. The brokers
    connect as an ACL user (``contract``) so that its channels can be narrowed; an outage
    is the server killed (SIGKILL) and started again on the same port, or shut down
    saving its data (``takeDown``) and started again on it."""

    USER = "contract"

    def setUp(self) -> None:
        self.server = _persistent()
        self._startServer()
        self.addCleanup(_removeDir, self.server)
        self.addCleanup(self.server.stop)
        self.redis = redis.Redis.from_url(self.server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.events: list[tuple[RedisBroker, Listener]] = []

    def _startServer(self) -> None:
        self.server.start()
        admin = redis.Redis.from_url(self.server.url, socket_timeout=5)
        admin.execute_command("ACL", "SETUSER", self.USER, "on", ">secret", "~*", "+@all",
                              "allchannels")
        admin.close()

    async def makeBroker(self, listener: Listener) -> IBroker:
        address = dataclasses.replace(self.server.address, username=self.USER,
                                      password="secret")
        broker = RedisBroker(address, ping_interval=0, timeout=2.0,
                             retry_policy=lambda attempt: 0.05, prefix=None)
        self._observeCommands(broker)
        broker.start(listener)
        self.addCleanup(broker.stop)
        self.assertEqual(await self.event(listener), "connected")
        await self._commandsReady(broker)
        return broker

    def _observeCommands(self, broker: RedisBroker) -> None:
        """Note each time the broker's command connection is ready (its subscriber
        connection is the listener's brokerConnected)."""
        broker.test_commands = defer.DeferredQueue()  # type: ignore[attr-defined]
        ready = broker._commandReady

        def commandReady(proto: Any) -> None:
            ready(proto)
            broker.test_commands.put(None)  # type: ignore[attr-defined]

        broker._commandReady = commandReady  # type: ignore[method-assign]

    async def _commandsReady(self, broker: RedisBroker) -> None:
        await self.settle(broker.test_commands.get())  # type: ignore[attr-defined]

    async def settle(self, d: defer.Deferred[Any]) -> Any:
        return await d.addTimeout(TIMEOUT, reactor)

    async def disconnect(self, broker: RedisBroker) -> None:  # type: ignore[override]
        listener = broker._listener
        assert isinstance(listener, Listener)
        self.server.stop(signal.SIGKILL)
        self.redis.connection_pool.disconnect()
        self.assertEqual(await self.event(listener), "disconnected")

    async def reconnect(self, broker: RedisBroker) -> None:  # type: ignore[override]
        listener = broker._listener
        assert isinstance(listener, Listener)
        self._startServer()
        commands = broker.test_commands.get()  # type: ignore[attr-defined]
        while True:
            event = await self.event(listener)
            if event == "connected":
                break
            self.assertIsInstance(event, tuple)  # a refusal, before connected
        await self.settle(commands)

    async def takeDown(self, broker: RedisBroker) -> None:  # type: ignore[override]
        await _saveAndKill(self.server, [broker])
        self.redis.connection_pool.disconnect()

    async def bringBack(self, broker: RedisBroker) -> None:  # type: ignore[override]
        commands = broker.test_commands.get()  # type: ignore[attr-defined]
        self._startServer()
        await self.settle(commands)

    async def watchExpiry(self, broker: RedisBroker, key: str) -> Any:  # type: ignore[override]
        """Redis tells of expired keys on __keyevent@0__:expired (keyspace
        notifications): wait for that rather than for time."""
        self.redis.config_set("notify-keyspace-events", "Ex")
        watcher, listener = await self.start()
        await self.subscribe(watcher, listener, "__keyevent@0__:expired")
        return listener, key

    async def passTime(self, watch: Any, seconds: int) -> None:
        """Wait until the watched key has expired (other keys may expire meanwhile)."""
        listener, key = watch
        while True:
            _, payload = await self.settle(listener.messages.get())
            if payload == key.encode():
                return

    def flush(self, broker: RedisBroker) -> None:  # type: ignore[override]
        self.redis.flushdb()

    async def refuseDenied(self, broker: RedisBroker) -> None:  # type: ignore[override]
        self.redis.execute_command("ACL", "SETUSER", self.USER, "resetchannels",
                                   "&allowed:*", "&__ws4tx_probe__:*")

    def failStores(self, broker: RedisBroker) -> None:  # type: ignore[override]
        self.redis.config_set("maxmemory-policy", "noeviction")
        self.redis.config_set("maxmemory", 1)


def _QUICK_RETRY(attempt: int) -> float:
    """Reconnect soon after a server is back (the default backs off to seconds)."""
    return 0.05


def _persistent(**kwargs: Any) -> EmbeddedRedis:
    """A server whose data directory outlives it: started again, it loads what it
    saved (:func:`_saveAndKill`)."""
    directory = tempfile.mkdtemp(prefix="ws4tx-contract-")
    server = EmbeddedRedis(extra_args=[*kwargs.pop("extra_args", ()), "--dir", directory],
                           **kwargs)
    server.test_dir = directory  # type: ignore[attr-defined]
    return server


def _removeDir(server: EmbeddedRedis) -> None:
    shutil.rmtree(server.test_dir, ignore_errors=True)  # type: ignore[attr-defined]


async def _saveAndKill(server: EmbeddedRedis, brokers: list[RedisBroker]) -> None:
    """Kill the server (SIGKILL) once it saved its data; return once ``brokers`` lost
    their command connections (their subscribers' losses are their listeners' to
    tell)."""
    lost = [_whenCommandsLost(b) for b in brokers if b._cmd is not None]
    with redis.Redis(port=server.port, socket_timeout=5) as client:
        client.save()
    server.stop(signal.SIGKILL)
    for d in lost:
        await d.addTimeout(TIMEOUT, reactor)


def _whenCommandsReady(broker: RedisBroker) -> defer.Deferred[None]:
    """Fires once ``broker``'s command connection is ready (at once when it is)."""
    if broker._cmd is not None:
        return defer.succeed(None)
    ready = broker._commandReady
    done: defer.Deferred[None] = defer.Deferred()

    def commandReady(proto: Any) -> None:
        ready(proto)
        del broker._commandReady  # type: ignore[method-assign]
        done.callback(None)

    broker._commandReady = commandReady  # type: ignore[method-assign]
    return done


#: Bound on a failover (Sentinel's down-after or the cluster's node timeout, the
#: promotion, the broker finding the new master): never reached when things work.
FAILOVER_TIMEOUT = 30.0


def _replicated(master: EmbeddedRedis) -> None:
    """Return once the replica of ``master`` has every write made so far."""
    with redis.Redis(port=master.port, socket_timeout=10) as client:
        if client.wait(1, 10_000) < 1:
            raise AssertionError("the replica did not catch up")


def _whenCommandsLost(broker: RedisBroker) -> defer.Deferred[Any]:
    """Fires once ``broker``'s command connection is lost."""
    assert broker._cmd is not None
    lost: defer.Deferred[Any] = broker._cmd.whenDisconnected()
    return lost


def _whenMapped(broker: ClusterBroker, node: tuple[str, int]) -> defer.Deferred[None]:
    """Fires once ``broker`` has read a slot map in which ``node`` serves slots and the
    command connection to ``node`` is ready."""
    done: defer.Deferred[None] = defer.Deferred()
    apply = broker._apply

    def applied(slots: Any) -> None:
        apply(slots)
        if node in broker.nodes and not done.called:
            del broker._apply  # type: ignore[method-assign]
            _whenCommandsReady(broker.nodes[node]).chainDeferred(done)

    broker._apply = applied  # type: ignore[method-assign]
    return done


def _whenSubscribed(broker: RedisBroker, name: str) -> defer.Deferred[None]:
    """Fires once ``broker`` subscribed ``name`` (asked from now on)."""
    done: defer.Deferred[None] = defer.Deferred()
    subscribe = broker.subscribe

    def subscribing(channel: str) -> defer.Deferred[None]:
        d = subscribe(channel)
        if channel == name:
            def subscribed(result: None) -> None:
                if not done.called:
                    del broker.subscribe  # type: ignore[method-assign]
                    done.callback(None)
                return result

            d.addCallback(subscribed)
        return d

    broker.subscribe = subscribing  # type: ignore[method-assign]
    return done


class _TopologyContract(HistoryContract):
    """The contract on a Redis topology the class starts once (a topology takes
    seconds to set up): every test starts from empty servers. What narrows or fills a
    server is tested per topology elsewhere (test_sentinel, test_sharding,
    test_cluster); the outage of a part, with :class:`TopologyOutageContract`."""

    @classmethod
    def startTopology(cls) -> None:
        raise NotImplementedError

    @classmethod
    def stopTopology(cls) -> None:
        raise NotImplementedError

    @classmethod
    def servers(cls) -> list[EmbeddedRedis]:
        """The servers that hold data (masters, shards, primaries)."""
        raise NotImplementedError

    def newBroker(self) -> IBroker:
        raise NotImplementedError

    def innerBrokers(self, broker: IBroker) -> list[RedisBroker]:
        """The RedisBrokers whose command connections must be ready."""
        raise NotImplementedError

    @classmethod
    def setUpClass(cls) -> None:
        cls.startTopology()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stopTopology()

    def setUp(self) -> None:
        self.flush(None)  # type: ignore[arg-type]

    def flush(self, broker: IBroker) -> None:
        for server in self.servers():
            with redis.Redis(port=server.port, socket_timeout=5) as client:
                client.flushall()

    async def makeBroker(self, listener: Listener) -> IBroker:
        broker = self.newBroker()
        broker.start(listener)
        self.addCleanup(broker.stop)
        self.assertEqual(await self.event(listener), "connected")
        for inner in self.innerBrokers(broker):
            await self.settle(_whenCommandsReady(inner))
        return broker

    async def settle(self, d: defer.Deferred[Any]) -> Any:
        return await d.addTimeout(TIMEOUT, reactor)

    def batchesOf(self, broker: IBroker, names: list[str], history: bool) -> int:
        """How many batched commands reading ``names`` (channels' histories, or stored
        messages) takes on this topology: one per server, but one per slot on a Cluster."""
        raise NotImplementedError

    def calls(self, command: str) -> int:
        """How many times the data servers ran ``command`` (INFO commandstats)."""
        total = 0
        for server in self.servers():
            with redis.Redis(port=server.port, socket_timeout=5) as client:
                stats = client.info("commandstats")
            total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        return total

    async def test_batchedReadsCostOneCommandPerServerOrSlot(self):
        """Reading 50 channels' histories and stored messages sends one histories script
        call and one MGET per server holding any of them (per slot on a Cluster, those of
        a node sent together): what a reconnect of a client of 50 channels costs."""
        broker, _ = await self.start()
        channels = [f"h:cost:{n}" for n in range(50)]
        reads = [HistoryRead(channel, HistoryContract.KEEP) for channel in channels]
        await self.settle(defer.gatherResults(broker.histories(reads)))  # loads the script
        before = self.calls("evalsha"), self.calls("mget")
        await self.settle(defer.gatherResults(broker.histories(reads)))
        await self.settle(defer.gatherResults(broker.fetchMany(channels)))
        ran = self.calls("evalsha") - before[0], self.calls("mget") - before[1]
        self.assertEqual(ran, (self.batchesOf(broker, channels, history=True),
                               self.batchesOf(broker, channels, history=False)))


class SentinelBrokerContractTests(_TopologyContract, TopologyOutageContract,
                                  unittest.TestCase):
    """The contract of the Redis broker on a Sentinel group (master, replica, three
    Sentinels): the broker finds the master through the Sentinels. The outage: the master
    SIGKILLed, the replica promoted (the following tests run on it)."""

    group: Any

    @classmethod
    def startTopology(cls) -> None:
        from test._sentinel import SentinelGroup

        cls.group = SentinelGroup()
        cls.group.start()

    @classmethod
    def stopTopology(cls) -> None:
        cls.group.stop()

    @classmethod
    def servers(cls) -> list[EmbeddedRedis]:
        return [cls.group.master]

    def newBroker(self) -> IBroker:
        return RedisBroker(self.group.address(), ping_interval=0, timeout=2.0,
                           retry_policy=_QUICK_RETRY, prefix=None)

    def innerBrokers(self, broker: IBroker) -> list[RedisBroker]:
        assert isinstance(broker, RedisBroker)
        return [broker]

    def batchesOf(self, broker: IBroker, names: list[str], history: bool) -> int:
        return 1

    async def takeDown(self, broker: IBroker) -> None:
        assert isinstance(broker, RedisBroker)
        _replicated(self.group.master)
        lost = _whenCommandsLost(broker)
        self.group.crash_master()
        await self.settle(lost)

    async def bringBack(self, broker: IBroker) -> None:
        assert isinstance(broker, RedisBroker)
        group = self.group
        ready = _whenCommandsReady(broker)
        await threads.deferToThread(group.wait_switch, group.replica)
        group.master, group.replica = group.replica, group.master
        await ready.addTimeout(FAILOVER_TIMEOUT, reactor)

    @pytest.mark.system
    async def test_anOutageInterruptsItsChannelsAndResubscribesThem(self):
        """The master fails over to its replica: the broker is told disconnected, then
        connected on the promoted replica with every channel subscribed again; the
        histories are there (replicated before the crash)."""
        await super().test_anOutageInterruptsItsChannelsAndResubscribesThem()


class ShardedBrokerContractTests(_TopologyContract, TopologyOutageContract,
                                 unittest.TestCase):
    """The contract of the sharded broker over three Redis servers (the test channels
    land on all three); the outage: the second server shut down (its data saved), then
    started again."""

    shards: list[EmbeddedRedis]
    DOWN = 1

    @classmethod
    def startTopology(cls) -> None:
        cls.shards = []
        for _ in range(3):
            server = _persistent()
            server.start()
            cls.shards.append(server)

    @classmethod
    def stopTopology(cls) -> None:
        for server in cls.shards:
            server.stop()
            _removeDir(server)

    def downChannels(self, broker: IBroker) -> list[str]:
        assert isinstance(broker, ShardedBroker)
        return [c for c in self.CHANNELS if broker.shardOf(c) == self.DOWN]

    async def takeDown(self, broker: IBroker) -> None:
        assert isinstance(broker, ShardedBroker)
        inner = broker.shards[self.DOWN]
        assert isinstance(inner, RedisBroker)
        await _saveAndKill(self.shards[self.DOWN], [inner])

    async def bringBack(self, broker: IBroker) -> None:
        assert isinstance(broker, ShardedBroker)
        inner = broker.shards[self.DOWN]
        assert isinstance(inner, RedisBroker)
        ready = _whenCommandsReady(inner)
        self.shards[self.DOWN].start()
        await self.settle(ready)

    @classmethod
    def servers(cls) -> list[EmbeddedRedis]:
        return cls.shards

    def newBroker(self) -> IBroker:
        return ShardedBroker([RedisBroker(s.address, ping_interval=0, timeout=2.0,
                                          retry_policy=_QUICK_RETRY, prefix=None)
                              for s in self.shards], None)

    def innerBrokers(self, broker: IBroker) -> list[RedisBroker]:
        assert isinstance(broker, ShardedBroker)
        return [b for b in broker.shards if isinstance(b, RedisBroker)]

    def batchesOf(self, broker: IBroker, names: list[str], history: bool) -> int:
        assert isinstance(broker, ShardedBroker)
        used = {broker.shardOf(name) for name in names}
        self.assertEqual(used, {0, 1, 2})  # every server answers its part
        return len(used)

    async def test_aServerDownFailsItsPartOfABatchOnly(self):
        """With one server down, a batched read of channels on every server answers the
        others' channels (histories and stored messages) and fails the down server's
        with BrokerUnavailable; once it is back, all are answered."""
        broker, listener = await self.start(shards=True)
        for channel in self.CHANNELS:
            await self.published(broker, channel, channel.encode(), expire=60)
        down = set(self.downChannels(broker))
        await self.takeDown(broker)
        self.assertEqual(await self.event(listener), ("interrupted", ()))  # none subscribed
        reads = [HistoryRead(channel, self.KEEP) for channel in self.CHANNELS]
        for answers in (broker.histories(reads), broker.fetchMany(self.CHANNELS)):
            for channel, answer in zip(self.CHANNELS, answers, strict=True):
                if channel in down:
                    await self.failure(answer, BrokerUnavailable)
                    continue
                got = await self.settle(answer)
                if isinstance(got, bytes):
                    self.assertEqual(got, channel.encode())
                else:
                    self.assertEqual([p.payload for p in got.publications],
                                     [channel.encode()])
        await self.bringBack(broker)
        got = await self.settle(defer.gatherResults(broker.histories(reads)))
        self.assertEqual([[p.payload for p in h.publications] for h in got],
                         [[channel.encode()] for channel in self.CHANNELS])
        self.assertEqual(await self.settle(defer.gatherResults(
            broker.fetchMany(self.CHANNELS))), [c.encode() for c in self.CHANNELS])

    def test_theChannelsOfTheContractUseEveryShard(self):
        """The contract's channels are spread over the three servers (else it would
        test one)."""
        broker = self.newBroker()
        assert isinstance(broker, ShardedBroker)
        used = {broker.shardOf(c) for c in ("ch", "other", "a", "b", "kept", "h:a", "h:b")}
        self.assertEqual(used, {0, 1, 2})
        down = self.downChannels(broker)
        self.assertTrue(down and set(down) < set(self.CHANNELS))


class ClusterBrokerContractTests(_TopologyContract, TopologyOutageContract,
                                 unittest.TestCase):
    """The contract of the cluster broker on a three-primary Redis Cluster (sharded
    pub/sub; the test channels land on all three primaries), the first primary with a
    replica. The outage: that primary SIGKILLed, its replica promoted (the following
    tests run on it)."""

    cluster: Any

    @classmethod
    def startTopology(cls) -> None:
        from test._cluster import Cluster

        cls.cluster = Cluster(replica=True)
        cls.cluster.start()

    @classmethod
    def stopTopology(cls) -> None:
        cls.cluster.stop()

    @classmethod
    def servers(cls) -> list[EmbeddedRedis]:
        return list(cls.cluster.servers)

    def newBroker(self) -> IBroker:
        from ws4tx.redis_address import RedisAddress

        address = RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
        return ClusterBroker(address, ping_interval=0, timeout=2.0, prefix=None)

    def innerBrokers(self, broker: IBroker) -> list[RedisBroker]:
        assert isinstance(broker, ClusterBroker)
        return list(broker.nodes.values())

    def batchesOf(self, broker: IBroker, names: list[str], history: bool) -> int:
        assert isinstance(broker, ClusterBroker)
        if history:
            keys = [cluster_history_keys(broker.prefix, name)[0] for name in names]
        else:
            keys = [broker.clusterName(name) for name in names]
        slots = {key_slot(key) for key in keys}
        self.assertEqual({broker.slots.node_of_slot(slot) for slot in slots if broker.slots},
                         set(broker.nodes))  # every primary answers its part
        return len(slots)

    @staticmethod
    def _node(server: EmbeddedRedis) -> tuple[str, int]:
        return ("127.0.0.1", server.port)

    def downChannels(self, broker: IBroker) -> list[str]:
        assert isinstance(broker, ClusterBroker)
        first = self._node(self.cluster.servers[0])
        return [c for c in self.CHANNELS if broker.nodeFor(c) == first]

    async def takeDown(self, broker: IBroker) -> None:
        assert isinstance(broker, ClusterBroker)
        self.assertIsNotNone(self.cluster.replica, "one failover per cluster")
        first = self.cluster.servers[0]
        _replicated(first)
        lost = _whenCommandsLost(broker.nodes[self._node(first)])
        first.stop(signal.SIGKILL)
        await self.settle(lost)

    async def bringBack(self, broker: IBroker) -> None:
        assert isinstance(broker, ClusterBroker)
        cluster = self.cluster
        promoted = _whenMapped(broker, self._node(cluster.replica))
        cluster.servers[0], cluster.replica = cluster.replica, None
        await promoted.addTimeout(FAILOVER_TIMEOUT, reactor)

    @pytest.mark.system
    async def test_anOutageInterruptsItsChannelsAndResubscribesThem(self):
        """The first primary fails over to its replica: only its channels are told
        interrupted, then resumed once the promoted replica (a new primary) is connected
        and they are subscribed there (the broker is never told that the whole of it came
        back); the other primaries' channels deliver meanwhile; the histories are there
        (replicated before the crash)."""
        await super().test_anOutageInterruptsItsChannelsAndResubscribesThem()

    async def test_aSlotMigratedUnderASubscriberIsFollowed(self):
        """The slot of a subscribed channel goes to another primary (the end of a
        migration): the broker subscribes the channel there and it delivers again; no
        outage is reported and the other channels go on."""
        from ws4tx.sharding import key_slot

        broker, listener = await self.start(shards=True)
        assert isinstance(broker, ClusterBroker)
        for channel in ("ch", "other"):
            await self.subscribe(broker, listener, channel)
        old = broker.nodeFor("ch")
        new = next(n for n in broker.nodes if n not in (old, broker.nodeFor("other")))
        server = {self._node(s): s for s in self.cluster.servers}
        name = broker.clusterName("ch")
        slot = key_slot(name)
        subscribed = _whenSubscribed(broker.nodes[new], name)
        await threads.deferToThread(self.cluster.move_slot, slot, server[new])
        self.addCleanup(self.cluster.move_slot, slot, server[old])
        await self.settle(subscribed)
        self.assertEqual(broker.nodeFor("ch"), new)
        self.assertEqual(await self.delivered(broker, listener, "ch", b"moved"), 1)
        self.assertEqual(await self.delivered(broker, listener, "other", b"stayed"), 1)
        self.assertEqual([e for e in listener.log if e[0] != "message"], ["connected"])

    async def test_theChannelsOfTheContractUseEveryPrimary(self):
        """The contract's channels are spread over the three primaries."""
        broker, _ = await self.start()
        assert isinstance(broker, ClusterBroker)
        used = {broker.nodeFor(c) for c in ("ch", "other", "a", "b", "kept", "h:a", "h:b")}
        self.assertEqual(len(used), 3)


class ShardsWithAClusterBrokerContractTests(_TopologyContract, TopologyOutageContract,
                                           unittest.TestCase):
    """The contract of the sharded broker over a plain Redis (the first shard) and a
    three-primary Redis Cluster (the second: its broker is the shard's member, channels
    placed by jump hash over the shards, then by slot over the cluster's primaries); the
    test channels land on both shards and on two primaries. The outage: the cluster's
    first primary SIGKILLed, its replica promoted; only its channels are interrupted and
    resumed, through both composites."""

    plain: EmbeddedRedis
    cluster: Any
    CLUSTER = 1
    #: The channels the outage interrupts, as taken down.
    _down: set[str] = set()

    @classmethod
    def startTopology(cls) -> None:
        from test._cluster import Cluster

        cls.plain = EmbeddedRedis()
        cls.plain.start()
        cls.cluster = Cluster(replica=True)
        try:
            cls.cluster.start()
        except BaseException:
            cls.plain.stop()
            raise

    @classmethod
    def stopTopology(cls) -> None:
        cls.cluster.stop()
        cls.plain.stop()

    @classmethod
    def servers(cls) -> list[EmbeddedRedis]:
        return [cls.plain, *cls.cluster.servers]

    def newBroker(self) -> IBroker:
        from ws4tx.redis_address import RedisAddress

        address = RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
        return ShardedBroker([
            RedisBroker(self.plain.address, ping_interval=0, timeout=2.0,
                        retry_policy=_QUICK_RETRY, prefix=None),
            ClusterBroker(address, ping_interval=0, timeout=2.0, prefix=None)], None)

    @classmethod
    def _clusterOf(cls, broker: IBroker) -> ClusterBroker:
        assert isinstance(broker, ShardedBroker)
        member = broker.shards[cls.CLUSTER]
        assert isinstance(member, ClusterBroker)
        return member

    def innerBrokers(self, broker: IBroker) -> list[RedisBroker]:
        assert isinstance(broker, ShardedBroker)
        plain = broker.shards[1 - self.CLUSTER]
        assert isinstance(plain, RedisBroker)
        return [plain, *self._clusterOf(broker).nodes.values()]

    def batchesOf(self, broker: IBroker, names: list[str], history: bool) -> int:
        assert isinstance(broker, ShardedBroker)
        cluster = self._clusterOf(broker)
        on_cluster = [n for n in names if broker.shardOf(n) == self.CLUSTER]
        self.assertTrue(on_cluster and len(on_cluster) < len(names))  # both shards answer
        if history:
            keys = [cluster_history_keys(None, name)[0] for name in on_cluster]
        else:
            keys = [cluster.clusterName(name) for name in on_cluster]
        return 1 + len({key_slot(key) for key in keys})

    @staticmethod
    def _node(server: EmbeddedRedis) -> tuple[str, int]:
        return ("127.0.0.1", server.port)

    def downChannels(self, broker: IBroker) -> list[str]:
        assert isinstance(broker, ShardedBroker)
        first = self._node(self.cluster.servers[0])
        cluster = self._clusterOf(broker)
        return [c for c in self.CHANNELS
                if broker.shardOf(c) == self.CLUSTER and cluster.nodeFor(c) == first]

    async def takeDown(self, broker: IBroker) -> None:
        cluster = self._clusterOf(broker)
        self.assertIsNotNone(self.cluster.replica, "one failover per cluster")
        self._down = set(self.downChannels(broker))
        first = self.cluster.servers[0]
        _replicated(first)
        lost = _whenCommandsLost(cluster.nodes[self._node(first)])
        first.stop(signal.SIGKILL)
        await self.settle(lost)

    async def bringBack(self, broker: IBroker) -> None:
        # told interrupted: the sharded broker asks its cluster member which channels
        # are (a client joining now is told so; another shard's return does not tell
        # these clients resumed)
        assert isinstance(broker, ShardedBroker)
        self.assertEqual({c for c in self.CHANNELS if broker.isInterrupted(c)}, self._down)
        cluster = self.cluster
        promoted = _whenMapped(self._clusterOf(broker), self._node(cluster.replica))
        cluster.servers[0], cluster.replica = cluster.replica, None
        await promoted.addTimeout(FAILOVER_TIMEOUT, reactor)

    @pytest.mark.system
    async def test_anOutageInterruptsItsChannelsAndResubscribesThem(self):
        """The cluster's first primary fails over to its replica: only its channels are
        told interrupted (not the plain shard's, not the other primaries'), then resumed
        once the promoted replica is connected and they are subscribed there; the
        histories are there (replicated before the crash)."""
        await super().test_anOutageInterruptsItsChannelsAndResubscribesThem()

    async def test_theChannelsOfTheContractUseBothShardsAndSeveralPrimaries(self):
        """The contract's channels are spread over the plain shard and the cluster's
        primaries, and the outage interrupts some of them only."""
        broker, _ = await self.start()
        assert isinstance(broker, ShardedBroker)
        cluster = self._clusterOf(broker)
        names = ("ch", "other", "a", "b", "kept", "h:a", "h:b")
        self.assertEqual({broker.shardOf(c) for c in names}, {0, 1})
        self.assertGreaterEqual(len({cluster.nodeFor(c) for c in names
                                     if broker.shardOf(c) == self.CLUSTER}), 2)
        down = self.downChannels(broker)
        self.assertTrue(down and set(down) < set(self.CHANNELS))
