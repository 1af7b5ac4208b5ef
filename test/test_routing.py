"""The hub and the router, over the in-memory broker: routing without sockets or Redis."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import closecodes
from ws4tx.server import router as router_module
from ws4tx.server.broker import BrokerUnavailable, SubscriptionRefused
from ws4tx.server.hub import Hub
from ws4tx.server.router import Router, is_text
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

    def test_membersAcrossOneAndMany(self):
        """A channel's members are right as it goes from one member to three and back
        (by leaving and by leaving channels)."""
        hub: Hub[str] = Hub()
        hub.join("a", ("x", "y"))
        one = hub.members("x")
        self.assertEqual((set(one), len(one), "a" in one, "b" in one),
                         ({"a"}, 1, True, False))
        hub.join("b", ["x"])
        hub.join("c", ["x"])
        self.assertEqual(set(hub.members("x")), {"a", "b", "c"})
        self.assertEqual(hub.leave_channels("a", ["x"]), [])
        self.assertEqual(hub.leave("b"), [])
        self.assertEqual((set(hub.members("x")), len(hub.members("x"))), ({"c"}, 1))
        self.assertEqual(hub.leave("c"), ["x"])
        self.assertEqual((set(hub.members("x")), hub.channels_of("a")), (set(), ("y",)))
        self.assertEqual(hub.leave("a"), ["y"])
        self.assertEqual(list(hub.channels()), [])

    def test_joiningTwiceIsAnError(self):
        """A client joins once, with all its channels."""
        hub: Hub[str] = Hub()
        hub.join("a", ["x"])
        self.assertRaises(ValueError, hub.join, "a", ["y"])


class FakeClient:
    def __init__(self) -> None:
        self.frames: list = []
        #: The length of each run it was handed (messages of one read, at once).
        self.runs: list[int] = []
        self.interruptions = 0
        self.resumptions = 0
        self.dropped: list[int] = []

    def deliver(self, prepared, channel, payload) -> None:
        self.frames.append(prepared)

    def deliverRun(self, run, channel) -> None:
        self.runs.append(len(run.items))
        for prepared, payload in run.items:
            self.deliver(prepared, channel, payload)

    def deliveryInterrupted(self) -> None:
        self.interruptions += 1

    def deliveryResumed(self) -> None:
        self.resumptions += 1

    def messagesDropped(self, count: int) -> None:
        self.dropped.append(count)

    def closeWith(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class SlowBroker(MemoryBroker):
    """A memory broker whose SUBSCRIBEs stay in flight until the test answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight: list[tuple[str, defer.Deferred[None]]] = []

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.inflight.append((channel, d))
        return d


class RouterTests(SynchronousTestCase):
    """The router keeps the broker's subscriptions equal to the hub's channels."""

    def setUp(self) -> None:
        self.prepared: list = []
        self.clock = Clock()
        # one clock for the router and the bus: advancing it delivers what was published
        self.broker = MemoryBroker(MemoryBus(self.clock))
        self.router = Router(self.broker, self.prepare, clock=self.clock)
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
        self.clock.advance(0)
        self.assertEqual(self.prepared, [("frame", b"hello", False)])
        self.assertTrue(all(c.frames == [self.prepared[0]] for c in clients))

    def test_binaryPayloadPreparedAsBinary(self):
        """A payload that is not UTF-8 is prepared as a binary frame."""
        self.router.join(FakeClient(), ["ch"])
        self.broker.bus.publish("ch", b"\xff")
        self.clock.advance(0)
        self.assertEqual(self.prepared, [("frame", b"\xff", True)])
        self.assertTrue(is_text("héllo".encode()))
        self.assertFalse(is_text(b"\xc3"))

    def test_oversizedMessageIsDroppedAndCounted(self):
        """A message over the outgoing limit reaches nobody and is counted."""
        small = Router(self.broker, self.prepare, max_size=4, clock=self.clock)
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
        self.clock.advance(0)
        self.assertEqual(len(a.frames), 1)

    def test_twoNodesOnOneBus(self):
        """Two routers on one bus (two ws4tx nodes on one Redis) both deliver."""
        other_broker = MemoryBroker(self.broker.bus)
        other = Router(other_broker, self.prepare, clock=self.clock)
        other_broker.start(other)
        here, there = FakeClient(), FakeClient()
        self.router.join(here, ["ch"])
        other.join(there, ["ch"])
        self.assertEqual(self.broker.bus.publish("ch", b"m"), 2)
        self.clock.advance(0)
        self.assertEqual((len(here.frames), len(there.frames)), (1, 1))


class InFlightTests(SynchronousTestCase):
    """A join is subscribed only once the channel's SUBSCRIBE is answered, whoever sent it."""

    def setUp(self) -> None:
        self.broker = SlowBroker()
        self.router = Router(self.broker, lambda p, b: p, clock=Clock())
        self.broker.start(self.router)

    def test_secondJoinWaitsForTheSubscribeInFlight(self):
        """B joins while A's SUBSCRIBE is in flight: neither is told it is subscribed
        before the SUBSCRIBE is answered; both are after."""
        a, b = FakeClient(), FakeClient()
        da = self.router.join(a, ["ch"])
        db = self.router.join(b, ["ch"])
        self.assertEqual([c for c, _ in self.broker.inflight], ["ch"])
        self.assertEqual((da.called, db.called), (False, False))
        self.broker.inflight[0][1].callback(None)
        self.assertEqual((da.called, db.called), (True, True))
        # the channel is subscribed now: a third join is told at once
        self.assertTrue(self.router.join(FakeClient(), ["ch"]).called)

    def test_failedSubscribeReleasesTheWaitingJoins(self):
        """A SUBSCRIBE that fails (Redis down) releases every join waiting for it; the
        channel is resubscribed on reconnection."""
        a, b = FakeClient(), FakeClient()
        da = self.router.join(a, ["ch"])
        db = self.router.join(b, ["ch", "other"])
        self.broker.inflight[0][1].errback(BrokerUnavailable("down"))
        self.successResultOf(da)
        self.assertNoResult(db)  # "other" is still in flight
        self.broker.inflight[1][1].callback(None)
        self.successResultOf(db)

    def test_refusedSubscriptionClosesOnlyThatChannelsClients(self):
        """A refused SUBSCRIBE closes the channel's clients with SUBSCRIPTION_REFUSED and
        a clear reason, logs a warning, and leaves other channels' clients alone."""
        a, b, other = FakeClient(), FakeClient(), FakeClient()
        self.router.join(a, ["secret"])
        self.router.join(b, ["secret"])
        self.router.join(other, ["fine"])
        with capturedLogs() as logged:
            self.broker.inflight[0][1].errback(SubscriptionRefused("secret", "NOPERM no"))
        self.broker.inflight[1][1].callback(None)
        expected = (closecodes.SUBSCRIPTION_REFUSED, "subscription refused by Redis")
        self.assertEqual((a.closed, b.closed), (expected, expected))
        self.assertFalse(hasattr(other, "closed"))
        self.assertEqual([e["log_level"].name for e in logged], ["warn"])
        self.assertEqual(self.router.stats["refused"], 1)

    def test_refusedResubscriptionClosesThatChannelsClients(self):
        """The broker reports a channel refused at resubscription: same treatment."""
        a = FakeClient()
        self.router.join(a, ["secret"])
        self.router.subscriptionRefused("secret", "NOPERM no")
        self.assertEqual(a.closed[0], closecodes.SUBSCRIPTION_REFUSED)


def one_turn(clock: Clock) -> None:
    """Run the calls due now, not those they schedule: one iteration of a real reactor
    (``Clock.advance`` would also run what the calls schedule for now)."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


class BacklogTests(SynchronousTestCase):
    """Fan-out is bounded per reactor turn, and a backlog the server cannot work off is
    dropped loudly (counted, logged, clients told), never silently."""

    def setUp(self) -> None:
        self.patch(router_module, "FRAMES_PER_TURN", 4)
        # One message per run (runs are below: test_waitingMessagesGoInRuns).
        self.patch(router_module, "RUN_BYTES", 1)
        self.clock = Clock()
        self.router = Router(MemoryBroker(), lambda p, b: p, clock=self.clock,
                             max_lag=2.0, max_backlog=5)
        self.clients = [FakeClient(), FakeClient()]
        for client in self.clients:
            self.router.join(client, ["ch"])

    def test_workPerTurnIsBounded(self):
        """Past the frame budget of a turn, messages wait for the next turn, in order."""
        for n in range(5):
            self.router.messageReceived("ch", b"%d" % n)
        self.assertEqual(self.clients[0].frames, [b"0", b"1"])
        self.assertEqual(self.router.backlog, 3)
        one_turn(self.clock)
        self.assertEqual(self.clients[0].frames, [b"0", b"1", b"2", b"3"])
        one_turn(self.clock)
        self.assertEqual(self.clients[1].frames, [b"0", b"1", b"2", b"3", b"4"])
        self.assertEqual((self.router.backlog, self.router.stats["lagged"]), (0, 0))
        one_turn(self.clock)  # resets the budget, schedules nothing more
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lateMessagesAreDroppedCountedAndReported(self):
        """A message that waited over max_lag is dropped; each client is told how many
        it missed once the server has caught up, and the episode is logged."""
        with capturedLogs() as logged:
            for n in range(4):
                self.router.messageReceived("ch", b"%d" % n)
            # The reactor comes back to the backlog 2.5 s later (busy elsewhere): the two
            # waiting messages are too old by then.
            self.clock.advance(2.5)
            self.router.messageReceived("ch", b"fresh")
            self.clock.advance(0)
        self.assertEqual(self.clients[0].frames, [b"0", b"1", b"fresh"])
        self.assertEqual(self.router.stats["lagged"], 2)
        self.assertEqual(self.router.stats["lagged_frames"], 4)
        self.assertEqual([c.dropped for c in self.clients], [[2], [2]])
        texts = [e["log_format"] for e in logged]
        self.assertEqual(len(texts), 2, texts)
        self.assertIn("falling behind", texts[0])
        self.assertIn("caught up", texts[1])

    def test_waitingMessagesGoInRuns(self):
        """What waits in the backlog goes out in runs: each client gets a channel's
        consecutive waiting messages at once, up to RUN_BYTES of them, in order; a
        run that started is written whole, past the turn's budget."""
        self.patch(router_module, "RUN_BYTES", 3)
        for n in range(2 + 5):
            self.router.messageReceived("ch", b"%d" % n)
        self.router.messageReceived("other", b"x")  # nobody listens: dropped at once
        one_turn(self.clock)
        self.assertEqual(self.clients[0].runs, [3])
        self.assertEqual(self.clients[0].frames, [b"0", b"1", b"2", b"3", b"4"])
        one_turn(self.clock)
        self.assertEqual(self.clients[1].runs, [3, 2])
        self.assertEqual(self.clients[1].frames, [b"%d" % n for n in range(7)])
        self.assertEqual(self.router.stats["frames"], 14)

    def test_backlogIsBoundedInMessages(self):
        """Past max_backlog waiting messages the oldest is dropped and counted."""
        for n in range(2 + 7):
            self.router.messageReceived("ch", b"%d" % n)
        self.assertEqual(self.router.backlog, 5)
        self.assertEqual(self.router.stats["lagged"], 2)
        self.clock.advance(0)
        self.assertEqual(self.clients[0].frames, [b"0", b"1", b"4", b"5", b"6", b"7", b"8"])
        self.assertEqual(self.clients[0].dropped, [2])


class MemoryBrokerTests(SynchronousTestCase):
    """The in-memory broker stores and expires like Redis, on its clock."""

    def test_storedMessageExpires(self):
        """publish with expire stores the message until the clock passes the expiry."""
        bus = MemoryBus()
        broker = MemoryBroker(bus)
        broker.start(Router(broker, lambda p, b: p, clock=bus.clock))
        self.successResultOf(broker.publish("k", b"v", expire=10))
        self.assertEqual(self.successResultOf(broker.fetch("k")), b"v")
        bus.clock.advance(10)
        self.assertIsNone(self.successResultOf(broker.fetch("k")))


class _Logged(FakeClient):
    """A client that keeps what happens to it in one list, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list = []

    def deliver(self, prepared, channel, payload) -> None:
        super().deliver(prepared, channel, payload)
        self.log.append(payload)

    def closeWith(self, code: int, reason: str) -> None:
        self.log.append(("closed", code))


class _BarrierBroker(MemoryBroker):
    """A memory broker whose barriers the test reaches when it says."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.barriers: list[defer.Deferred[None]] = []

    def barrier(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.barriers.append(d)
        return d


class ReadTests(SynchronousTestCase):
    """What one read of the broker holds (between readStarted and readEnded) is handed
    on when the read ends: each client gets a channel's messages of the read at once, in
    the order the broker read them; whatever else the broker reports meanwhile comes
    after what it read before."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = _BarrierBroker(MemoryBus(self.clock))
        self.router = Router(self.broker, lambda p, b: p, clock=self.clock)
        self.broker.start(self.router)
        self.both, self.one = _Logged(), _Logged()
        self.router.join(self.both, ["ch", "other"])
        self.router.join(self.one, ["ch"])

    def read(self, *messages: tuple[str, bytes]) -> None:
        self.router.readStarted()
        for channel, payload in messages:
            self.router.messageReceived(channel, payload)
        self.router.readEnded()

    def test_aReadsMessagesGoInRunsPerChannel(self):
        """Nothing goes out before the read ends; then each client gets each run of one
        channel's messages at once, and all in the order read."""
        self.router.readStarted()
        self.router.messageReceived("ch", b"a")
        self.router.messageReceived("ch", b"b")
        self.assertEqual(self.one.frames, [])
        self.router.messageReceived("other", b"x")
        self.router.messageReceived("ch", b"c")
        self.router.messageReceived("ch", b"d")
        self.router.readEnded()
        self.assertEqual(self.both.frames, [b"a", b"b", b"x", b"c", b"d"])
        self.assertEqual(self.both.runs, [2, 2])
        self.assertEqual(self.one.frames, [b"a", b"b", b"c", b"d"])
        self.assertEqual(self.one.runs, [2, 2])
        self.assertEqual(self.router.stats["frames"], 9)
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nestedReadsEndWithTheOutermost(self):
        """Reads nest (a composite broker's): the messages go out when the outermost
        ends."""
        self.router.readStarted()
        self.read(("ch", b"a"))
        self.assertEqual(self.one.frames, [])
        self.router.messageReceived("ch", b"b")
        self.router.readEnded()
        self.assertEqual((self.one.frames, self.one.runs), ([b"a", b"b"], [2]))

    def test_siteCommandComesAfterWhatCameBefore(self):
        """A message of a pinned channel (the site's commands) amid a read: the
        messages read before it are handed on first, those after it after it."""
        self.router.pin("control", lambda payload: self.router.leave(self.one))
        self.read(("ch", b"before"), ("control", b"leave"), ("ch", b"after"))
        self.assertEqual(self.one.frames, [b"before"])
        self.assertEqual(self.both.frames, [b"before", b"after"])

    def test_barrierAmidReadFiresAfterWhatCameBefore(self):
        """A barrier the broker reaches amid a read fires once what it read before has
        been handed to the clients."""
        seen: list = []
        self.router.barrier().addCallback(lambda _: seen.append(list(self.one.frames)))
        self.clock.advance(0)
        self.router.readStarted()
        self.router.messageReceived("ch", b"before")
        self.broker.barriers[0].callback(None)
        self.router.messageReceived("ch", b"after")
        self.router.readEnded()
        self.assertEqual(seen, [[b"before"]])
        self.assertEqual(self.one.frames, [b"before", b"after"])

    def test_refusalAmidReadComesAfterWhatCameBefore(self):
        """A subscription refused amid a read closes its clients after they got what
        was read before."""
        self.router.readStarted()
        self.router.messageReceived("ch", b"before")
        self.router.subscriptionRefused("ch", "NOPERM")
        self.router.readEnded()
        self.assertEqual(self.one.log, [b"before",
                                        ("closed", closecodes.SUBSCRIPTION_REFUSED)])

    def test_readPastTheTurnsBudgetWaits(self):
        """A read that comes once the turn's budget is spent waits in the backlog, and
        goes out in runs on the next turn."""
        self.patch(router_module, "FRAMES_PER_TURN", 2)
        self.router.messageReceived("ch", b"a")
        self.read(("ch", b"b"), ("ch", b"c"))
        self.assertEqual((self.one.frames, self.router.backlog), ([b"a"], 2))
        self.clock.advance(0)
        self.assertEqual((self.one.frames, self.one.runs), ([b"a", b"b", b"c"], [2]))
