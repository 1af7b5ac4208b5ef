"""Positioning on live connections (issue #11, part 4): the router notices a message that
skips offsets or changes epoch, and recovers the channel from its history once for all its
local clients; after a broker outage it recovers every channel it holds. The pure rules
from tables; the router on a task.Clock with a history reader the test answers."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.history import (
    DUPLICATE,
    IN_SEQUENCE,
    NEW_EPOCH,
    SKIPPED,
    History,
    Position,
    Publication,
    follow,
    start_of,
    with_position,
)
from ws4tx.server import router as router_module
from ws4tx.server.broker import BrokerUnavailable
from ws4tx.server.router import Router
from ws4tx.testing import MemoryBroker, MemoryBus

E, F = "e1", "f2"
CH = "ws4tx:broadcast:chat"


def _p(offset: int, epoch: str = E) -> Position:
    return Position(offset, epoch)


class FollowTests(SynchronousTestCase):
    """history.follow: what the router does with a live message, given the last one it
    handed on; history.start_of: where a channel goes on from after a read."""

    TABLE = [
        ("the first message a node sees", None, _p(7), IN_SEQUENCE),
        ("the next one", _p(7), _p(8), IN_SEQUENCE),
        ("the same one again", _p(7), _p(7), DUPLICATE),
        ("an older one (it was recovered already)", _p(7), _p(3), DUPLICATE),
        ("one lost on the way", _p(7), _p(9), SKIPPED),
        ("many lost", _p(7), _p(900), SKIPPED),
        ("another epoch, first offset", _p(7), _p(1, F), NEW_EPOCH),
        ("another epoch, lower offset", _p(7), _p(3, F), NEW_EPOCH),
        ("another epoch, higher offset", _p(7), _p(30, F), NEW_EPOCH),
        ("from offset 0 of a fresh epoch", _p(0), _p(1), IN_SEQUENCE),
    ]

    def test_table(self) -> None:
        for name, last, got, expected in self.TABLE:
            self.assertEqual(follow(last, got), expected, name)

    START_TABLE: list[tuple[str, History, list[Optional[Position]], Position]] = [
        ("nothing held: the last offset read", History(E, 9, []), [], _p(9)),
        ("held messages start after it", History(E, 9, []), [_p(10), _p(11)], _p(9)),
        ("held messages start before it: just before the first",
         History(E, 9, []), [_p(8), _p(9), _p(10)], _p(7)),
        ("held messages of another epoch do not count", History(F, 2, []),
         [_p(5, E), _p(2, F)], _p(1, F)),
        ("held without positions do not count", History(E, 4, []), [None, _p(3)], _p(2)),
        ("never below 0", History(E, 0, []), [_p(0)], _p(0)),
    ]

    def test_startTable(self) -> None:
        for name, read, live, expected in self.START_TABLE:
            self.assertEqual(start_of(read, live), expected, name)


class Member:
    """A router member that records what it gets, and what it is told."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Optional[Position], bytes]] = []
        self.told: list[tuple[str, bool, Optional[str], Optional[Position], int]] = []
        self.interruptions = self.resumptions = 0

    def deliver(self, prepared: Any, channel: str, payload: bytes) -> None:
        self.got.append((channel, prepared.position, payload))

    def deliverRun(self, run: Any, channel: str) -> None:
        for prepared, payload in run.items:
            self.deliver(prepared, channel, payload)

    def deliveryInterrupted(self) -> None:
        self.interruptions += 1

    def deliveryResumed(self) -> None:
        self.resumptions += 1

    def messagesDropped(self, count: int) -> None:
        pass

    def closeWith(self, code: int, reason: str) -> None:
        pass

    def channelRecovered(self, channel: str, recovered: bool, reason: Optional[str],
                         position: Optional[Position], messages: int) -> None:
        self.told.append((channel, recovered, reason, position, messages))

    def offsets(self, channel: str = CH) -> list[int]:
        return [p.offset for c, p, _ in self.got if c == channel and p is not None]


class Prepared:
    """What the router prepares a frame as: the payload, with the position it sets."""

    def __init__(self, payload: bytes, binary: bool) -> None:
        self.payload = self.plain = payload
        self.position: Optional[Position] = None

    def published(self, channel: str) -> Prepared:
        """As event clients get it (the router measures its frame)."""
        return self


class RouterPositioningTests(SynchronousTestCase):
    """The router's positioning, with the reads of the history answered by the test."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(MemoryBus(self.clock))
        #: (channel, since, Deferred) of every read asked for.
        self.reads: list[tuple[str, Position, defer.Deferred[History]]] = []
        self.router = Router(self.broker, Prepared, clock=self.clock,
                             has_history=lambda channel: True, read_history=self.read)
        self.broker.start(self.router)
        self.members = [Member() for _ in range(3)]
        for member in self.members:
            self.router.join(member, [CH])
        self.clock.advance(0)

    def read(self, channel: str, since: Position) -> defer.Deferred[History]:
        d: defer.Deferred[History] = defer.Deferred()
        self.reads.append((channel, since, d))
        return d

    def live(self, offset: int, epoch: str = E, channel: str = CH) -> None:
        self.router.messageReceived(channel, with_position(b"m%d" % offset,
                                                           Position(offset, epoch)))

    def answer(self, top: int, offsets: list[int], epoch: str = E, index: int = -1) -> None:
        self.reads[index][2].callback(History(epoch, top, [
            Publication(o, b"m%d" % o) for o in offsets]))

    def test_aSkipIsRecoveredOnceForAllClientsInOrderWithoutDuplicates(self) -> None:
        """Offsets 1, 2, then 5: the router reads since 2 once (not once per client),
        holds what comes meanwhile (4 again, 6), and every client gets 1 to 6 once, in
        order; nobody is told anything."""
        self.live(1)
        self.live(2)
        self.live(5)
        self.assertEqual([(c, s) for c, s, _ in self.reads], [(CH, _p(2))])
        self.live(4)  # came late, also in the history
        self.live(6)
        self.assertEqual(self.members[0].offsets(), [1, 2])
        self.answer(5, [3, 4, 5])
        for member in self.members:
            self.assertEqual(member.offsets(), [1, 2, 3, 4, 5, 6])
            self.assertEqual([p for _, _, p in member.got][2], b"m3")
            self.assertEqual(member.told, [])
        self.assertEqual(len(self.reads), 1)
        self.live(6)  # a duplicate of a recovered one
        self.live(7)
        self.assertEqual(self.members[0].offsets(), [1, 2, 3, 4, 5, 6, 7])
        # Duplicates: 4 and 5 (held, and given by the read), then 6 again.
        self.assertEqual((self.router.stats["skips"], self.router.stats["recovered"],
                          self.router.stats["duplicates"]), (1, 3, 3))
        self.assertEqual(self.router.recovering(), 0)

    def test_aTrimmedHistoryIsToldAndDeliveryGoesOn(self) -> None:
        """The history no longer holds the lost ones: every client is told (trimmed) with
        where the channel goes on from, then gets the held messages."""
        self.live(1)
        self.live(9)
        self.live(10)
        self.answer(10, [8, 9, 10])
        for member in self.members:
            self.assertEqual(member.told, [(CH, False, "trimmed", _p(8), 0)])
            self.assertEqual(member.offsets(), [1, 9, 10])

    def test_aNewEpochIsToldAndWhatItHoldsIsRecovered(self) -> None:
        """A message of another epoch: the router reads the channel once to see whether
        the stream's epoch confirms it; it does: clients are told (epoch) once; the new
        epoch's earlier messages are read from offset 0 and come before it."""
        self.live(1)
        self.live(3, epoch=F)
        self.assertEqual([s for _, s, _ in self.reads], [_p(1)])
        self.assertEqual(self.members[0].told, [])
        self.answer(3, [1, 2, 3], epoch=F)
        for member in self.members:
            self.assertEqual(member.told, [(CH, False, "epoch", _p(0, F), 0)])
        self.assertEqual([s for _, s, _ in self.reads], [_p(1), _p(0, F)])
        self.answer(3, [1, 2, 3], epoch=F)
        self.assertEqual([(p.offset, p.epoch) for _, p, _ in self.members[0].got],
                         [(1, E), (1, F), (2, F), (3, F)])
        self.live(1, epoch=F)  # late: dropped
        self.live(4, epoch=F)
        self.assertEqual(self.members[0].offsets()[-1], 4)
        self.assertEqual(len(self.members[0].got), 5)

    def test_aForgedEpochCostsOneReadAndIsDropped(self) -> None:
        """A message of an epoch the stream does not have (forged): one read shows the
        stream's epoch unchanged; it is dropped, nobody is told, nothing is resent, and
        the messages that follow flow."""
        self.live(1)
        self.live(2, epoch=F)
        self.live(2)
        self.answer(1, [1])
        self.assertEqual(len(self.reads), 1)
        for member in self.members:
            self.assertEqual(member.told, [])
            self.assertEqual([(p.offset, p.epoch) for _, p, _ in member.got],
                             [(1, E), (2, E)])
        self.assertEqual(self.router.stats["impossible"], 1)

    def test_aForgedPositionCostsOneReadAndLiveMessagesFlow(self) -> None:
        """A position far past the stream's end (forged): one read shows it cannot be
        true; it is dropped, nobody is told; during the quiet that follows more forged
        ones wait without a read while real messages flow; once the quiet is over they
        cost one more read, and the quiet doubles."""
        self.live(1)
        self.live(999_999_999)
        self.live(2)
        self.answer(2, [2])
        self.assertEqual(len(self.reads), 1)
        self.assertEqual(self.members[0].offsets(), [1, 2])
        self.assertEqual(self.members[0].told, [])
        for _ in range(100):
            self.live(999_999_999)
        self.live(3)
        self.live(4)
        self.assertEqual(len(self.reads), 1)
        self.assertEqual(self.members[0].offsets(), [1, 2, 3, 4])
        self.clock.advance(router_module.QUIET)
        self.assertEqual(len(self.reads), 2)
        self.answer(4, [])
        self.assertEqual(self.members[0].offsets(), [1, 2, 3, 4])
        self.assertEqual(self.members[0].told, [])
        self.live(999_999_999)
        self.clock.advance(2 * router_module.QUIET - 0.01)
        self.assertEqual(len(self.reads), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(self.reads), 3)
        self.answer(4, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_anUnreadableHistoryIsRetriedThenGivenUp(self) -> None:
        """Broker unavailable (its command connection may come back after its
        subscriber): the read is tried again later; after the last try the clients are
        told (unavailable) and get the held messages in order."""
        self.live(1)
        self.live(3)
        for attempt in range(1, router_module.READ_ATTEMPTS + 1):
            self.assertEqual(len(self.reads), attempt)
            self.reads[-1][2].errback(BrokerUnavailable("down"))
            self.clock.advance(router_module.READ_RETRY_DELAY * attempt)
        self.assertEqual(len(self.reads), router_module.READ_ATTEMPTS)
        for member in self.members:
            self.assertEqual(member.told, [(CH, False, "unavailable", None, 0)])
            self.assertEqual(member.offsets(), [1, 3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aRetriedReadThatSucceedsRecovers(self) -> None:
        self.live(1)
        self.live(3)
        self.reads[-1][2].errback(BrokerUnavailable("down"))
        self.clock.advance(router_module.READ_RETRY_DELAY - 0.01)
        self.assertEqual(len(self.reads), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.reads), 2)
        self.answer(3, [2, 3])
        self.assertEqual(self.members[0].offsets(), [1, 2, 3])

    def test_afterAnOutageEveryChannelIsRecoveredOnceAndClientsAreTold(self) -> None:
        """The broker reconnects: each channel with a position is read since it, once;
        the clients get the missed messages, then are told they recovered."""
        other = "ws4tx:broadcast:chat2"
        member = Member()
        self.router.join(member, [CH, other])
        self.clock.advance(0)
        self.live(1)
        self.live(4, channel=other)
        self.broker.disconnect()
        self.broker.reconnect()
        self.assertEqual(sorted((c, s) for c, s, _ in self.reads),
                         [(CH, _p(1)), (other, _p(4))])
        self.live(3)  # arrived live after the resubscription, before the read answered
        self.answer(3, [2, 3], index=0 if self.reads[0][0] == CH else 1)
        self.answer(4, [], index=1 if self.reads[0][0] == CH else 0)
        self.assertEqual(member.offsets(), [1, 2, 3])
        self.assertEqual(member.offsets(other), [4])
        self.assertEqual(sorted(member.told), [(CH, True, None, None, 2),
                                               (other, True, None, None, 0)])
        self.assertEqual(self.members[0].told, [(CH, True, None, None, 2)])

    def test_channelsWithoutPositionAreNotRead(self) -> None:
        """A channel on which nothing came (and no client learned where it stands) is
        not read after an outage: there is nothing to recover from."""
        self.broker.disconnect()
        self.broker.reconnect()
        self.assertEqual(self.reads, [])

    def test_clientsThatLeaveDuringARecoveryGetNothingMore(self) -> None:
        self.live(1)
        self.live(3)
        for member in self.members:
            self.router.leave(member)
        self.answer(3, [2, 3])
        self.assertEqual(self.members[0].offsets(), [1])
        self.assertEqual(self.router.recovering(), 0)

    def test_tooMuchHeldGivesUp(self) -> None:
        """Live messages held past the backlog bound while the read does not come: the
        clients are told and get them, in order."""
        small = Router(self.broker, Prepared, clock=self.clock, max_backlog=3,
                       has_history=lambda channel: True, read_history=self.read)
        member = Member()
        small.join(member, [CH])
        self.broker.listener = small
        self.clock.advance(0)
        for offset in (1, 3, 4, 5, 6):
            small.messageReceived(CH, with_position(b"x", _p(offset)))
        self.assertEqual(member.told, [(CH, False, "unavailable", None, 0)])
        self.assertEqual(member.offsets(), [1, 3, 4, 5, 6])
        self.answer(6, [2, 3, 4, 5, 6])  # too late: ignored
        self.assertEqual(member.offsets(), [1, 3, 4, 5, 6])
