"""Redis Cluster building blocks (ws4tx.server.cluster), against a real three-primary
cluster: hash slots as Redis computes them, the slot map, sharded pub/sub on txredisapi
(SSUBSCRIBE, smessage, MOVED) and a slot that moves under a subscriber."""

from __future__ import annotations

import json
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import txredisapi
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from ws4tx import envelope, naming
from ws4tx.redis_address import RedisAddress
from ws4tx.server.cluster import (
    ClusterBroker,
    ClusterView,
    ShardSubscriberProtocol,
    SlotMap,
    choose_view,
    moved,
)
from ws4tx.sharding import key_slot

from test._cluster import Cluster
from test._control_contract import ControlAcrossNodesContract
from test._topologies import ClassCluster
from test._wsclient import TIMEOUT, WSClient, connect


class _Recorder(ShardSubscriberProtocol):
    def shardMessageReceived(self, channel: bytes, message: bytes) -> None:
        self.factory.messages.put((channel, message))

    def shardChannelLost(self, channel: bytes) -> None:
        self.factory.lost.put(channel)


class _Factory(txredisapi.SubscriberFactory):
    protocol = _Recorder


def _bulk(*items: Any) -> bytes:
    """A RESP2 array of bulk strings and integers, as Redis writes a push."""
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        if isinstance(item, int):
            out.append(b":%d\r\n" % item)
        else:
            data = item.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ShardSubscriberProtocolTests(unittest.SynchronousTestCase):
    """The protocol on an in-memory transport: which reply answers which command."""

    def setUp(self) -> None:
        class Lost(ShardSubscriberProtocol):
            def shardChannelLost(self, channel: bytes) -> None:
                lost.append(channel)

        lost: list[bytes] = []
        self.lost = lost
        factory = txredisapi.SubscriberFactory()
        factory.convertNumbers = False
        factory.charset = None
        self.protocol = Lost(charset=None)  # bytes, as the broker's connections
        self.protocol.factory = factory
        self.protocol.makeConnection(StringTransport())

    def test_slotMovedWhileACommandWaitsIsNotItsReply(self):
        """A node's own ``sunsubscribe`` (its slot moved) that arrives while a PING waits
        is reported as a lost channel; the PING gets its own answer, and so does every later
        command (the replies were shifted by one: a subscriber went deaf after a slot
        migration under publishing)."""
        ping = self.protocol.ping()
        self.protocol.dataReceived(_bulk("sunsubscribe", "{p1}chat", 0))
        self.assertNoResult(ping)
        self.assertEqual(self.lost, [b"{p1}chat"])
        self.protocol.dataReceived(_bulk("pong", ""))
        self.assertEqual(self.successResultOf(ping), [b"pong", b""])
        again = self.protocol.ping()
        self.protocol.dataReceived(_bulk("pong", ""))
        self.assertEqual(self.successResultOf(again), [b"pong", b""])

    def test_ownUnsubscribeIsAnsweredAmongTheNodesOwn(self):
        """Our SUNSUBSCRIBE of one channel gets its confirmation; the node's own
        ``sunsubscribe`` of another channel, arriving first, is a lost channel."""
        done = self.protocol.sunsubscribe("{p2}mine")
        self.protocol.dataReceived(_bulk("sunsubscribe", "{p3}moved", 1))
        self.assertNoResult(done)
        self.protocol.dataReceived(_bulk("sunsubscribe", "{p2}mine", 0))
        self.assertEqual(self.successResultOf(done), [b"sunsubscribe", b"{p2}mine", 0])
        self.assertEqual(self.lost, [b"{p3}moved"])
        # the channel is no longer ours to wait for: a later push of it is the node's own
        self.protocol.dataReceived(_bulk("sunsubscribe", "{p2}mine", 0))
        self.assertEqual(self.lost, [b"{p3}moved", b"{p2}mine"])


class NodeSubscriberTurnTests(unittest.SynchronousTestCase):
    """A cluster node's subscriber sends the SSUBSCRIBEs of a reactor turn together, at its
    end: a SUNSUBSCRIBE asked for meanwhile must not overtake them."""

    def test_aChannelJoinedAndLeftInOneTurnEndsUnsubscribed(self):
        from twisted.internet.task import Clock

        from ws4tx.server.cluster import _NodeSubscriber

        clock = Clock()
        protocol = _NodeSubscriber(charset=None)
        protocol.broker = SimpleNamespace(clock=clock)  # type: ignore[assignment]
        factory = txredisapi.SubscriberFactory()
        factory.convertNumbers = False
        factory.charset = None
        protocol.factory = factory
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.subscribe("{p1}chat")
        protocol.unsubscribe("{p1}chat")
        clock.advance(0)
        sent = transport.value()
        self.assertIn(b"SSUBSCRIBE", sent)
        self.assertLess(sent.index(b"SSUBSCRIBE"), sent.index(b"SUNSUBSCRIBE"))
        self.assertEqual(sent.count(b"SSUBSCRIBE"), 1)


class PureTests(unittest.SynchronousTestCase):
    def test_keySlotKnownValuesAndTags(self):
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("123456789"), 0x31C3 % 16384)
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("foo{}{bar}"), key_slot(b"foo{}{bar}"))
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        stream, meta = naming.history_keys("ws4tx", "ws4tx:user:john:chat")
        self.assertEqual(key_slot(stream), key_slot(meta))

    def test_partitionsSpreadEvenlyOverAnyEvenSlotSplit(self):
        """The partitions' tags lie evenly over the slots: split the 16384 slots evenly
        among 3 to 12 primaries (as ``redis-cli --cluster create`` does, or at any
        offset) and each primary gets 128 / primaries partitions within 10 %. (The tags
        ``p0``...``p127`` gave 13 to 26 partitions to each of six primaries.)"""
        found = {naming.cluster_channel(f"ws4tx:user:u{i}:chat") for i in range(20_000)}
        slots = sorted({key_slot(name) for name in found})
        self.assertEqual(len(slots), naming.CLUSTER_PARTITIONS)
        for primaries in range(3, 13):
            share = naming.CLUSTER_PARTITIONS / primaries
            splits = {"redis-cli": _redis_cli_split(primaries)}
            for offset in (0, 17, 64, 100, 8191):
                splits[f"offset {offset}"] = [
                    ((16384 * i) // primaries + offset) % 16384 for i in range(primaries)]
            for how, starts in splits.items():
                counts = _partitions_per_range(slots, starts)
                for count in counts:
                    self.assertTrue(0.9 * share <= count <= 1.1 * share,
                                    f"{primaries} primaries, {how}: {counts}")
        # as the docstring of CLUSTER_TAGS says: one partition in each 128 slots
        self.assertEqual([key_slot(f"{{{tag}}}") for tag in naming.CLUSTER_TAGS],
                         [128 * i + 64 for i in range(naming.CLUSTER_PARTITIONS)])

    def test_controlNamesShareOneSlot(self):
        """The node registry's keys, the control channel and the reply channels are in
        one slot on a cluster (one primary answers the registry and carries every
        command and answer); the first shard holds them of several."""
        for prefix in ("ws4tx", None, "site"):
            keys = naming.nodes_keys(prefix)
            names = [keys.connections, keys.info, keys.users, keys.user_prefix + "x",
                     naming.cluster_name(prefix, naming.control_channel(prefix)),
                     naming.cluster_name(prefix, naming.reply_channel(prefix, "abc123"))]
            self.assertEqual(len({key_slot(name) for name in names}), 1, names)
            channel = naming.broadcast_channel(prefix, "chat")
            self.assertEqual(naming.cluster_name(prefix, channel),
                             naming.cluster_channel(channel))
            for name in [keys.connections, naming.control_channel(prefix),
                         naming.reply_channel(prefix, "abc123")]:
                self.assertEqual({naming.shard_of(prefix, name, n) for n in (2, 3, 7)}, {0})
                self.assertEqual(naming.channel_of_cluster_channel(
                    naming.cluster_name(prefix, name)), name)

    def test_moved(self):
        self.assertEqual(moved("MOVED 3999 127.0.0.1:6381"), (3999, ("127.0.0.1", 6381)))
        self.assertEqual(moved("MOVED 1 [::1]:7000"), (1, ("::1", 7000)))
        self.assertIsNone(moved("ERR unknown command"))
        self.assertIsNone(moved("MOVED x y:z"))


#: Replies of real nodes (redis-server 7.0, captured from the test cluster): ``CLUSTER
#: SLOTS`` and the head of ``CLUSTER INFO`` of a three-primary cluster, of a node in no
#: cluster yet, and of a cluster of one (which does not know its own address).
SLOTS_OK = [
    [0, 5460, [b"127.0.0.1", 34131, b"9899036b6c639f9eb8a279a042a111dea9041107", []]],
    [5461, 10922, [b"127.0.0.1", 51771, b"1613d0534b4fae59a5289f829823ad88b9e13ff5", []]],
    [10923, 16383, [b"127.0.0.1", 51027, b"93acac83d3b1f06abd91454d4333b0f821cc2ad6", []]]]
INFO_OK = b"cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384"
SLOTS_LONE: list = []
INFO_LONE = b"cluster_state:fail\r\ncluster_slots_assigned:0\r\ncluster_slots_ok:0"
SLOTS_ONE = [[0, 16383, [b"", 37993, b"6593011226eb4548a6ce8d9aad69efb859f2dacf", []]]]


class ViewTests(unittest.SynchronousTestCase):
    """Which node's slot map is followed, and the addresses read from it (pure logic, on
    replies captured from real nodes)."""

    ok = ClusterView.of(("127.0.0.1", 34131), SLOTS_OK, INFO_OK)
    lone = ClusterView.of(("127.0.0.1", 37993), SLOTS_LONE, INFO_LONE)

    def test_theFirstNodeThatSaysOkIsFollowed(self):
        """A node that says fail asked first (cut off, or not in the cluster) is not
        followed when a later one says ok, and is named as dissenting."""
        chosen, dissent = choose_view([self.lone, self.ok])
        self.assertIs(chosen, self.ok)
        self.assertEqual(dissent, [self.lone])
        self.assertTrue(chosen.slots.complete)
        self.assertEqual(chosen.slots.nodes(), [("127.0.0.1", 34131), ("127.0.0.1", 51771),
                                                ("127.0.0.1", 51027)])

    def test_noneSaysOkIsDown(self):
        """Every node says fail: the first is followed, its reason is the cluster's, and
        nobody dissents."""
        chosen, dissent = choose_view([self.lone])
        self.assertIs(chosen, self.lone)
        self.assertEqual(dissent, [])
        self.assertEqual(chosen.down, "cluster down (cluster_state:fail): only 0 of 16384 "
                         "slots are served; give the others to a primary (redis-cli "
                         "--cluster fix)")

    def test_anEmptyHostIsTheNodeAsked(self):
        """A cluster of one names itself with an empty host: that is the node asked, never
        ``redis://:37993``."""
        view = ClusterView.of(("10.0.0.5", 37993), SLOTS_ONE, INFO_OK)
        self.assertEqual(view.slots.nodes(), [("10.0.0.5", 37993)])
        self.assertTrue(view.slots.complete)

    def test_aRangeWithoutAddressIsNotServed(self):
        """A master with an unknown endpoint (``?``), or no port, or an empty host from
        an unknown node: its range is as if unserved (nothing to connect to), the rest
        is kept."""
        reply = [[0, 5460, [b"?", 7000, b"a", []]],
                 [5461, 10922, [b"127.0.0.1", 0, b"b", []]],
                 [10923, 16383, [b"127.0.0.1", 51027, b"c", []]]]
        slots = SlotMap.from_cluster_slots(reply, ("127.0.0.1", 51027))
        self.assertEqual(slots.nodes(), [("127.0.0.1", 51027)])
        self.assertIsNone(slots.node_of_slot(0))
        self.assertFalse(slots.complete)
        self.assertEqual(SlotMap.from_cluster_slots(SLOTS_ONE).nodes(), [])


class _Listener:
    """A ClusterBroker's listener: its connection and messages, as Deferreds."""

    def __init__(self) -> None:
        self.connected: defer.Deferred[None] = defer.Deferred()
        self.messages: defer.DeferredQueue = defer.DeferredQueue()
        self.channels: list[str] = []

    def wantedChannels(self) -> list[str]:
        return self.channels

    def messageReceived(self, channel: str, payload: bytes) -> None:
        self.messages.put((channel, payload))

    def subscriptionRefused(self, channel: str, reason: str) -> None:
        raise AssertionError(f"refused {channel}: {reason}")

    def brokerConnected(self) -> None:
        if not self.connected.called:
            self.connected.callback(None)

    def brokerDisconnected(self) -> None:
        pass


class _ScriptedCluster(ClusterBroker):
    """A ClusterBroker whose slot map reads the test answers, whose primaries are up and
    connect nowhere: what it does with the slot map, on a Clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(RedisAddress(cluster_nodes=(("127.0.0.1", 7001),)),
                         reactor=MemoryReactorClock(), clock=clock, ping_interval=1.0)
        #: The reads of the slot map asked, in order, to be answered by the test.
        self.reads: list[defer.Deferred[Any]] = []

    def _clusterSlots(self, host: str, port: int) -> defer.Deferred[Any]:
        read: defer.Deferred[Any] = defer.Deferred()
        self.reads.append(read)
        return read

    def _adopt(self, key: Any, broker: Any) -> None:
        self.members[key] = _Primary()
        self._up[key] = True


class _Primary:
    """A primary's broker that is connected and notes what it subscribes."""

    connected = True

    def __init__(self) -> None:
        self.channels: set[str] = set()

    def subscribe(self, name: str) -> defer.Deferred[None]:
        self.channels.add(name)
        return defer.succeed(None)

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        self.channels.discard(name)
        return defer.succeed(None)


def _slots(*ranges: tuple[int, int, int]) -> tuple[list[Any], bytes]:
    """A CLUSTER SLOTS reply of (first, last, port) on 127.0.0.1, and a CLUSTER INFO."""
    return ([[first, last, [b"127.0.0.1", port, b"id%d" % port]]
             for first, last, port in ranges], b"cluster_state:ok\r\n")


class SlotMapReadTests(unittest.SynchronousTestCase):
    """When the cluster broker reads the slot map, on a Clock."""

    def test_aMoveHeardDuringAReadIsReadAgain(self):
        """A node says a channel's slot moved (its own sunsubscribe) while the slot map
        is being read: that read may have had its answer before the move, so another
        follows it at once and the channel goes to its new primary. The move used to be
        taken as answered by the read under way: the channel stayed deaf on its old
        primary until the next periodic read (a ping interval: 5 s by default)."""
        clock = Clock()
        broker = _ScriptedCluster(clock)
        name = broker.clusterName("ws4tx:broadcast:mover")
        slot = key_slot(name)
        before = _slots((0, 16383, 7001))
        after = _slots((0, slot - 1, 7001), (slot, slot, 7002), (slot + 1, 16383, 7001))
        listener = _Listener()
        listener.channels = ["ws4tx:broadcast:mover"]
        broker.start(listener)
        broker.reads[0].callback(before)
        old, new = ("127.0.0.1", 7001), ("127.0.0.1", 7002)
        broker.nodes[old].subscribe(name)  # subscribed on its primary
        clock.advance(1.0)  # the periodic read
        self.assertEqual(len(broker.reads), 2)
        heard = broker.refresh()  # as the node's own sunsubscribe asks
        self.assertEqual(len(broker.reads), 2)  # one read at a time
        broker.reads[1].callback(before)  # answered before the slot moved
        self.assertNoResult(heard)
        self.assertEqual(len(broker.reads), 3)
        broker.reads[2].callback(after)
        self.successResultOf(heard)
        self.assertEqual(broker.nodeFor("ws4tx:broadcast:mover"), new)
        self.assertEqual(broker.nodes[new].channels, {name})
        self.assertEqual(broker.nodes[old].channels, set())
        broker._refresher.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class _RealNodesCase(unittest.TestCase):
    """A ClusterBroker on real nodes the test starts."""

    def _lone(self, slots: bool):
        """A cluster-enabled node in no cluster, serving every slot or none."""
        node = Cluster._server()
        node.start()
        self.addCleanup(node.stop)
        if slots:
            with redis.Redis(port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            Cluster._until(lambda: Cluster._ok(node), "the cluster of one is ok")
        return node

    async def _broker(self, url: str) -> tuple[ClusterBroker, _Listener, list[str]]:
        lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace", "").startswith("ws4tx"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        broker = ClusterBroker(RedisAddress.from_url(url), reactor, ping_interval=1.0,
                               timeout=TIMEOUT)
        listener = _Listener()
        broker.start(listener)
        self.addCleanup(broker.stop)
        await listener.connected.addTimeout(TIMEOUT, reactor)
        return broker, listener, lines

    async def _delivers(self, broker: ClusterBroker, listener: _Listener) -> None:
        listener.channels.append("ws4tx:broadcast:views")
        await broker.subscribe("ws4tx:broadcast:views")
        self.assertEqual(await broker.publish("ws4tx:broadcast:views", b"hello"), 1)
        self.assertEqual(await listener.messages.get().addTimeout(TIMEOUT, reactor),
                         ("ws4tx:broadcast:views", b"hello"))



class ViewsOfRealNodesTests(_RealNodesCase):
    """The ClusterBroker on real nodes whose view is odd."""

    async def test_aClusterOfOneIsReachedWhereItWasAsked(self):
        """A cluster of one node names itself with an empty host in CLUSTER SLOTS: the
        broker connects where it asked (it used to try ``redis://:<port>``) and
        delivers."""
        node = self._lone(slots=True)
        broker, listener, lines = await self._broker(f"redis+cluster://127.0.0.1:{node.port}")
        self.assertEqual(list(broker.nodes), [("127.0.0.1", node.port)])
        await self._delivers(broker, listener)
        self.assertEqual([line for line in lines if "redis://:" in line], [])
        self.assertIsNone(broker.problem)

    async def test_aSeedThatSaysDownWhileAnotherSaysOkIsNamed(self):
        """The URL's first seed is a node in no cluster (it says cluster_state:fail and
        serves nothing); the next one says ok. The broker follows the one that says ok,
        is not down and delivers, and one warning names the odd node and how to check
        it."""
        stray = self._lone(slots=False)
        cluster = Cluster()
        cluster.start()
        self.addCleanup(cluster.stop)
        good = cluster.servers[0].port
        broker, listener, lines = await self._broker(
            f"redis+cluster://127.0.0.1:{stray.port},127.0.0.1:{good}")
        self.assertIsNone(broker.down)
        self.assertEqual(len(broker.nodes), 3)
        await self._delivers(broker, listener)
        await broker.refresh()
        warned = [line for line in lines if "cluster_state" in line]
        self.assertEqual(warned, [
            f"Redis Cluster node 127.0.0.1:{stray.port} says cluster_state:fail while "
            f"127.0.0.1:{good} says ok: 127.0.0.1:{stray.port} is cut off from the other "
            f"nodes or not in this cluster; following 127.0.0.1:{good} (check it: "
            f"redis-cli --cluster check 127.0.0.1:{stray.port})"])
        self.assertIsNone(broker.problem)


class ProbeMigrationTests(_RealNodesCase):
    """The delivery probe of a primary whose probe slot migrates away."""

    async def test_probeFollowsItsNodeWhenItsSlotMoves(self):
        """The slot of a primary's probe channel is given to another primary: the node
        unsubscribes the probe by itself; the broker puts it on a slot that primary
        still serves (it used to stay unsubscribed, every SPUBLISH of it answered MOVED),
        and a barrier (a probe through every primary) passes again."""
        cluster = Cluster()
        cluster.start()
        self.addCleanup(cluster.stop)
        broker, _, _ = await self._broker(f"redis+cluster://127.0.0.1:{cluster.servers[0].port}")
        await broker.barrier()
        source, target = cluster.servers[0], cluster.servers[1]
        node = broker.nodes[("127.0.0.1", source.port)]
        old = node._probe_channel
        moved_on: defer.Deferred[None] = defer.Deferred()

        def observe(event: dict) -> None:
            text = formatEvent(event)
            if not moved_on.called and ("probing on" in text or (
                    f"127.0.0.1:{source.port}" in text and " ready after " in text)):
                moved_on.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await threads.deferToThread(cluster.move_slot, key_slot(old), target)
        await moved_on.addTimeout(TIMEOUT, reactor)
        self.assertNotEqual(node._probe_channel, old)
        with cluster.client(source) as client:
            probes = client.execute_command("PUBSUB", "SHARDCHANNELS", "__ws4tx_probe__*")
        self.assertEqual(probes, [node._probe_channel.encode()])
        await broker.barrier()
        self.assertIsNone(broker.problem)


def _redis_cli_split(primaries: int) -> list[int]:
    """The first slot of each primary as ``redis-cli --cluster create`` splits them."""
    per, cursor, first, starts = 16384 / primaries, 0.0, 0, []
    for i in range(primaries):
        starts.append(first)
        last = 16383 if i == primaries - 1 else max(first, round(cursor + per - 1))
        first, cursor = last + 1, cursor + per
    return starts


def _partitions_per_range(slots: list[int], starts: list[int]) -> list[int]:
    """How many of ``slots`` each range gets, the ranges starting at ``starts`` (in order,
    the last one wrapping round to the first)."""
    counts = []
    for i, start in enumerate(starts):
        end = starts[(i + 1) % len(starts)]
        if start < end:
            counts.append(sum(start <= slot < end for slot in slots))
        else:
            counts.append(sum(slot >= start or slot < end for slot in slots))
    return counts


class ClusterTests(ClassCluster, unittest.TestCase):
    """A real cluster per test class (started once: it takes a few seconds)."""

    def slotMap(self) -> SlotMap:
        with self.cluster.client(self.cluster.servers[0]) as client:
            return SlotMap.from_cluster_slots(client.execute_command("CLUSTER", "SLOTS"))

    def server(self, node: Any):
        return next(s for s in self.cluster.servers if ("127.0.0.1", s.port) == node)

    async def subscriber(self, server: Any) -> Any:
        factory = _Factory()
        factory.convertNumbers = False
        factory.charset = None  # bytes, as the broker's connections
        factory.reconnect = False
        factory.messages = defer.DeferredQueue()
        factory.lost = defer.DeferredQueue()
        factory.startConnecting(HostnameEndpoint(reactor, "127.0.0.1", server.port))
        handler = await factory.deferred.addTimeout(TIMEOUT, reactor)
        self.addCleanup(factory.disconnect)
        return handler, factory

    def test_aCommandThatTimedOutIsNotSentAgain(self):
        """A command that timed out may have run (a publish stored and delivered): the
        cluster clients, sync and async, do not send it again, as redis-py's own cluster
        client does; a lost connection or a cluster that changed is still retried."""
        from redis import exceptions
        from redis.asyncio.cluster import RedisCluster as AsyncCluster

        from ws4tx import _async_redis, _sync_redis

        address = RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
        sync = _sync_redis._build(address, 1.0)
        self.addCleanup(sync.close)
        for built, base in ((sync, redis.RedisCluster),
                            (_async_redis._build(address, 1.0), AsyncCluster)):
            self.assertIsInstance(built, base)
            self.assertIn(exceptions.TimeoutError, base.ERRORS_ALLOW_RETRY)
            allowed = type(built).ERRORS_ALLOW_RETRY
            self.assertNotIn(exceptions.TimeoutError, allowed)
            self.assertIn(exceptions.ConnectionError, allowed)
            self.assertIn(exceptions.ClusterDownError, allowed)

    @settings(max_examples=200, deadline=None)
    @given(st.text(min_size=1, max_size=40))
    def test_keySlotIsRedisOwn(self, name):
        with self.cluster.client(self.cluster.servers[0]) as client:
            self.assertEqual(key_slot(name), client.execute_command("CLUSTER", "KEYSLOT", name))

    def test_slotMapAgreesWithRedisPy(self):
        slots = self.slotMap()
        self.assertTrue(slots.complete)
        self.assertEqual(len(slots.nodes()), 3)
        with self.cluster.cluster_client() as rc:
            for i in range(200):
                channel = f"ws4tx:user:u{i}:chat"
                node = rc.get_node_from_key(channel)
                self.assertEqual(slots.node_for(channel), (node.host, node.port))

    async def test_shardedPubSubOnTheChannelsNode(self):
        """A ShardSubscriberProtocol per node SSUBSCRIBEs the channels of its slots and
        gets what redis-py's cluster client SPUBLISHes, on the right channel; a channel
        of another node's slot is refused with MOVED naming that node."""
        slots = self.slotMap()
        channels = [f"ws4tx:user:u{i}:chat" for i in range(30)]
        subscribers = {node: await self.subscriber(self.server(node)) for node in slots.nodes()}
        for channel in channels:
            handler, _ = subscribers[slots.node_for(channel)]
            await handler.ssubscribe(channel).addTimeout(TIMEOUT, reactor)
        with self.cluster.cluster_client() as rc:
            for channel in channels:
                self.assertEqual(await threads.deferToThread(rc.spublish, channel, channel), 1)
        for channel in channels:
            _, factory = subscribers[slots.node_for(channel)]
            self.assertEqual(await factory.messages.get().addTimeout(TIMEOUT, reactor),
                             (channel.encode(), channel.encode()))
        channel = channels[0]
        right = slots.node_for(channel)
        wrong = next(node for node in slots.nodes() if node != right)
        handler, _ = subscribers[wrong]
        try:
            await handler.ssubscribe(channel).addTimeout(TIMEOUT, reactor)
        except txredisapi.ResponseError as e:
            self.assertEqual(moved(str(e)), (key_slot(channel), right))
        else:
            self.fail("subscribed on the wrong node")
        # the connection is still in step: the next command gets its own reply
        await handler.ssubscribe(channels[1] if slots.node_for(channels[1]) == wrong
                                 else next(c for c in channels
                                           if slots.node_for(c) == wrong)).addTimeout(
            TIMEOUT, reactor)

    async def test_oneSsubscribeForManyChannelsOfOneSlot(self):
        """ssubscribeMany: one command, every channel subscribed, and the connection
        still in step for the next command (txredisapi alone would hand the extra
        confirmations to it)."""
        slots = self.slotMap()
        name = naming.cluster_channel("ws4tx:broadcast:x")
        tag = name[:name.index("}") + 1]
        names = [f"{tag}ws4tx:user:u{i}:chat" for i in range(20)]
        self.assertEqual(len({key_slot(n) for n in names}), 1)
        server = self.server(slots.node_for(names[0]))
        handler, factory = await self.subscriber(server)
        with self.cluster.client(server) as client:
            before = client.info("commandstats").get("cmdstat_ssubscribe", {}).get("calls", 0)
            await handler.ssubscribeMany(names).addTimeout(TIMEOUT, reactor)
            reply = await handler.execute_command("PING").addTimeout(TIMEOUT, reactor)
            self.assertIn(b"pong", reply if isinstance(reply, list) else [reply.lower()])
            after = client.info("commandstats")["cmdstat_ssubscribe"]["calls"]
            self.assertEqual(after - before, 1)
            for name in names:
                client.execute_command("SPUBLISH", name, name)
        for name in names:
            self.assertEqual(await factory.messages.get().addTimeout(TIMEOUT, reactor),
                             (name.encode(), name.encode()))

    def test_aMovedSlotStaysWithItsNewOwner(self):
        """The tests move a slot as a migration ends: the new owner's config epoch is then
        above every other node's. Given to a node of a lower epoch without that, the slot
        went back now and then to its old owner in the new owner's eyes (a heartbeat the
        old owner sent before letting go arrived late), while the others said the new
        owner had it: every command on it was MOVED back and forth for good."""
        lowest, highest = self.cluster.servers[0], self.cluster.servers[2]
        slot = next(first for first, _, node in self.slotMap().ranges
                    if self.server(node) is highest)
        self.cluster.move_slot(slot, lowest)
        self.addCleanup(self.cluster.move_slot, slot, highest)

        def epoch(server: Any) -> int:
            with self.cluster.client(server) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
            return int(next(line.split(":")[1] for line in info.splitlines()
                            if line.startswith("cluster_my_epoch:")))

        others = [epoch(s) for s in self.cluster.servers if s is not lowest]
        self.assertGreater(epoch(lowest), max(others))
        self.assertEqual(self.server(self.slotMap().node_of_slot(slot)), lowest)

    async def test_aMovedSlotIsReportedAndFollowed(self):
        """A slot given to another node: the old node's subscriber hears the unasked
        sunsubscribe (shardChannelLost); subscribed again on the new owner, the channel
        delivers."""
        slots = self.slotMap()
        channel = "ws4tx:user:mover:chat"
        old = slots.node_for(channel)
        new = next(node for node in slots.nodes() if node != old)
        handler, factory = await self.subscriber(self.server(old))
        await handler.ssubscribe(channel).addTimeout(TIMEOUT, reactor)
        slot = key_slot(channel)
        await threads.deferToThread(self.cluster.move_slot, slot, self.server(new))
        self.addCleanup(self.cluster.move_slot, slot, self.server(old))
        self.assertEqual(await factory.lost.get().addTimeout(TIMEOUT, reactor), channel.encode())
        self.assertEqual(self.slotMap().node_for(channel), new)
        handler2, factory2 = await self.subscriber(self.server(new))
        await handler2.ssubscribe(channel).addTimeout(TIMEOUT, reactor)
        with self.cluster.client(self.server(new)) as client:
            self.assertEqual(await threads.deferToThread(
                client.execute_command, "SPUBLISH", channel, "after"), 1)
        self.assertEqual(await factory2.messages.get().addTimeout(TIMEOUT, reactor),
                         (channel.encode(), b"after"))


class _ClusterNodesCase(ClassCluster, unittest.TestCase):
    """Two ws4tx nodes and the Django side on a cluster the class starts."""

    def setUp(self) -> defer.Deferred[None]:
        from test._server import _autobahn_timers_fired

        self.addCleanup(_autobahn_timers_fired)
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        from ws4tx import _sync_redis

        from test._django import setup_django

        setup_django()
        self.address = RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
        _sync_redis.use_url(self.address.url)
        self.addCleanup(_sync_redis.reset)
        self.nodes = [await self.startNode(), await self.startNode()]

    async def startNode(self, **changes: Any) -> SimpleNamespace:
        from test._server import ServerTestCase, start_node

        config = ServerTestCase.config.replace(redis=self.address, presence=("pres",),
                                               **changes)
        self.assertEqual(config.redis_ping_interval, 1.0)  # the slot map is read as often
        node = await start_node(self, config)
        self.assertIsInstance(node.service.broker, ClusterBroker)
        return node

    async def on(self, node: SimpleNamespace, path: str, identity: str = "",
                 protocols: tuple[str, ...] = ()) -> WSClient:
        client = await connect(node.port, path, headers={"x-test-identity": identity}
                               if identity else None, protocols=protocols)
        self.addCleanup(client.close)
        await node.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return client

def _whenAllResumed(node: SimpleNamespace) -> defer.Deferred[None]:
    """Fires once every primary is back after each was lost (each reports its own
    channels resumed: a primary's return is not the whole broker's)."""
    router, broker = node.factory.node.router, node.service.broker
    done: defer.Deferred[None] = defer.Deferred()
    original = router.channelsResumed
    waiting = len(broker.nodes)

    def resumed(*args: Any) -> None:
        nonlocal waiting
        original(*args)
        waiting -= 1
        if waiting == 0 and broker.connected and not done.called:
            del router.channelsResumed
            done.callback(None)

    router.channelsResumed = resumed
    return done


@pytest.mark.system
class ClusterServerTests(ControlAcrossNodesContract, _ClusterNodesCase):
    """On a three-primary cluster (``redis+cluster://``)."""

    async def test_everyAudienceOnEveryPrimary(self):
        """Clients of three people on two nodes, on facilities whose channels fall on
        every primary: each gets exactly the messages of its audiences."""
        from ws4tx import _django_settings, api

        people = {"alice": ("staff",), "bob": ("staff", "ops"), "carol": ()}
        sessions = {name: _django_settings.session_channel(f"key-{name}") for name in people}
        flags = "subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
        facilities = [f"room{i}" for i in range(4)]
        clients = {}
        for f_index, facility in enumerate(facilities):
            for p_index, (name, groups) in enumerate(people.items()):
                clients[(facility, name)] = await self.on(
                    self.nodes[(f_index + p_index) % 2], f"/ws/{facility}?{flags}",
                    f"{name};{','.join(groups)};{sessions[name]}")
        broker = self.nodes[0].service.broker
        used = {broker.nodeFor(naming.channel("ws4tx", audience, f, n))
                for f in facilities for audience, n in
                [("user", p) for p in people] + [("group", "staff"), ("group", "ops")]
                + [("session", s) for s in sessions.values()]}
        self.assertEqual(len(used), 3)
        sends = [({"broadcast": True}, {"alice": 1, "bob": 1, "carol": 1}),
                 ({"users": ["alice", "carol"]}, {"alice": 1, "carol": 1}),
                 ({"groups": ["staff", "ops"]}, {"alice": 1, "bob": 2}),
                 ({"sessions": ["key-bob"]}, {"bob": 1}),
                 ({"users": ["nobody"]}, {})]
        expected: dict[Any, list[str]] = {key: [] for key in clients}
        for facility in facilities:
            for number, (audience, counts) in enumerate(sends):
                text = f"{facility}/{number}"
                await threads.deferToThread(api.publish, facility, text, expire=0, **audience)
                for name, times in counts.items():
                    expected[(facility, name)] += [text] * times
            await threads.deferToThread(
                api.publish, facility, "end", expire=0, broadcast=True, users=list(people),
                groups=["staff", "ops"], sessions=[f"key-{n}" for n in people])
        for (facility, name), client in clients.items():
            ends = 3 + len(people[name])  # broadcast, user, session, each group
            got = []
            while ends:
                text = await client.text()
                if text == "end":
                    ends -= 1
                else:
                    got.append(text)
            self.assertEqual(sorted(got), sorted(expected[(facility, name)]), (facility, name))

    async def test_storedMessageAndPresence(self):
        from django.test import override_settings

        from ws4tx import api

        await threads.deferToThread(api.publish, "kept", "stored", broadcast=True, expire=60)
        client = await self.on(self.nodes[1], "/ws/kept?subscribe-broadcast")
        self.assertEqual(await client.text(), "stored")
        with override_settings(WS4TX_PRESENCE=["pres"]):
            await self.on(self.nodes[0], "/ws/pres?subscribe-broadcast", "dora;;sd")
            found: list[Any] = []
            for _ in range(200):  # bounded: presence is written within a batch delay
                found = await threads.deferToThread(api.presence, "pres")
                if found:
                    break
                await _later(0.05)
            self.assertEqual([e["user"] for e in found], ["dora"])


    async def test_slotMigrationUnderPublishing(self):
        """The slot of a channel moves to another primary while the Django side publishes
        every 20 ms: both nodes follow it and delivery resumes (what is published while
        it moves may be lost: pub/sub is fire-and-forget)."""
        from ws4tx import api

        channel = naming.broadcast_channel("ws4tx", "mover")
        clients = [await self.on(node, "/ws/mover?subscribe-broadcast") for node in self.nodes]
        broker = self.nodes[0].service.broker
        old = broker.nodeFor(channel)
        new = next(n for n in broker.slots.nodes() if n != old)
        server = {("127.0.0.1", s.port): s for s in self.cluster.servers}
        sent = [0]
        stop = [False]

        def publish_loop() -> None:
            import time

            while not stop[0]:
                sent[0] += 1
                try:
                    api.publish("mover", f"m{sent[0]}", broadcast=True, expire=0)
                except Exception:  # noqa: BLE001 - counted as lost, the loop goes on
                    pass
                time.sleep(0.02)

        loop = threads.deferToThread(publish_loop)
        self.addCleanup(lambda: stop.__setitem__(0, True) or loop)
        for client in clients:
            self.assertTrue((await client.text()).startswith("m"))
        slot = key_slot(naming.cluster_channel(channel))
        await threads.deferToThread(self.cluster.move_slot, slot, server[new])
        self.addCleanup(self.cluster.move_slot, slot, server[old])
        moved_at = sent[0]
        for client in clients:
            while int((await client.text(timeout=20.0))[1:]) <= moved_at + 5:
                pass
        for node in self.nodes:
            self.assertEqual(node.service.broker.nodeFor(channel), new)
        stop[0] = True
        await loop


    async def test_resubscriptionTakesOneCommandPerPartition(self):
        """A client of 300 group channels on each node; every subscriber connection
        killed (CLIENT KILL TYPE pubsub): the nodes resubscribe with one SSUBSCRIBE per
        partition and primary, far fewer than channels, and deliver again."""
        from ws4tx import api

        groups = [f"g{i}" for i in range(300)]
        identity = f"kim;{','.join(groups)};sk"
        clients = [await self.on(node, "/ws/many?subscribe-group", identity)
                   for node in self.nodes]

        def calls() -> int:
            total = 0
            for server in self.cluster.servers:
                with self.cluster.client(server) as client:
                    stats = client.info("commandstats")
                total += stats.get("cmdstat_ssubscribe", {}).get("calls", 0)
            return total

        before = await threads.deferToThread(calls)

        def kill() -> None:
            for server in self.cluster.servers:
                with self.cluster.client(server) as client:
                    client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        back = [_whenAllResumed(node) for node in self.nodes]
        await threads.deferToThread(kill)
        for d in back:
            await d.addTimeout(TIMEOUT, reactor)
        commands = await threads.deferToThread(calls) - before
        channels = 2 * (len(groups) + 2)  # and the control and probe channels
        self.assertLess(commands, channels / 2)
        self.assertLessEqual(commands, 2 * (naming.CLUSTER_PARTITIONS + 3 * 2))
        await threads.deferToThread(api.publish, "many", "again", groups=["g7"], expire=0)
        for client in clients:
            self.assertEqual(await client.text(), "again")
        print(f"\nresubscribed {channels} channel subscriptions with {commands} SSUBSCRIBE")

    async def test_historyOnThePartitionsSlot(self):
        """A facility with history: the Django side and a node publish through the one
        script (keys and channel on the partition's slot, SPUBLISH inside); a client gets
        the bare payloads live; both halves read the same history."""
        from django.test import override_settings

        from ws4tx import api, history

        retention = history.Retention(5, 60)
        node = await self.startNode(history={"hist": {"size": 5, "ttl": 60}})
        client = await self.on(node, "/ws/hist?subscribe-broadcast")
        channel = naming.broadcast_channel("ws4tx", "hist")
        with override_settings(WS4TX_HISTORY={"hist": {"size": 5, "ttl": 60}}):
            for text in ("one", "two"):
                await threads.deferToThread(api.publish, "hist", text, broadcast=True)
                self.assertEqual(await client.text(), text)
            published = await node.service.broker.publishWithHistory(
                channel, b"three", retention)
            self.assertEqual(published.position.offset, 3)
            self.assertEqual(await client.text(), "three")
            found = await threads.deferToThread(api.history, "hist", broadcast=True)
        self.assertEqual([p.payload for p in found.publications], [b"one", b"two", b"three"])
        read = await node.service.broker.history(channel, retention, since=1)
        self.assertEqual([p.payload for p in read.publications], [b"two", b"three"])
        stream, meta = naming.cluster_history_keys("ws4tx", channel)
        self.assertEqual({key_slot(stream), key_slot(meta)},
                         {key_slot(naming.cluster_channel(channel))})

    async def test_reconnectRecoversTheMissedOnes(self):
        """An event client that comes back with its position gets exactly what it
        missed, read from the cluster's history keys, and is told it recovered."""
        from django.test import override_settings

        from ws4tx import api

        node = await self.startNode(history={"again": {"size": 5, "ttl": 60}})
        channel = naming.broadcast_channel("ws4tx", "again")
        events = (envelope.SUBPROTOCOL,)
        with override_settings(WS4TX_HISTORY={"again": {"size": 5, "ttl": 60}}):
            first = await self.on(node, "/ws/again?subscribe-broadcast", "", events)
            await threads.deferToThread(api.publish, "again", "seen", broadcast=True)
            seen = json.loads(await first.text())
            if seen.get("event") == envelope.POSITIONS_EVENT:  # where it stood: offset 0
                seen = json.loads(await first.text())
            await first.close()
            for i in range(3):
                await threads.deferToThread(api.publish, "again", f"missed {i}",
                                            broadcast=True)
            back = await self.on(
                node, f"/ws/again?subscribe-broadcast&recover={channel}:{seen['epoch']}:"
                f"{seen['offset']}", "", events)
            got = [json.loads(await back.text()) for _ in range(3)]
            self.assertEqual([(f["offset"], f["data"]) for f in got],
                             [(2, "missed 0"), (3, "missed 1"), (4, "missed 2")])
            recovered = json.loads(await back.text())
            self.assertEqual(recovered["event"], envelope.RECOVERED_EVENT)
            self.assertTrue(recovered["data"]["recovered"])

    async def test_disconnectReachesEveryNode(self):
        """The site's commands travel on the control channel (SPUBLISH on its slot):
        disconnect() closes the user's connections on both nodes, and only theirs."""
        from ws4tx import api, closecodes

        gina = [await self.on(node, "/ws/chat?subscribe-user", "gina;;sg")
                for node in self.nodes]
        hank = await self.on(self.nodes[0], "/ws/chat?subscribe-user", "hank;;sh")
        self.assertEqual(await threads.deferToThread(api.disconnect, users=["gina"]), 2)
        for client in gina:
            code, _ = await client.closed.addTimeout(TIMEOUT, reactor)
            self.assertEqual(code, closecodes.CLOSED_BY_SITE)
        await threads.deferToThread(api.publish, "chat", "still here", users=["hank"],
                                    expire=0)
        self.assertEqual(await hank.text(), "still here")

    async def test_anUnreachableClusterIsAPublishError(self):
        """Django's calls on a cluster that cannot be reached raise the documented
        PublishError (naming the address), not redis-py's RedisClusterException."""
        from ws4tx import _sync_redis, api
        from ws4tx.redis_store import PublishError
        from ws4tx.server.embedded import free_port

        _sync_redis.use_url(f"redis+cluster://127.0.0.1:{free_port()}")
        for call in (api.info, api.channels, lambda: api.disconnect(users=["x"]),
                     lambda: api.publish("chat", "x", broadcast=True)):
            with self.assertRaisesRegex(PublishError, "127.0.0.1"):
                await threads.deferToThread(call)

    async def test_publishFollowsMoved(self):
        """A node publishes (and stores) on a channel whose slot moved without it
        knowing (nobody here listens to it): the old primary answers MOVED, the node reads
        the map again and publishes on the new one."""
        channel = naming.broadcast_channel("ws4tx", "quiet")
        broker = self.nodes[0].service.broker
        old = broker.nodeFor(channel)
        new = next(n for n in broker.slots.nodes() if n != old)
        server = {("127.0.0.1", s.port): s for s in self.cluster.servers}
        name = naming.cluster_channel(channel)
        slot = key_slot(name)
        await threads.deferToThread(self.cluster.move_slot, slot, server[new])
        self.addCleanup(self.cluster.move_slot, slot, server[old])
        self.assertEqual(broker.nodeFor(channel), old)  # stale until told
        self.assertEqual(await broker.publish(channel, b"after the move", 60), 0)
        self.assertEqual(broker.nodeFor(channel), new)
        with self.cluster.client(server[new]) as client:
            self.assertEqual(client.get(name), b"after the move")
            client.delete(name)  # a slot that holds keys cannot be given back

    def test_configurationRefusals(self):
        """A cluster may be one shard among others, but none of its nodes another
        shard (test_sharding.ClusterShardTests runs such a list)."""
        from ws4tx.redis_address import InvalidRedisAddress, parse_list

        self.assertEqual(len(parse_list([self.address.url, "redis://other:6379/0"], "x")), 2)
        node = self.address.cluster_nodes[0]
        with self.assertRaisesRegex(InvalidRedisAddress, "is in shard 1 and in shard 2"):
            parse_list([self.address.url, f"redis://{node[0]}:{node[1]}/0"], "x")
        for bad in ("redis+cluster://", "redis+cluster://h:1/2", "redis+cluster://h:1?db=0"):
            self.assertRaises(InvalidRedisAddress, RedisAddress.from_url, bad)


    async def test_twistdWithAClusterURL(self):
        """``twistd ws4tx --redis redis+cluster://…`` connects to every primary and
        delivers what redis-py's cluster client SPUBLISHes."""
        from ws4tx.server.embedded import free_port

        from test._process import Twistd

        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--redis", self.address.url)
        self.addCleanup(child.stop, "KILL")
        await child.waitFor("(?s)" + ".*".join(["Redis subscriber connected"] * 3))
        client = await connect(port, "/ws/viatwistd?subscribe-broadcast")
        self.addCleanup(client.close)
        channel = naming.broadcast_channel("ws4tx", "viatwistd")
        with self.cluster.cluster_client() as rc:
            for _ in range(100):  # bounded: until the subscription is in place
                if await threads.deferToThread(rc.spublish, naming.cluster_channel(channel),
                                               "hello"):
                    break
                await _later(0.05)
        self.assertEqual(await client.text(), "hello")
        self.assertEqual(await child.stop("TERM"), 0, child.output[-3000:])


@pytest.mark.system
class ClusterFailoverTests(_ClusterNodesCase):
    """On a cluster whose first primary has a replica."""

    replica = True

    async def test_primaryKilledUnderPublishing(self):
        """SIGKILL the primary of a channel while the Django side publishes every 50 ms:
        its event clients (on both nodes) are told ws4tx.interrupted, then, once the
        replica is promoted and found in the slot map, ws4tx.resumed, and messages flow
        again; a channel of another primary is not interrupted."""
        from ws4tx import api

        first = ("127.0.0.1", self.cluster.servers[0].port)
        broker = self.nodes[0].service.broker
        facility = next(f"f{i}" for i in range(1000)
                        if broker.nodeFor(naming.broadcast_channel("ws4tx", f"f{i}")) == first)
        other = next(f"o{i}" for i in range(1000)
                     if broker.nodeFor(naming.broadcast_channel("ws4tx", f"o{i}")) != first)
        events = (envelope.SUBPROTOCOL,)
        clients = [await self.on(node, f"/ws/{facility}?subscribe-broadcast", "erin;;se",
                                 events) for node in self.nodes]
        bystander = await self.on(self.nodes[0], f"/ws/{other}?subscribe-broadcast",
                                  "fred;;sf", events)
        sent, stop = [0], [False]

        def publish_loop() -> None:
            while not stop[0]:
                sent[0] += 1
                try:
                    api.publish(facility, f"m{sent[0]}", broadcast=True, expire=0)
                except Exception:  # noqa: BLE001 - lost while there is no primary
                    pass
                time.sleep(0.05)

        loop = threads.deferToThread(publish_loop)
        self.addCleanup(lambda: stop.__setitem__(0, True) or loop)
        for client in clients:
            self.assertTrue((await client.text()).startswith("m"))
        killed = time.monotonic()
        self.cluster.servers[0].stop(signal.SIGKILL)
        for client in clients:
            self.assertEqual(await _event(client, 20.0), envelope.INTERRUPTED_EVENT)
        for client in clients:
            self.assertEqual(await _event(client, 30.0), envelope.RESUMED_EVENT)
        resumed_at = sent[0]
        for client in clients:
            while int((await client.text(timeout=20.0))[1:]) <= resumed_at:
                pass
        delivering = time.monotonic() - killed
        replica = ("127.0.0.1", self.cluster.replica.port)
        for node in self.nodes:
            self.assertEqual(node.service.broker.nodeFor(
                naming.broadcast_channel("ws4tx", facility)), replica)
        await threads.deferToThread(api.publish, other, "unbothered", broadcast=True,
                                    expire=0)
        self.assertEqual(await bystander.text(), "unbothered")  # no event came first
        stop[0] = True
        await loop
        print(f"\ncluster failover: delivering through the promoted replica "
              f"{delivering:.1f} s after the kill")


async def _event(client: WSClient, timeout: float) -> str:
    """The next ws4tx event's name (skipping raw messages)."""
    while True:
        frame = await client.text(timeout=timeout)
        if frame.startswith('{"ws4tx"'):
            return str(json.loads(frame)["event"])


def _later(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
