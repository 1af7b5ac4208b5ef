"""The hub and the router, over the in-memory broker: routing without sockets or Redis."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ws4tx.hub import Hub
from ws4tx.router import Router, is_text
from ws4tx.testing import MemoryBroker, MemoryBus


class HubTests(SynchronousTestCase):
    """The hub counts members per channel."""

    def test_joinReportsOnlyNewChannels(self):
        """join() returns the channels that had no member before."""
        hub: Hub[str] = Hub()
        self.assertEqual(hub.join("a", ["x", "y"]), ["x", "y"])
        self.assertEqual(hub.join("b", ["y", "z", "z"]), ["z"])
        self.assertEqual(set(hub.members("y")), {"a", "b"})
        self.assertEqual(hub.channels_of("b"), ("y", "z"))

    def test_leaveReportsOnlyEmptiedChannels(self):
        """leave() returns the channels left without members, once."""
        hub: Hub[str] = Hub()
        hub.join("a", ["x", "y"])
        hub.join("b", ["y"])
        self.assertEqual(hub.leave("a"), ["x"])
        self.assertEqual(hub.leave("a"), [])
        self.assertEqual(hub.leave("b"), ["y"])
        self.assertEqual(list(hub.channels()), [])
        self.assertEqual(len(hub), 0)

    def test_joiningTwiceIsAnError(self):
        """A client joins once, with all its channels."""
        hub: Hub[str] = Hub()
        hub.join("a", ["x"])
        self.assertRaises(ValueError, hub.join, "a", ["y"])


class FakeClient:
    def __init__(self) -> None:
        self.frames: list = []
        self.interruptions = 0
        self.resumptions = 0

    def deliver(self, prepared, channel, payload) -> None:
        self.frames.append(prepared)

    def deliveryInterrupted(self) -> None:
        self.interruptions += 1

    def deliveryResumed(self) -> None:
        self.resumptions += 1


class RouterTests(SynchronousTestCase):
    """The router keeps the broker's subscriptions equal to the hub's channels."""

    def setUp(self) -> None:
        self.prepared: list = []
        self.broker = MemoryBroker()
        self.router = Router(self.broker, self.prepare)
        self.broker.start(self.router)

    def prepare(self, payload: bytes, binary: bool):
        frame = ("frame", payload, binary)
        self.prepared.append(frame)
        return frame

    def test_subscribeOnFirstUnsubscribeOnLast(self):
        """The broker subscribes when the first client joins and unsubscribes after the last."""
        a, b = FakeClient(), FakeClient()
        self.router.join(a, ["ch"])
        self.router.join(b, ["ch"])
        self.assertEqual(self.broker.subscribed, {"ch"})
        self.router.leave(a)
        self.assertEqual(self.broker.subscribed, {"ch"})
        self.router.leave(b)
        self.assertEqual(self.broker.subscribed, set())

    def test_frameBuiltOncePerMessage(self):
        """A message to N clients is prepared once and the same frame goes to all."""
        clients = [FakeClient() for _ in range(50)]
        for c in clients:
            self.router.join(c, ["ch"])
        self.broker.bus.publish("ch", b"hello")
        self.assertEqual(self.prepared, [("frame", b"hello", False)])
        self.assertTrue(all(c.frames == [self.prepared[0]] for c in clients))

    def test_binaryPayloadPreparedAsBinary(self):
        """A payload that is not UTF-8 is prepared as a binary frame."""
        self.router.join(FakeClient(), ["ch"])
        self.broker.bus.publish("ch", b"\xff")
        self.assertEqual(self.prepared, [("frame", b"\xff", True)])
        self.assertTrue(is_text("héllo".encode()))
        self.assertFalse(is_text(b"\xc3"))

    def test_oversizedMessageIsDroppedAndCounted(self):
        """A message over the outgoing limit reaches nobody and is counted."""
        small = Router(self.broker, self.prepare, max_size=4)
        client = FakeClient()
        small.join(client, ["ch"])
        small.messageReceived("ch", b"12345")
        small.messageReceived("ch", b"1234")
        self.assertEqual(len(client.frames), 1)
        self.assertEqual(small.stats["oversized"], 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_messageForNobodyIsNotPrepared(self):
        """A message on a channel without local members builds no frame."""
        self.router.messageReceived("nobody", b"x")
        self.assertEqual(self.prepared, [])

    def test_resubscribesFromTheHubAfterReconnect(self):
        """After an outage the broker subscribes again to exactly the hub's channels, and
        clients are told delivery was interrupted and resumed."""
        a, b = FakeClient(), FakeClient()
        self.router.join(a, ["x", "y"])
        self.router.join(b, ["y"])
        self.broker.disconnect()
        self.assertEqual(self.broker.subscribed, set())
        self.router.leave(a)  # leaves while down: x is no longer wanted
        self.broker.reconnect()
        self.assertEqual(self.broker.subscribed, {"y"})
        self.assertEqual((b.interruptions, b.resumptions), (1, 1))

    def test_joinWhileDownIsSubscribedOnReconnect(self):
        """A channel joined during an outage is subscribed once the broker is back."""
        self.broker.disconnect()
        a = FakeClient()
        d = self.router.join(a, ["late"])
        self.successResultOf(d)  # a failed subscribe does not fail the join
        self.broker.reconnect()
        self.broker.bus.publish("late", b"here")
        self.assertEqual(len(a.frames), 1)

    def test_twoNodesOnOneBus(self):
        """Two routers on one bus (two ws4tx nodes on one Redis) both deliver."""
        other_broker = MemoryBroker(self.broker.bus)
        other = Router(other_broker, self.prepare)
        other_broker.start(other)
        here, there = FakeClient(), FakeClient()
        self.router.join(here, ["ch"])
        other.join(there, ["ch"])
        self.assertEqual(self.broker.bus.publish("ch", b"m"), 2)
        self.assertEqual((len(here.frames), len(there.frames)), (1, 1))


class MemoryBrokerTests(SynchronousTestCase):
    """The in-memory broker stores and expires like Redis, on its clock."""

    def test_storedMessageExpires(self):
        """publish with expire stores the message until the clock passes the expiry."""
        bus = MemoryBus()
        broker = MemoryBroker(bus)
        broker.start(Router(broker, lambda p, b: p))
        self.successResultOf(broker.publish("k", b"v", expire=10))
        self.assertEqual(self.successResultOf(broker.fetch("k")), b"v")
        bus.clock.advance(10)
        self.assertIsNone(self.successResultOf(broker.fetch("k")))
