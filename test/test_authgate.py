"""The bound on authentication work (ws4tx.server._authgate), in memory: the work is a
Deferred the test fires, as a thread would."""

from __future__ import annotations

from typing import Any

import txaio
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.naming import Identity
from ws4tx.server._authgate import QUEUE_FULL, TIMED_OUT, AuthGate
from ws4tx.server.auth import HandshakeDenied, HandshakeRequest
from ws4tx.server.config import ServerConfig
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory
from ws4tx.testing import MemoryBroker, MemoryBus

from test.test_protocol import handshake


class _Works:
    """Work started through a gate: each start makes a Deferred the test fires."""

    def __init__(self) -> None:
        self.started: list[defer.Deferred[Any]] = []

    def __call__(self) -> defer.Deferred[Any]:
        work: defer.Deferred[Any] = defer.Deferred()
        self.started.append(work)
        return work


class AuthGateTests(SynchronousTestCase):
    """At most ``concurrency`` works at once, ``queue`` waiting, 503 past it."""

    def setUp(self) -> None:
        self.gate = AuthGate(concurrency=2, queue=2)
        self.works = _Works()

    def ask(self) -> defer.Deferred[Any]:
        return self.gate.run(self.works)

    def test_atMostConcurrencyAtOnceThenTheQueueInOrder(self):
        """Two of four start; the other two wait and start in their order as slots
        free; each answer fires with its own work's result."""
        answers = [self.ask() for _ in range(4)]
        self.assertEqual((len(self.works.started), self.gate.running, self.gate.waiting),
                         (2, 2, 2))
        self.works.started[1].callback("b")
        self.assertNoResult(answers[0])
        self.assertEqual((len(self.works.started), self.gate.waiting), (3, 1))
        self.works.started[0].callback("a")
        self.works.started[2].callback("c")
        self.works.started[3].callback("d")
        self.assertEqual([self.successResultOf(a) for a in answers], ["a", "b", "c", "d"])
        self.assertEqual((self.gate.running, self.gate.waiting, self.gate.most), (0, 0, 2))

    def test_aCancelledAnswerKeepsItsSlotUntilTheWorkFinishes(self):
        """A handshake that goes away while its work runs is answered at once
        (CancelledError), but no waiting handshake starts until that work has finished;
        its late result goes nowhere."""
        answers = [self.ask() for _ in range(3)]
        answers[0].cancel()
        self.failureResultOf(answers[0], defer.CancelledError)
        self.assertEqual((len(self.works.started), self.gate.running, self.gate.waiting),
                         (2, 2, 1))
        self.works.started[0].errback(Failure(RuntimeError("late, and nobody waits")))
        self.assertEqual((len(self.works.started), self.gate.running, self.gate.waiting),
                         (3, 2, 0))
        self.assertEqual(self.gate.most, 2)
        self.assertNoResult(answers[2])

    def test_aWaitingHandshakeThatGoesAwayLeavesTheQueue(self):
        """Cancelled while it waits: it leaves the queue at once, its work never starts,
        and the one behind it takes the next slot."""
        answers = [self.ask() for _ in range(4)]
        answers[2].cancel()
        self.failureResultOf(answers[2], defer.CancelledError)
        self.assertEqual(self.gate.waiting, 1)
        self.works.started[0].callback("a")
        self.assertEqual(len(self.works.started), 3)
        self.works.started[2].callback("d")
        self.assertEqual(self.successResultOf(answers[3]), "d")

    def test_pastTheQueueBoundA503WithRetryAfter(self):
        """With both slots taken and two waiting, a fifth handshake is refused at once:
        503, the reason, Retry-After; its work never starts. The episode is logged once
        at warn when it starts and once when the queue has drained."""
        answers = [self.ask() for _ in range(4)]
        with capturedLogs() as events:
            refused = [self.ask() for _ in range(3)]
            for answer in refused:
                error = self.failureResultOf(answer, HandshakeDenied).value
                self.assertEqual((error.status, error.reason, error.retry_after),
                                 (503, QUEUE_FULL, 1))
            self.assertEqual(len(self.works.started), 2)
            self.assertEqual(self.gate.refused, 3)
            for work in list(self.works.started):
                work.callback(None)
        self.assertEqual([(e["log_level"], e["n"]) for e in events],
                         [(LogLevel.warn, 2), (LogLevel.info, 3)])
        self.assertIn("AUTH_QUEUE", events[0]["log_format"])
        self.assertEqual(self.gate.waiting, 0)
        self.assertEqual(len(answers), 4)

    def test_aFailedWorkIsPassedOnAndFreesItsSlot(self):
        """A work that fails (a refusal from a hook, a database error) fails its answer
        and frees its slot for the next handshake."""
        answers = [self.ask() for _ in range(3)]
        self.works.started[0].errback(Failure(HandshakeDenied("banned")))
        self.assertEqual(self.failureResultOf(answers[0], HandshakeDenied).value.reason,
                         "banned")
        self.assertEqual(len(self.works.started), 3)

    def test_aStartThatRaisesFreesItsSlot(self):
        """A start that raises (the thread pool stopped) fails the answer; the slot is
        free again."""
        def broken() -> defer.Deferred[Any]:
            raise RuntimeError("the pool is stopped")

        self.failureResultOf(self.gate.run(broken), RuntimeError)
        self.assertEqual(self.gate.running, 0)

    def test_boundsAreChecked(self):
        """A gate needs one slot at least; the queue may be empty (503 as soon as every
        slot is taken)."""
        self.assertRaises(ValueError, AuthGate, 0, 1)
        self.assertRaises(ValueError, AuthGate, 1, -1)
        gate = AuthGate(1, 0)
        gate.run(self.works)
        self.failureResultOf(gate.run(self.works), HandshakeDenied)


class _Transport(StringTransport):
    """A StringTransport that, like a TCP one, lets a protocol unregister no producer."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class _Gated:
    """An authenticator whose every answer passes the gate (as SessionAuthenticator's)."""

    def __init__(self, gate: AuthGate, works: _Works) -> None:
        self.gate, self.works = gate, works

    def authenticate(self, request: HandshakeRequest) -> defer.Deferred[Any]:
        return self.gate.run(self.works)


class _GatedHandshakes(SynchronousTestCase):
    """Handshakes over StringTransports through a gate of one slot and one place."""

    #: No handshake timeout, except where a test says.
    handshake_timeout = 0.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)
        config = ServerConfig(ping_interval=0, handshake_timeout=self.handshake_timeout)
        self.gate, self.works = AuthGate(1, 1), _Works()
        self.factory = PushFactory(
            Node(config, MemoryBroker(MemoryBus(self.clock)), clock=self.clock),
            _Gated(self.gate, self.works), reactor=self.clock)
        self.factory.node.start()

    def connect(self) -> tuple[Any, _Transport]:
        proto = self.factory.buildProtocol(("127.0.0.1", 1))
        transport = _Transport()
        proto.makeConnection(transport)
        proto.dataReceived(handshake("/ws/foobar?subscribe-broadcast"))
        return proto, transport


class GatedHandshakeTests(_GatedHandshakes):
    """Handshakes through a gate of one slot and one place, no handshake timeout."""

    def test_pastTheQueueTheAnswerIs503WithRetryAfterAndTheReason(self):
        """The third handshake gets ``503`` with the reason and ``Retry-After: 1`` and is
        closed; the first two get nothing yet."""
        t1, t2, t3 = [self.connect()[1] for _ in range(3)]
        head = t3.value().partition(b"\r\n\r\n")[0]
        self.assertEqual(head.split(b"\r\n")[0],
                         b"HTTP/1.1 503 " + QUEUE_FULL.encode())
        self.assertIn(b"\r\nRetry-After: 1", head)
        self.assertTrue(t3.disconnecting)
        self.assertEqual((t1.value(), t2.value()), (b"", b""))

    def test_aResetDuringAuthenticationKeepsTheSlotUntilTheWorkEnds(self):
        """The first handshake resets while its work runs: the second still waits (the
        slot is the work's, not the connection's) and is admitted once the work ended."""
        (first, t1), (_, t2) = [self.connect() for _ in range(2)]
        first.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((len(self.works.started), self.gate.running, self.gate.waiting),
                         (1, 1, 1))
        self.works.started[0].callback(Identity(user="john"))
        self.assertEqual(t1.value(), b"")
        self.works.started[1].callback(Identity(user="mary"))
        self.assertTrue(t2.value().startswith(b"HTTP/1.1 101"), t2.value())
        self.assertEqual(self.gate.most, 1)


class GatedHandshakeTimeoutTests(_GatedHandshakes):
    """The same gate, with a handshake timeout of 5 s."""

    handshake_timeout = 5.0

    def test_aHandshakeStillAuthenticatingAtTheTimeoutGets503(self):
        """Two handshakes: the first's work runs, the second waits. Neither is answered
        before 5 s; at 5 s both get 503 with the reason and ``Retry-After: 1`` (a client
        tries again, where Autobahn's reset made it fail), the second has left the queue
        and the first's slot stays taken until its work ends, which then answers
        nothing more: no 101, no member."""
        (_, t1), (_, t2) = [self.connect() for _ in range(2)]
        self.clock.advance(4.9)
        self.assertEqual((t1.value(), t2.value()), (b"", b""))
        self.clock.advance(0.1)
        for transport in (t1, t2):
            head = transport.value().partition(b"\r\n\r\n")[0]
            self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.1 503 " + TIMED_OUT.encode())
            self.assertIn(b"\r\nRetry-After: 1", head)
            self.assertTrue(transport.disconnecting)
        self.assertEqual((self.gate.running, self.gate.waiting), (1, 0))
        answered = t1.value()
        self.works.started[0].callback(Identity(user="john"))
        self.assertEqual(t1.value(), answered)
        self.assertEqual(len(self.works.started), 1)
        self.assertEqual(self.factory.node.router.memberCount(), 0)
        self.assertEqual(self.gate.running, 0)


class DefaultGateTests(SynchronousTestCase):
    """The gate the server builds from its default settings."""

    def test_aStormOf1000HandshakesInFlightWaitsWithoutA503(self):
        """1000 cookie handshakes at once (a reconnect storm; the bench sends 200 in
        flight) all wait for a slot rather than being refused: a refused handshake costs
        the server a whole handshake again when it retries, and a waiting one only its
        place (the handshake timeout bounds how long it waits)."""
        config = ServerConfig()
        gate, works = AuthGate(config.auth_concurrency, config.auth_queue), _Works()
        answers = [gate.run(works) for _ in range(config.auth_concurrency + 1000)]
        self.assertEqual((gate.refused, gate.running, gate.waiting),
                         (0, config.auth_concurrency, 1000))
        for answer in answers:
            answer.addErrback(lambda f: f.trap(defer.CancelledError)).cancel()
        for work in works.started:
            work.callback(None)
        self.assertEqual((gate.running, gate.waiting), (0, 0))
