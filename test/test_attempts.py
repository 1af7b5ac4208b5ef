"""Every failed attempt to reach Redis is logged at warn from the first one, with its
reason and the next delay; repeats are summed up; the end of an outage says how long it
lasted; the broker (and so the health check) tells the reason. Driven by a Clock."""

from __future__ import annotations

import itertools
import re

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.redis_address import RedisAddress
from ws4tx.server.redis_broker import RedisBroker

from test.test_redis_broker import Listener, subscribed


class FlakyEndpoint:
    """Refuses every attempt while ``refusing``; then connects to a StringTransport."""

    def __init__(self) -> None:
        self.refusing = True
        self.connections: list = []

    def connect(self, factory):
        if self.refusing:
            return defer.fail(ConnectionRefusedError("Connection refused"))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return defer.succeed(proto)


class AttemptLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FlakyEndpoint()
        policy = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0, jitter=lambda: 0)
        #: How many failed attempts the retry policy was asked about (both connections).
        self.failures = 0

        def retry(attempt: int) -> float:
            self.failures += 1
            return policy(attempt)

        self.broker = RedisBroker(
            RedisAddress(port=6390), reactor=self.clock, clock=self.clock, ping_interval=0,
            timeout=2, endpoint=self.endpoint, retry_policy=retry)

    def _runFor(self, seconds: float) -> list[tuple[float, str, str]]:
        """Start (if not yet) and run ``seconds``; the lines logged: (time, level, text)."""
        lines = []
        with capturedLogs() as events:
            if not self.broker._services:
                self.broker.start(Listener())
            for _ in range(int(seconds * 10)):
                self.clock.advance(0.1)
        for event in events:
            if event.get("log_namespace", "").startswith("ws4tx"):
                lines.append((round(event.get("log_time", 0), 1),
                              event["log_level"].name, formatEvent(event)))
        return lines

    def test_firstFailureIsAWarningWithReasonAndDelay(self):
        """The first refused attempt of each connection is a warning naming the
        connection, the reason and the next attempt's delay; the broker says why too."""
        lines = [(level, text) for _, level, text in self._runFor(0.1)]
        self.assertIn(("warn", "cannot reach Redis subscriber connection to "
                       "redis://localhost:6390/0: connection refused; retrying in 1.0 s"),
                      lines)
        self.assertIn(("warn", "cannot reach Redis command connection to "
                       "redis://localhost:6390/0: connection refused; retrying in 1.0 s"),
                      lines)
        self.assertEqual(self.broker.problem, "subscriber connection: connection refused")
        self.broker.stop()

    def test_aLongOutageIsSummedUpEveryThirtySeconds(self):
        """Ten minutes of refusals: per connection, the first failure and then at most
        one line per 30 s, each with the count of attempts since the last line."""
        with capturedLogs() as events:
            self.broker.start(Listener())
            times = []
            for _ in range(6000):
                self.clock.advance(0.1)
                if len(events) > len(times):
                    times.extend([self.clock.seconds()] * (len(events) - len(times)))
        texts = [formatEvent(e) for e in events]
        subscriber = [(t, text) for t, text in zip(times, texts, strict=True)
                      if "subscriber" in text]
        # attempts at 0, 1, 3, 7, 15, then every 10 s
        self.assertLessEqual(len(subscriber), 1 + 600 // 30)
        self.assertGreaterEqual(len(subscriber), 600 // 40)
        for (t1, _), (t2, _) in itertools.pairwise(subscriber):
            self.assertGreaterEqual(round(t2 - t1, 1), 30)
        self.assertRegex(subscriber[1][1],
                         r"^still cannot reach Redis subscriber connection to "
                         r"redis://localhost:6390/0: connection refused; \d+ more failed "
                         r"attempts in \d+ s, retrying in 10.0 s$")
        # every failed attempt is counted once (the subscriber's: half of them)
        counted = sum(int(text.split("; ")[1].split()[0]) for _, text in subscriber[1:])
        self.assertGreater(self.failures, 100)
        self.assertLessEqual(counted + 1, self.failures // 2)
        self.assertGreaterEqual(counted + 1, self.failures // 2 - 3)  # since the last line
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] != LogLevel.warn],
                         ["connecting to Redis at redis://localhost:6390/0"])
        self.broker.stop()

    def test_successAfterFailuresSaysHowLongItTook(self):
        """Once Redis answers, each connection logs (once) after how long and how many
        failed attempts it got ready; the broker has no problem any more."""
        self._runFor(20)  # attempts at 0, 1, 3, 7, 15; the next at 25
        self.endpoint.refusing = False
        with capturedLogs() as events:
            while not self.endpoint.connections:
                self.clock.advance(0.1)
            (sub, _), (cmd, _) = self.endpoint.connections
            probe = self.broker._probe_channel.encode()
            cmd.dataReceived(b"+PONG\r\n")
            sub.dataReceived(subscribed(probe))
            for _ in range(10):
                self.clock.advance(0)
        texts = "\n".join(formatEvent(e) for e in events)
        # ready when the sixth attempt (at 25 s, give or take the test's 0.1 s steps) is
        for role in ("command", "subscriber"):
            self.assertEqual(len(re.findall(
                rf"^Redis {role} connection to redis://localhost:6390/0 ready after "
                r"25\.\d s \(5 failed attempts\)$", texts, re.M)), 1, texts)
        self.assertIsNone(self.broker.problem)
        self.broker.stop()


    def _connectAnswering(self, first: str) -> None:
        """Let the next attempts connect and answer the ``first`` connection's setup (the
        command connection's PING, the subscriber's SUBSCRIBE) before the other's."""
        self.endpoint.refusing = False
        made = len(self.endpoint.connections)
        while len(self.endpoint.connections) < made + 2:
            self.clock.advance(0.1)
        answers = {b"PING": b"+PONG\r\n",
                   b"SUBSCRIBE": subscribed(self.broker._probe_channel.encode())}
        sent = sorted(self.endpoint.connections[made:],
                      key=lambda c: (b"PING" in c[1].value()) != (first == "command"))
        for proto, transport in sent:
            proto.dataReceived(next(a for w, a in answers.items() if w in transport.value()))
            self.clock.advance(0)

    def test_whoeverHearsAConnectionIsBackFindsNoProblem(self):
        """The line that a connection is ready (or restored) is said once the broker has
        no problem with it any more, and (the subscriber) is connected: whoever acts on
        the line (an operator, a test waiting for it) finds the health check's reason
        gone with the outage, not the last refusal's. Before, the line came first and
        the reason went after it."""
        heard: list[tuple[str, str, object, object, bool]] = []

        def observe(event: dict) -> None:
            match = re.match(r"^Redis (\w+) connection to \S+ (ready|restored) after ",
                             formatEvent(event))
            if match:
                role = match.group(1)
                heard.append((role, match.group(2), self.broker.attempts[role].problem,
                              self.broker.problem, self.broker.connected))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self._runFor(2)  # refused at 0 and 1
        self._connectAnswering(first="command")
        self.assertEqual(heard, [
            ("command", "ready", None, "subscriber connection: connection refused", False),
            ("subscriber", "ready", None, None, True)])

        # Redis goes away and comes back; this time the command connection is ready last.
        del heard[:]
        self.endpoint.refusing = True
        for proto, _ in self.endpoint.connections:
            proto.connectionLost(Failure(ConnectionDone()))
        self._runFor(2)  # each reconnects after 1 s, is refused, retries 2 s later
        self.assertEqual(self.broker.problem, "subscriber connection: connection refused")
        self._connectAnswering(first="subscriber")
        self.assertEqual(heard, [
            ("subscriber", "restored", None, "command connection: connection refused", True),
            ("command", "restored", None, None, True)])
        self.broker.stop()


class SilentServer(Protocol):
    """Accepts a connection and never answers; tells the factory what it was sent."""

    def dataReceived(self, data: bytes) -> None:
        if not getattr(self, "told", False):
            self.told = True
            self.factory.arrived(data)


class SilentRedisTests(unittest.TestCase):
    """A real TCP server that accepts connections and never answers, on the real reactor."""

    async def test_commandConnectionBacksOffLikeTheSubscriber(self):
        """The command connection is not ready until Redis answered its PING: against a
        server that never answers, each attempt times out and the delays between its
        attempts grow, as the subscriber's do (before, it counted as ready at once and
        was replaced every timeout, forever)."""
        arrivals: dict[str, list[float]] = {"command": [], "subscriber": []}
        enough: defer.Deferred[None] = defer.Deferred()

        class Factory(ServerFactory):
            protocol = SilentServer

            def arrived(self, data: bytes) -> None:
                role = "subscriber" if b"SUBSCRIBE" in data else "command"
                arrivals[role].append(reactor.seconds())
                if min(len(a) for a in arrivals.values()) >= 4 and not enough.called:
                    enough.callback(None)

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        broker = RedisBroker(
            RedisAddress(host="127.0.0.1", port=port.getHost().port), reactor,
            ping_interval=0, timeout=0.3,
            retry_policy=backoffPolicy(initialDelay=0.1, maxDelay=10.0, factor=2.0,
                                       jitter=lambda: 0))
        broker.start(Listener(["a"]))
        self.addCleanup(broker.stop)
        await enough.addTimeout(20, reactor)
        for role, times in arrivals.items():
            gaps = [b - a for a, b in itertools.pairwise(times[:4])]
            # timeout 0.3 s + delays 0.2, 0.4, 0.8 s
            self.assertEqual(gaps, sorted(gaps), (role, gaps))
            self.assertGreater(gaps[2] - gaps[0], 0.4, (role, gaps))
        self.assertIsNone(broker._cmd)
        self.assertEqual(broker.problem,
                         "subscriber connection: Redis did not answer within 0.3 s")
