"""The Redis broker's timing, driven by a Clock over in-memory transports: connection
readiness, resubscription, the PING watchdog and command timeouts."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ws4tx.redis_address import RedisAddress
from ws4tx.server.broker import (
    OTHER,
    PERMISSION,
    TRANSIENT,
    BrokerUnavailable,
    IShardListener,
    NotStored,
    SubscriptionRefused,
    publish_to,
    refusal_kind,
    refusal_meaning,
)
from ws4tx.server.redis_broker import RedisBroker


class FakeEndpoint:
    """Connects every attempt to a new StringTransport at once."""

    def __init__(self) -> None:
        self.connections: list = []

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return defer.succeed(proto)


class Listener:
    def __init__(self, channels=()) -> None:
        self.channels = list(channels)
        self.events: list = []
        self.messages: list = []

    def wantedChannels(self):
        return self.channels

    def brokerConnected(self):
        self.events.append("connected")

    def brokerDisconnected(self):
        self.events.append("disconnected")

    def messageReceived(self, channel, payload):
        self.messages.append((channel, payload))

    def subscriptionRefused(self, channel, reason):
        self.events.append(("refused", channel))


@implementer(IShardListener)
class ShardListener(Listener):
    """A listener told of outages by channel (as the router is)."""

    def channelsInterrupted(self, channels):
        self.events.append(("interrupted", list(channels)))

    def channelsResumed(self, channels, interrupted):
        channels = list(channels)
        self.events.append(("resumed", channels,
                            [c for c in self.channels if interrupted(c)]))


def subscribed(channel: bytes, count: int = 1) -> bytes:
    return b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n" % (len(channel), channel, count)


class _BrokerCase(SynchronousTestCase):
    """A broker on a Clock whose two connections are made at once."""

    listener_class: type[Listener] = Listener

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.listener = self.listener_class(["a", "b"])
        self.broker = RedisBroker(RedisAddress(), reactor=self.clock, clock=self.clock,
                                  ping_interval=5, timeout=2, endpoint=self.endpoint,
                                  retry_policy=lambda attempt: 1.0)
        self.broker.start(self.listener)
        self.clock.advance(0)
        (self.sub, self.sub_t), (self.cmd, self.cmd_t) = self.endpoint.connections
        # The command connection is ready once Redis answered its PING.
        self.assertEqual(self.cmd_t.value(), b"*1\r\n$4\r\nPING\r\n")
        self.cmd_t.clear()
        self._feed(self.cmd, b"+PONG\r\n")

    def tearDown(self) -> None:
        self.broker.stop()
        self.clock.advance(10)

    def _feed(self, proto, data: bytes) -> None:
        """Deliver bytes from Redis; txredisapi's pure-Python parser (without hiredis)
        finishes parsing on later reactor turns, so let those run."""
        proto.dataReceived(data)
        for _ in range(100):
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                break
            self.clock.advance(0)

    def _ready(self, sub=None) -> None:
        probe = self.broker._probe_channel.encode()
        self._feed(sub or self.sub, subscribed(probe) + subscribed(b"a", 2) +
                   subscribed(b"b", 3))


class BrokerTimingTests(_BrokerCase):
    """Everything the broker does on a timer, with a Clock."""

    def _startUnanswered(self) -> tuple[RedisBroker, Any, Any]:
        """Another broker whose command connection is made but whose PING is unanswered
        yet: the server's start, with its subscriber possibly ready already."""
        endpoint = FakeEndpoint()
        broker = RedisBroker(RedisAddress(), reactor=self.clock, clock=self.clock,
                             ping_interval=5, timeout=2, endpoint=endpoint,
                             retry_policy=lambda attempt: 1.0)
        broker.start(Listener([]))
        self.addCleanup(broker.stop)
        self.clock.advance(0)
        _, (cmd, cmd_t) = endpoint.connections
        cmd_t.clear()
        return broker, cmd, cmd_t

    def test_commandWaitsForTheFirstCommandConnection(self):
        """A publish while the command connection is first being made (its PING not
        answered yet) is sent once it is ready, not refused (a client's first publish
        after the server's start failed with "not connected")."""
        broker, cmd, cmd_t = self._startUnanswered()
        d = broker.publish("ch", b"hi")
        self.assertNoResult(d)
        self._feed(cmd, b"+PONG\r\n")
        self.assertEqual(cmd_t.value(), b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n")
        self._feed(cmd, b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_commandWaitingForTheFirstConnectionIsBounded(self):
        """It waits at most the timeout (here the unanswered PING's too: the attempt
        fails), then fails with BrokerUnavailable."""
        broker, _, _ = self._startUnanswered()
        d = broker.publish("ch", b"hi")
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, BrokerUnavailable)

    def test_resubscribesOneChannelPerCommand(self):
        """On connection each wanted channel (and the broker's probe channel) is
        subscribed with its own command, and the broker says it is connected only once
        all are confirmed."""
        probe = self.broker._probe_channel.encode()
        self.assertEqual(self.sub_t.value(),
                         b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(probe), probe) +
                         b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nb\r\n")
        self.assertEqual(self.listener.events, [])
        self._ready()
        self.assertEqual(self.listener.events, ["connected"])
        self.assertTrue(self.broker.connected)

    def test_unconfirmedSubscriptionReplacesConnection(self):
        """A SUBSCRIBE not confirmed within the timeout drops the connection."""
        self.clock.advance(1.9)
        self.assertFalse(self.sub_t.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.sub_t.disconnecting)

    def test_pingEveryIntervalAndAnsweredPingKeepsConnection(self):
        """A PING goes out every interval; an answer keeps the connection."""
        self._ready()
        self.sub_t.clear()
        self.clock.advance(4.9)
        self.assertEqual(self.sub_t.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.sub_t.value(), b"*1\r\n$4\r\nPING\r\n")
        self._feed(self.sub, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        self.clock.advance(2)
        self.assertFalse(self.sub_t.disconnecting)
        self.assertEqual(self.broker.stats["deaf"], 0)

    def test_unansweredPingReplacesConnection(self):
        """No answer to PING within the timeout: the connection is dropped and counted."""
        self._ready()
        self.clock.advance(5)
        self.clock.advance(1.9)
        self.assertFalse(self.sub_t.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.sub_t.disconnecting)
        self.assertEqual(self.broker.stats["deaf"], 1)

    def test_lostSubscriberReconnectsAndResubscribes(self):
        """A lost subscriber is reported, and a new connection after the retry delay
        subscribes the channels wanted then."""
        self._ready()
        self.sub.connectionLost(Exception("gone"))
        self.assertEqual(self.listener.events, ["connected", "disconnected"])
        self.assertFalse(self.broker.connected)
        self.listener.channels = ["c"]
        self.clock.advance(1.0)
        sub2, t2 = self.endpoint.connections[-1]
        self.clock.advance(0)
        self.assertIn(b"SUBSCRIBE\r\n$1\r\nc\r\n", t2.value())
        probe = self.broker._probe_channel.encode()
        self._feed(sub2, subscribed(probe) + subscribed(b"c", 2))
        self.assertEqual(self.listener.events, ["connected", "disconnected", "connected"])

    def test_payloadsAreBytesAndNotConverted(self):
        """Messages reach the listener as bytes, numbers unconverted."""
        self._ready()
        self._feed(self.sub, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\n12345\r\n")
        self.assertEqual(self.listener.messages, [("a", b"12345")])

    def test_commandTimesOut(self):
        """A command without an answer fails with BrokerUnavailable after the timeout."""
        self._ready()
        d = self.broker.fetch("k")
        self.assertNoResult(d)
        self.clock.advance(2)
        self.failureResultOf(d, BrokerUnavailable)

    def test_publishAndStore(self):
        """publish writes PUBLISH, then SET EX once PUBLISH succeeded, and fires with the
        receivers."""
        d = self.broker.publish("ch", b"hi", expire=60)
        self.assertEqual(self.cmd_t.value(), b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n")
        self.cmd_t.clear()
        self._feed(self.cmd, b":3\r\n")
        self.assertEqual(self.cmd_t.value(),
                         b"*5\r\n$3\r\nSET\r\n$2\r\nch\r\n$2\r\nhi\r\n$2\r\nEX\r\n$2\r\n60\r\n")
        self.assertNoResult(d)
        self._feed(self.cmd, b"+OK\r\n")
        self.assertEqual(self.successResultOf(d), 3)

    def test_publishedButNotStoredIsNotAFailureToDeliver(self):
        """PUBLISH succeeds and SET is refused (maxmemory): the publish fails with
        NotStored, carrying the receivers and Redis's reason, never BrokerUnavailable;
        the failure is counted."""
        d = self.broker.publish("ch", b"hi", expire=60)
        self._feed(self.cmd, b":3\r\n")
        self._feed(self.cmd, b"-OOM command not allowed when used memory > 'maxmemory'.\r\n")
        failure = self.failureResultOf(d, NotStored)
        self.assertFalse(failure.check(BrokerUnavailable))
        self.assertEqual(failure.value.receivers, 3)
        self.assertIn("OOM", failure.value.reason)
        self.assertEqual(self.broker.stats["store_failures"], 1)

    def test_refusedPublishIsNotStored(self):
        """PUBLISH refused (an ACL without the channel): no SET is sent at all."""
        d = self.broker.publish("ch", b"hi", expire=60)
        self.cmd_t.clear()
        self._feed(self.cmd, b"-NOPERM this user has no permissions to access the 'ch' "
                             b"channel\r\n")
        self.failureResultOf(d)
        self.assertEqual(self.cmd_t.value(), b"")
        self.assertEqual(self.broker.stats["store_failures"], 0)

    def test_publishToSumsReceiversOfNotStored(self):
        """publish_to over several channels reports NotStored with every receiver."""
        d = publish_to(self.broker, ["x", "y"], b"hi", expire=60)
        self._feed(self.cmd, b":2\r\n:1\r\n")
        self._feed(self.cmd, b"+OK\r\n-OOM no memory\r\n")
        self.assertEqual(self.failureResultOf(d, NotStored).value.receivers, 3)

    def test_commandWithoutConnectionFailsAtOnce(self):
        """With no command connection, a command fails at once."""
        self.cmd.connectionLost(Exception("gone"))
        self.failureResultOf(self.broker.publish("ch", b"x"), BrokerUnavailable)

    def test_deliveringFollowsTheProbe(self):
        """delivering is True once the probe published on connection came back through
        the subscriber, and False again when it has not for three ping intervals."""
        self._ready()
        self.assertIn(b"PUBLISH", self.cmd_t.value())
        self.assertFalse(self.broker.delivering)
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$5\r\nprobe\r\n"
                              % (len(probe), probe))
        self.assertTrue(self.broker.delivering)
        self.assertEqual(self.listener.messages, [])  # the probe is the broker's own
        self.clock.advance(15.1)
        self.assertFalse(self.broker.delivering)


def noperm(channel: bytes) -> bytes:
    return (b"-NOPERM this user has no permissions to access the '%s' channel\r\n"
            % channel)


class SetupTests(_BrokerCase):
    """What happens while the subscriber connection is being set up."""

    def test_joinDuringSetupIsSubscribedOnTheNewConnection(self):
        """A channel wanted while the subscriber's SUBSCRIBEs are in flight is subscribed
        on that connection, and the connection is ready only once it is confirmed."""
        d = self.broker.subscribe("late")
        self.assertTrue(self.sub_t.value().endswith(b"SUBSCRIBE\r\n$4\r\nlate\r\n"))
        self._ready()
        self.assertNoResult(d)
        self.assertFalse(self.broker.connected)
        self._feed(self.sub, subscribed(b"late", 4))
        self.successResultOf(d)
        self.assertTrue(self.broker.connected)
        self.assertEqual(self.listener.events, ["connected"])

    def test_refusedResubscriptionFailsOnlyThatChannel(self):
        """A NOPERM for one channel at resubscription: that channel is reported refused,
        the others are subscribed, and the broker is connected."""
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, subscribed(probe) + noperm(b"a") + subscribed(b"b", 2))
        self.assertEqual(self.listener.events, [("refused", "a"), "connected"])
        self.assertTrue(self.broker.connected)
        self.assertFalse(self.sub_t.disconnecting)

    def test_refusedSubscriptionFailsWithSubscriptionRefused(self):
        """A live SUBSCRIBE that Redis refuses fails with SubscriptionRefused; the
        connection goes on (its replies stay in step)."""
        self._ready()
        d = self.broker.subscribe("c")
        self.clock.advance(0)  # the turn's SUBSCRIBE is sent
        self._feed(self.sub, noperm(b"c"))
        self.assertEqual(self.failureResultOf(d, SubscriptionRefused).value.channel, "c")
        d2 = self.broker.subscribe("d")
        self.clock.advance(0)  # the turn's SUBSCRIBE is sent
        self._feed(self.sub, subscribed(b"d", 3))
        self.successResultOf(d2)

    def test_channelsJoinedInOneTurnAreOneSubscribe(self):
        """The channels clients join in one reactor turn are one SUBSCRIBE, sent at the
        end of the turn; each is subscribed once Redis confirmed the command, and its
        other confirmations are no reply to the commands sent after it."""
        self._ready()
        self.sub_t.clear()
        joins = [self.broker.subscribe(c) for c in ("c", "d", "e")]
        self.assertEqual(self.sub_t.value(), b"")
        self.clock.advance(0)
        self.assertEqual(self.sub_t.value(), b"*4\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"
                                             b"$1\r\nd\r\n$1\r\ne\r\n")
        later = self.broker.subscribe("f")
        self.clock.advance(0)
        self._feed(self.sub, subscribed(b"c", 4))
        for d in joins:
            self.successResultOf(d)
        self._feed(self.sub, subscribed(b"d", 5) + subscribed(b"e", 6))
        self.assertNoResult(later)
        self._feed(self.sub, subscribed(b"f", 7))
        self.successResultOf(later)

    def test_aRefusedChannelRefusesOnlyItselfInItsTurn(self):
        """Redis refuses a whole SUBSCRIBE for one channel the ACL does not allow: each
        channel of it is subscribed again alone, and only the refused one fails."""
        self._ready()
        self.sub_t.clear()
        allowed, refused = self.broker.subscribe("c"), self.broker.subscribe("d")
        self.clock.advance(0)
        self.sub_t.clear()
        self._feed(self.sub, noperm(b"d"))
        self.assertEqual(self.sub_t.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"
                                             b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nd\r\n")
        self._feed(self.sub, subscribed(b"c", 4) + noperm(b"d"))
        self.successResultOf(allowed)
        self.assertEqual(self.failureResultOf(refused, SubscriptionRefused).value.channel,
                         "d")

    def test_anUnsubscribeFollowsTheSubscribesAskedBeforeIt(self):
        """A channel joined and left in one turn is subscribed, then unsubscribed, in
        that order (never left subscribed with nobody on it)."""
        self._ready()
        self.sub_t.clear()
        self.broker.subscribe("c")
        self.broker.unsubscribe("c")
        self.clock.advance(0)
        self.assertEqual(self.sub_t.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"
                                             b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\nc\r\n")

    def test_channelsLeftInOneTurnAreOneUnsubscribe(self):
        """The channels left in one turn are one UNSUBSCRIBE; its answers beyond the
        first are no reply to the commands sent after it."""
        self._ready()
        self.sub_t.clear()
        left = [self.broker.unsubscribe(c) for c in ("a", "b")]
        self.clock.advance(0)
        self.assertEqual(self.sub_t.value(), b"*3\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\na\r\n"
                                             b"$1\r\nb\r\n")
        joined = self.broker.subscribe("c")
        self.clock.advance(0)
        self._feed(self.sub, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n")
        for d in left:
            self.successResultOf(d)
        self._feed(self.sub, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n")
        self.assertNoResult(joined)
        self._feed(self.sub, subscribed(b"c", 2))
        self.successResultOf(joined)

    def test_refusedProbeFallsBackToConnected(self):
        """An ACL without the probe channel: delivering follows the connection (and a
        warning says which channels to allow)."""
        probe = self.broker._probe_channel.encode()
        with capturedLogs() as logged:
            self._feed(self.sub, noperm(probe) + subscribed(b"a", 1) + subscribed(b"b", 2))
        self.assertTrue(self.broker.delivering)
        self.assertTrue(any("__ws4tx_probe__:*" in (e.get("log_format") or "")
                            for e in logged))


    def _refusedForNow(self, reply: bytes) -> list:
        """The probe channel refused with ``reply`` at connection; the log's lines."""
        with capturedLogs() as logged:
            self._feed(self.sub, reply + subscribed(b"a", 1) + subscribed(b"b", 2))
        return [formatEvent(e) for e in logged if e["log_level"] >= LogLevel.warn]

    def test_probeRefusedForNowIsRetriedWithBackoff(self):
        """A Cluster that is down answers the probe's SUBSCRIBE with CLUSTERDOWN: one
        warning says the cluster is down (not that an ACL lacks the channel), the health
        reason says the same, delivery is not claimed, and the probe is subscribed again
        after the connection's backoff, then delivers."""
        lines = self._refusedForNow(b"-CLUSTERDOWN The cluster is down\r\n")
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^cannot reach Redis subscriptions on redis://\S+: 1 "
                         r"channel \(the delivery probe's included\) refused for now: "
                         r"CLUSTERDOWN The cluster is down \(the Redis Cluster is down or "
                         r"does not serve this slot; .*\); retrying in 1\.0 s$")
        self.assertNotIn("ACL", lines[0])
        self.assertEqual(self.listener.events, ["connected"])  # a and b are subscribed
        self.assertIn("CLUSTERDOWN The cluster is down", self.broker.problem)
        self.assertFalse(self.broker.delivering)

        probe = self.broker._probe_channel.encode()
        self.sub_t.clear()
        self.clock.advance(0.99)
        self.assertEqual(self.sub_t.value(), b"")
        self.clock.advance(0.01)
        self.assertEqual(self.sub_t.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n"
                         % (len(probe), probe))
        with capturedLogs() as logged:
            self._feed(self.sub, subscribed(probe, 3))
        self.assertIsNone(self.broker.problem)
        self.assertTrue(any("ready after 1.0 s (1 failed attempts)" in formatEvent(e)
                            for e in logged))
        self._feed(self.sub, b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$5\r\nprobe\r\n"
                   % (len(probe), probe))
        self.assertTrue(self.broker.delivering)

    def test_probeRefusedForNowAgainWaitsLonger(self):
        """Refused again (LOADING after CLUSTERDOWN): the next try waits the next delay
        of the backoff, and no second warning is written within the summary period."""
        self.broker._retry = lambda attempt: [1.0, 3.0, 7.0][min(attempt, 2)]
        self._refusedForNow(b"-CLUSTERDOWN The cluster is down\r\n")
        probe = self.broker._probe_channel.encode()
        self.clock.advance(1.0)
        with capturedLogs() as logged:
            self._feed(self.sub, b"-LOADING Redis is loading the dataset in memory\r\n")
        self.assertEqual([e for e in logged if e["log_level"] >= LogLevel.warn], [])
        self.assertIn("Redis is loading its dataset", self.broker.problem)
        self.sub_t.clear()
        self.clock.advance(2.99)
        self.assertEqual(self.sub_t.value(), b"")
        self.clock.advance(0.01)
        self.assertIn(probe, self.sub_t.value())

    def test_probeRefusedForAnUnknownReasonQuotesIt(self):
        """A refusal ws4tx does not know: one line quoting Redis, no ACL advice, and
        delivery follows the connection (nothing is retried)."""
        probe = self.broker._probe_channel.encode()
        lines = self._refusedForNow(b"-ERR something odd\r\n")
        self.assertEqual(lines, [f"Redis refused the delivery probe channel {probe.decode()}: "
                                 "ERR something odd; the health check follows the connection "
                                 "instead"])
        self.assertTrue(self.broker.delivering)
        self.assertIsNone(self.broker.problem)
        self.sub_t.clear()
        self.clock.advance(30)
        self.assertNotIn(probe, self.sub_t.value())

    def test_channelRefusedForNowIsRetriedNotRefused(self):
        """TRYAGAIN for a client's channel at resubscription: its clients are not closed
        (the listener hears no refusal); the channel is subscribed again after the
        backoff. One that nobody wants any more by then is not."""
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, subscribed(probe) + b"-TRYAGAIN Multiple keys request during "
                   b"rehashing of slot\r\n" + subscribed(b"b", 2))
        self.assertEqual(self.listener.events, ["connected"])
        self.assertIn("the slot is being migrated", self.broker.problem)
        self.sub_t.clear()
        self.clock.advance(1.0)
        self.assertEqual(self.sub_t.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n")
        self._feed(self.sub, subscribed(b"a", 3))
        self.assertIsNone(self.broker.problem)

    def test_liveSubscriptionRefusedForNowIsRetried(self):
        """A join's SUBSCRIBE answered LOADING fails as unavailable (the client is not
        closed) and is subscribed again after the backoff while the channel is wanted."""
        self._ready()
        self.listener.channels.append("c")
        d = self.broker.subscribe("c")
        self.clock.advance(0)  # the turn's SUBSCRIBE is sent
        self._feed(self.sub, b"-LOADING Redis is loading the dataset in memory\r\n")
        self.failureResultOf(d, BrokerUnavailable)
        self.sub_t.clear()
        self.clock.advance(1.0)
        self.assertEqual(self.sub_t.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n")
        self._feed(self.sub, subscribed(b"c", 4))
        self.assertIsNone(self.broker.problem)
        self.assertEqual(self.listener.events, ["connected"])

    def test_liveSubscriptionRefusedByTheAclIsRefused(self):
        """NOPERM is no passing refusal: SubscriptionRefused, nothing retried."""
        self._ready()
        d = self.broker.subscribe("c")
        self.clock.advance(0)  # the turn's SUBSCRIBE is sent
        self._feed(self.sub, noperm(b"c"))
        self.failureResultOf(d, SubscriptionRefused)
        self.sub_t.clear()
        self.clock.advance(30)
        self.assertNotIn(b"$1\r\nc\r\n", self.sub_t.value())
        self.assertIsNone(self.broker.problem)


class RefusalKindTests(SynchronousTestCase):
    """How a Redis error answering a SUBSCRIBE is classified (pure logic)."""

    def test_kinds(self):
        """The ACL's refusals ask for the ACL's fix; the cluster's and loading's pass by
        themselves; anything else is other."""
        cases = {
            "NOPERM this user has no permissions to access the 'x' channel": PERMISSION,
            "NOPERM User ws4tx has no permissions to access the 'x' channel": PERMISSION,
            "ERR Error in ACL: no permission": PERMISSION,
            "CLUSTERDOWN Hash slot not served": TRANSIENT,
            "CLUSTERDOWN The cluster is down": TRANSIENT,
            "TRYAGAIN Multiple keys request during rehashing of slot": TRANSIENT,
            "LOADING Redis is loading the dataset in memory": TRANSIENT,
            "MOVED 866 127.0.0.1:7001": TRANSIENT,
            "ASK 866 127.0.0.1:7001": TRANSIENT,
            "ERR unknown command 'SSUBSCRIBE'": OTHER,
            "MOVEDX nothing": OTHER,
        }
        self.assertEqual({m: refusal_kind(m) for m in cases}, cases)

    def test_meanings(self):
        """Each meaning names what is wrong, and the ACL's names the ACL fix."""
        self.assertIn("ACL SETUSER", refusal_meaning("NOPERM no permissions"))
        self.assertIn("loading its dataset", refusal_meaning("LOADING Redis is loading"))
        self.assertIn("migrated", refusal_meaning("TRYAGAIN Multiple keys"))
        self.assertIn("--cluster check", refusal_meaning("CLUSTERDOWN Hash slot not served"))
        self.assertIn("slot moved", refusal_meaning("MOVED 1 h:1"))


class AbortingTransport(StringTransport):
    """A transport whose loseConnection and abortConnection end the connection on the
    next turn, as TCP's do."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost,
                                 Failure(ConnectionDone("closed")))

    abortConnection = loseConnection


class SilentEndpoint:
    """Every attempt connects (TCP accepted) to a Redis that never answers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.connections: list = []

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        transport = AbortingTransport(self.clock)
        transport.protocol = proto
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return defer.succeed(proto)


class BackoffTests(SynchronousTestCase):
    """A Redis that accepts TCP but never gets a connection ready."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = SilentEndpoint(self.clock)
        self.attempts: list[int] = []
        policy = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0, jitter=lambda: 0)

        def retry(attempt: int) -> float:
            self.attempts.append(attempt)
            return policy(attempt)

        self.broker = RedisBroker(RedisAddress(), reactor=self.clock, clock=self.clock,
                                  ping_interval=5, timeout=2, endpoint=self.endpoint,
                                  retry_policy=retry)
        self.broker.start(Listener(["a"]))

    def test_backoffGrowsWhileConnectionsNeverGetReady(self):
        """Each connection that is not ready within the timeout is dropped and counts as
        a failed attempt: the delays grow (1, 2, 4, 8 s...) instead of repeating the
        first one, and the SUBSCRIBEs are resent once per attempt only. The command
        connection is not ready until Redis answered its PING, so it backs off alike."""
        for _ in range(60):
            self.clock.advance(1)
        # both connections, attempt by attempt
        self.assertEqual(self.attempts[:12], [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
        # 60 s: connects at 0, 3, 7, 13, 23, 35, 47, 59 (timeout 2 s + the delay)
        subscribers = [t for _, t in self.endpoint.connections if b"SUBSCRIBE" in t.value()]
        commands = [t for _, t in self.endpoint.connections if b"SUBSCRIBE" not in t.value()]
        self.assertEqual(len(subscribers), 8)
        self.assertEqual(len(commands), 8)
        self.assertTrue(all(t.value() == b"*1\r\n$4\r\nPING\r\n" for t in commands))
        self.assertTrue(all(t.disconnecting for t in subscribers[:-1] + commands[:-1]))
        self.assertIsNone(self.broker._cmd)
        self.broker.stop()

    def test_stopWhileSettingUpDropsTheConnection(self):
        """Stopping while a connection is being set up drops it and stops retrying,
        without an error (ClientService cancels the preparation)."""
        self.clock.advance(0.5)
        d = self.broker.stop()
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertTrue(all(t.disconnecting for _, t in self.endpoint.connections))
        count = len(self.endpoint.connections)
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.connections), count)
        self.assertEqual(self.flushLoggedErrors(), [])


class RefusedForNowByChannelTests(_BrokerCase):
    """A channel Redis refuses for now (a failover's new primary still saying the cluster
    is down, a slot migrating, the dataset loading) is not subscribed: the listener that
    hears of outages by channel is told it is interrupted, not that it goes on with the
    connection, and resumed once it is subscribed; messages published meanwhile are not
    delivered, and its clients must be told so."""

    listener_class = ShardListener

    def test_refusedAtResubscriptionIsInterruptedUntilSubscribed(self):
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, subscribed(probe) + b"-CLUSTERDOWN The cluster is down\r\n" +
                   subscribed(b"b", 2))
        self.assertEqual(self.listener.events, ["connected", ("interrupted", ["a"])])
        self.assertTrue(self.broker.waiting("a"))
        self.assertFalse(self.broker.waiting("b"))
        self.clock.advance(1.0)
        self.assertEqual(len(self.listener.events), 2)  # not subscribed yet: nothing said
        self._feed(self.sub, subscribed(b"a", 3))
        self.assertEqual(self.listener.events[2:], [("resumed", ["a"], [])])
        self.assertFalse(self.broker.waiting("a"))

    def test_refusedAgainStaysInterrupted(self):
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, subscribed(probe) + b"-CLUSTERDOWN The cluster is down\r\n" +
                   subscribed(b"b", 2))
        self.clock.advance(1.0)
        self._feed(self.sub, b"-CLUSTERDOWN The cluster is down\r\n")
        self.assertEqual(self.listener.events, ["connected", ("interrupted", ["a"])])
        self.assertTrue(self.broker.waiting("a"))
        self.clock.advance(1.0)
        self._feed(self.sub, subscribed(b"a", 3))
        self.assertEqual(self.listener.events[2:], [("resumed", ["a"], [])])

    def test_liveRefusalIsInterruptedUntilSubscribed(self):
        self._ready()
        self.listener.channels.append("c")
        d = self.broker.subscribe("c")
        self.clock.advance(0)  # the turn's SUBSCRIBE is sent
        self._feed(self.sub, b"-LOADING Redis is loading the dataset in memory\r\n")
        self.failureResultOf(d, BrokerUnavailable)
        self.assertEqual(self.listener.events, ["connected", ("interrupted", ["c"])])
        self.clock.advance(1.0)
        self._feed(self.sub, subscribed(b"c", 4))
        self.assertEqual(self.listener.events[2:], [("resumed", ["c"], [])])

    def test_reconnectionForgetsWhatWasRefused(self):
        """The connection lost meanwhile: every channel is interrupted with it, and the
        next connection subscribes them all (none is waiting for a retry)."""
        probe = self.broker._probe_channel.encode()
        self._feed(self.sub, subscribed(probe) + b"-CLUSTERDOWN The cluster is down\r\n" +
                   subscribed(b"b", 2))
        self.sub.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.broker.waiting("b"))
        self.assertEqual(self.broker._waiting, set())
