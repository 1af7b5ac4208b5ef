"""Joining clients' history reads, batched per channel and reactor turn (on a task.Clock,
with a broker whose reads the test counts)."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope
from ws4tx.history import History, HistoryRead, Position, Publication, Retention
from ws4tx.server.broker import BrokerUnavailable
from ws4tx.server.reads import HistoryReads, SharedHistory
from ws4tx.server.streams import FIRST_PAGE

RETENTION = Retention(100, 600)


class CountingBroker:
    """Answers history reads from a fixed History; records (channel, since, limit)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Optional[int], Optional[int]]] = []
        #: The channels of each batched read.
        self.batches: list[list[str]] = []
        self.fail = 0

    def histories(self, reads: list[HistoryRead]) -> list[defer.Deferred[History]]:
        self.batches.append([read.channel for read in reads])
        return [self.history(*read) for read in reads]

    def history(self, channel: str, retention: Retention,
                since: Optional[int] = None, limit: Optional[int] = None) -> Any:
        self.calls.append((channel, since, limit))
        if self.fail:
            self.fail -= 1
            return defer.fail(BrokerUnavailable("down"))
        entries = [Publication(o, b"m%d" % o) for o in range(1, 11)
                   if since is None or o > since]
        entries = entries[-limit:] if since is None and limit else entries[:limit]
        return defer.succeed(History("e", 10, entries))


class HistoryReadsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = CountingBroker()
        self.reads = HistoryReads(self.broker, self.clock)  # type: ignore[arg-type]

    def collect(self, d: defer.Deferred[Any]) -> list[Any]:
        out: list[Any] = []
        d.addBoth(out.append)
        return out

    def test_oneReadPerChannelAndTurnSharedByEveryAsker(self) -> None:
        """A thousand clients asking in one turn cost one read per channel, of one page
        (COUNT-limited) from the lowest position asked; position-only askers share it;
        nothing is read before the next turn (every asker has joined by then)."""
        a = [self.collect(self.reads.read("ws4tx:broadcast:chat", RETENTION, since))
             for since in (7, 3, 9, None) * 250]
        b = self.collect(self.reads.read("ws4tx:broadcast:news", RETENTION, None))
        self.assertEqual(self.broker.calls, [])
        self.clock.advance(0)
        self.assertEqual(sorted(self.broker.calls), [
            ("ws4tx:broadcast:chat", 3, FIRST_PAGE), ("ws4tx:broadcast:news", None, 1)])
        shared = a[0][0]
        self.assertIsInstance(shared, SharedHistory)
        self.assertTrue(all(got == [shared] for got in a))
        self.assertEqual([p.offset for p in shared.history.publications], list(range(4, 11)))
        self.assertEqual([p.offset for p in b[0].history.publications], [10])
        self.assertEqual(self.broker.batches, [["ws4tx:broadcast:chat",
                                                "ws4tx:broadcast:news"]])
        self.assertEqual(self.reads.stats, {"history_reads": 2, "history_batches": 1,
                                            "history_read_requests": 1001})
        # The next turn's askers get a read of their own.
        self.reads.read("ws4tx:broadcast:chat", RETENTION, 5)
        self.clock.advance(0)
        self.assertEqual(len(self.broker.calls), 3)

    def test_eachMessageIsFramedOnceWithItsPosition(self) -> None:
        shared = SharedHistory(History("e", 2, [Publication(1, b"hi"),
                                                Publication(2, b'{"ws4tx":"ack","id":1}')]))
        first = shared.frame(shared.history.publications[0])
        self.assertIs(shared.frame(shared.history.publications[0]), first)
        assert first is not None
        self.assertEqual(first.position, Position(1, "e"))
        self.assertIs(first.published("c"), first.published("c"))
        self.assertIsNotNone(envelope.server_voice(b'{"ws4tx":"ack","id":1}'))
        self.assertIsNone(shared.frame(shared.history.publications[1]))  # forged: never sent

    def test_aReadThatFindsRedisUnavailableIsRetried(self) -> None:
        self.broker.fail = 2
        got = self.collect(self.reads.read("ws4tx:broadcast:chat", RETENTION, 1))
        self.clock.advance(0)
        self.clock.advance(0.5)
        self.assertEqual(got, [])
        self.clock.advance(1.0)
        self.assertIsInstance(got[0], SharedHistory)
        self.assertEqual(len(self.broker.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SharedPagesTests(SynchronousTestCase):
    """The later pages of catch-ups at the same position, asked on different turns (each
    client's socket drains at its own pace), are read once while they cannot change."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = CountingBroker()
        self.reads = HistoryReads(self.broker, self.clock)  # type: ignore[arg-type]

    def page(self, since: int, limit: int) -> Any:
        got: list[Any] = []
        self.reads.page("ws4tx:broadcast:chat", RETENTION, since, limit).addBoth(got.append)
        self.clock.advance(0)
        (shared,) = got
        return shared

    def test_aFullPageWithMoreAfterItIsReadOnce(self) -> None:
        first = self.page(2, 3)
        again = self.page(2, 3)
        self.assertIs(again, first)
        self.assertEqual([p.offset for p in again.history.publications], [3, 4, 5])
        self.assertEqual(len(self.broker.calls), 1)

    def test_theLastPageIsReadAgain(self) -> None:
        """What ends at the stream's last offset may grow: it is read each time."""
        self.assertEqual([p.offset for p in self.page(7, 3).history.publications],
                         [8, 9, 10])
        self.page(7, 3)
        self.page(8, 3)
        self.page(8, 3)
        self.assertEqual(len(self.broker.calls), 4)

    def test_keptPagesAreBounded(self) -> None:
        from ws4tx.server.streams import batched_reads

        self.patch(batched_reads, "KEPT_PAGES", 2)
        for since in (0, 1, 2):
            self.page(since, 2)
        self.page(0, 2)  # the oldest went
        self.page(2, 2)
        self.assertEqual(len(self.broker.calls), 4)


class StoredBroker:
    """Answers stored-message reads from a table; records each batch of keys."""

    def __init__(self, stored: dict[str, bytes]) -> None:
        self.stored = stored
        self.batches: list[list[str]] = []
        self.down = False

    def fetchMany(self, keys: list[str]) -> list[defer.Deferred[Optional[bytes]]]:
        self.batches.append(list(keys))
        if self.down:
            return [defer.fail(BrokerUnavailable("down")) for _ in keys]
        return [defer.succeed(self.stored.get(key)) for key in keys]


class StoredReadsTests(SynchronousTestCase):
    def setUp(self) -> None:
        from ws4tx.server.streams import StoredReads

        self.clock = Clock()
        self.broker = StoredBroker({"a": b"A", "b": b"B"})
        self.stored = StoredReads(self.broker, self.clock)  # type: ignore[arg-type]

    def test_theStoredMessagesAskedForInOneTurnAreOneRead(self) -> None:
        """Clients that join in one turn cost one read of their channels' stored
        messages, each channel once, sent on the next turn (once every asker's
        subscription is in place); each client gets its channels', in its order."""
        first = self.stored.fetchMany(["a", "c"])
        second = self.stored.fetchMany(["b", "a"])
        self.assertEqual(self.broker.batches, [])
        self.clock.advance(0)
        self.assertEqual(self.broker.batches, [["a", "c", "b"]])
        self.assertEqual([self.successResultOf(d) for d in first], [b"A", None])
        self.assertEqual([self.successResultOf(d) for d in second], [b"B", b"A"])
        third = self.stored.fetchMany(["a"])
        self.clock.advance(0)
        self.assertEqual(self.broker.batches[1:], [["a"]])
        self.assertEqual(self.successResultOf(third[0]), b"A")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aFailedReadFailsEveryAskerOfItsChannels(self) -> None:
        """A read that fails (Redis down) fails each client's wait for it."""
        self.broker.down = True
        first, second = self.stored.fetchMany(["a"]), self.stored.fetchMany(["a"])
        self.clock.advance(0)
        self.failureResultOf(first[0], BrokerUnavailable)
        self.failureResultOf(second[0], BrokerUnavailable)


class BarrierAfterReadsTests(SynchronousTestCase):
    """The barrier that orders joining clients' reads against live messages goes right
    after the reads of their turn, in the same turn, one for all of them: pipelined
    behind the reads on each server's command connection, not after their answers."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[str] = []
        self.broker = CountingBroker()
        histories = self.broker.histories

        def reading(reads: list[HistoryRead]) -> list[defer.Deferred[History]]:
            self.sent.append("histories")
            return histories(reads)

        self.broker.histories = reading  # type: ignore[method-assign]
        self.barriers: list[defer.Deferred[None]] = []
        from ws4tx.server.streams.node_streams import Streams

        self.streams = Streams(None, self.broker, self.clock, _NoChannels(),  # type: ignore[arg-type]
                               self.barrier, lambda reason: None)

    def barrier(self, at_once: bool = False) -> defer.Deferred[None]:
        self.sent.append("barrier now" if at_once else "barrier next turn")
        d: defer.Deferred[None] = defer.Deferred()
        self.barriers.append(d)
        return d

    def test_oneBarrierRightAfterTheReadsOfTheTurn(self) -> None:
        got = []
        for since in (1, 2, 3):
            self.streams.reads.read("ws4tx:broadcast:chat", RETENTION, since)
            self.streams.barrierAfterReads().addBoth(got.append)
        self.assertEqual(self.sent, [])
        self.clock.advance(0)
        self.assertEqual(self.sent, ["histories", "barrier now"])
        self.assertEqual(got, [])
        self.barriers[0].callback(None)
        self.assertEqual(got, [None, None, None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_itsFailureIsEveryWaitersFailure(self) -> None:
        got = []
        self.streams.reads.read("ws4tx:broadcast:chat", RETENTION, 1)
        self.streams.barrierAfterReads().addErrback(got.append)
        self.streams.barrierAfterReads().addErrback(got.append)
        self.clock.advance(0)
        self.barriers[0].errback(BrokerUnavailable("down"))
        self.assertEqual([f.check(BrokerUnavailable) for f in got],
                         [BrokerUnavailable, BrokerUnavailable])

    def test_afterTheStoredReadsOfTheTurnToo(self) -> None:
        """The stored-message reads of a turn are sent at its end too: a joining client's
        barrier follows them, whichever batch goes last (a barrier before the MGET let a
        message published between the two come both stored and live)."""
        def fetchMany(keys: list[str]) -> list[defer.Deferred[Optional[bytes]]]:
            self.sent.append("stored")
            return [defer.succeed(None) for _ in keys]

        self.broker.fetchMany = fetchMany  # type: ignore[attr-defined]
        got: list[Any] = []
        self.streams.stored.fetchMany(["ws4tx:broadcast:news"])
        self.streams.barrierAfterReads().addBoth(got.append)
        self.streams.stored.fetchMany(["ws4tx:broadcast:chat"])
        self.streams.reads.read("ws4tx:broadcast:chat", RETENTION, 1)
        self.streams.barrierAfterReads().addBoth(got.append)
        self.clock.advance(0)
        self.assertEqual(self.sent, ["stored", "histories", "barrier now"])
        self.barriers[0].callback(None)
        self.assertEqual(got, [None, None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withoutReadsTheBarrierOfTheTurn(self) -> None:
        """A client with nothing to read (its stored messages are fetched at once) gets
        the barrier of the turn, shared with the other clients of the turn."""
        self.streams.barrierAfterReads()
        self.assertEqual(self.sent, ["barrier next turn"])


class _NoChannels:
    client_of: Any = None
