"""Redis Cluster building blocks (ws4tx.server.cluster), against a real three-primary
cluster: hash slots as Redis computes them, the slot map, sharded pub/sub on txredisapi
(SSUBSCRIBE, smessage, MOVED) and a slot that moves under a subscriber."""

from __future__ import annotations

from typing import Any

import txredisapi
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import HostnameEndpoint
from twisted.trial import unittest

from ws4tx import naming
from ws4tx.server.cluster import ShardSubscriberProtocol, SlotMap, moved
from ws4tx.sharding import key_slot

from test._cluster import Cluster
from test._wsclient import TIMEOUT


class _Recorder(ShardSubscriberProtocol):
    def shardMessageReceived(self, channel: bytes, message: bytes) -> None:
        self.factory.messages.put((channel, message))

    def shardChannelLost(self, channel: bytes) -> None:
        self.factory.lost.put(channel)


class _Factory(txredisapi.SubscriberFactory):
    protocol = _Recorder


class PureTests(unittest.SynchronousTestCase):
    def test_keySlotKnownValuesAndTags(self):
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("123456789"), 0x31C3 % 16384)
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("foo{}{bar}"), key_slot(b"foo{}{bar}"))
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        stream, meta = naming.history_keys("ws4tx", "ws4tx:user:john:chat")
        self.assertEqual(key_slot(stream), key_slot(meta))

    def test_moved(self):
        self.assertEqual(moved("MOVED 3999 127.0.0.1:6381"), (3999, ("127.0.0.1", 6381)))
        self.assertEqual(moved("MOVED 1 [::1]:7000"), (1, ("::1", 7000)))
        self.assertIsNone(moved("ERR unknown command"))
        self.assertIsNone(moved("MOVED x y:z"))


class ClusterTests(unittest.TestCase):
    """A real cluster per test class (started once: it takes a few seconds)."""

    cluster: Cluster

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster()
        try:
            cls.cluster.start()
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

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
