"""Where each channel with history stands, and its recovery after a gap or an outage:
one read for all the channel's local clients, its live messages held meanwhile, then
handed on in order, once each."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx.history import (
    DUPLICATE,
    EPOCH_CHANGED,
    NEW_EPOCH,
    SKIPPED,
    UNAVAILABLE,
    History,
    Position,
    follow,
    start_of,
    step,
    strip_position,
)
from ws4tx.server._log import observer
from ws4tx.server.hub import Hub
from ws4tx.server.streams._retry import retried
from ws4tx.server.streams.batched_reads import FIRST_PAGE, PAGE_BYTES, SharedHistory


class StreamClient(Protocol):
    """What a channel's recovery tells each client of the channel (a
    :class:`ClientStream`; a router's member itself when it has none)."""

    def catchUp(self, channel: str, since: Position, first: Any, announce: bool) -> None:
        """More was missed on ``channel`` than one page of its history (``first``, a
        :class:`SharedHistory`) may hand on at once: the client reads the rest as its
        socket drains."""

    def channelRecovered(self, channel: str, recovered: bool, reason: Optional[str],
                         position: Optional[Position], messages: int) -> None:
        """The node recovered ``channel`` after a broker outage (``messages`` missed
        ones follow), or could not recover it (after an outage or a message lost on the
        way): ``reason`` (:data:`ws4tx.TRIMMED`, ...), and where the channel
        goes on from (``position``, when known)."""


#: A function that reads a channel's history since a position (its offset): the node's.
ReadHistory = Callable[[str, Position], "defer.Deferred[History]"]
#: Hands a live or recovered message on to a channel's clients (the router's fan-out).
HandOn = Callable[[str, bytes, Optional[Position]], None]


@dataclass
class _Recovery:
    """A channel being recovered from its history: since ``since``; the live messages
    held meanwhile (payload, position); whether its clients are told the outcome even
    when it succeeds (after an outage)."""

    since: Position
    held: list[tuple[bytes, Position]] = field(default_factory=list)
    announce: bool = False
    #: How many of ``held`` made the node read (they were published before the read).
    triggers: int = 0


#: After a history read that found a position that cannot be true (forged), a channel's
#: skips wait this long before they make the node read again, doubling up to QUIET_MAX
#: while it goes on; live messages that follow flow meanwhile.
QUIET = 1.0
QUIET_MAX = 30.0
#: Skipping messages kept per channel while it is quiet (the oldest is dropped).
MAX_SUSPECTS = 64


class ChannelStreams:
    """The position of each channel of a facility with history (``has_history``) that
    local clients listen to, and its recovery from the history (``read_history``) when
    a live message does not follow it, or after an outage: one read for all the
    channel's clients, its live messages held meanwhile, then handed on in order
    (``hand_on``) once each.

    A channel's message carries its position (:func:`ws4tx.history.with_position`):
    :meth:`live` strips it, so that clients get exactly the payload that was published.
    A duplicate is dropped; after a skip (a message lost on the way) or a new epoch, the
    channel is read since its position; when the history cannot give what was missed
    (trimmed, new epoch, unreadable) the channel's clients are told and it goes on from
    where it stands; when more was missed than one page may hand on at once, each client
    catches up at its own pace (:meth:`StreamClient.catchUp`). ``stats`` is the dict it
    counts in (the router's); ``max_held`` bounds the live messages held per channel.
    """

    log = Logger(observer=observer)

    def __init__(self, hub: Hub[Any], clock: IReactorTime, hand_on: HandOn,
                 stats: dict[str, int], has_history: Optional[Callable[[str], bool]] = None,
                 read_history: Optional[ReadHistory] = None,
                 max_held: int = 10_000) -> None:
        self._hub = hub
        self._clock = clock
        self._hand_on = hand_on
        self.stats = stats
        self._has_history = has_history
        self._read_history = read_history
        self._max_held = max_held
        #: What each channel's recovery tells a member of the hub: its stream state
        #: (see :class:`Streams`), else the member itself.
        self.client_of: Callable[[Any], StreamClient] = lambda member: member
        #: channel -> whether it carries positions (has_history, asked once per channel).
        self._positioned: dict[str, bool] = {}
        #: channel -> the position of the last message handed on to its clients
        #: (channels of facilities with history, while a local client listens).
        self.positions: dict[str, Position] = {}
        #: channel -> its recovery from the history, while one is under way.
        self._recovering: dict[str, _Recovery] = {}
        #: channel -> until when its skips wait (a forged position was read), how many
        #: reads in a row found one, the skipping messages waiting, and the call that
        #: looks at them again.
        self._quiet_until: dict[str, float] = {}
        self._strikes: Counter[str] = Counter()
        self._suspects: dict[str, list[tuple[bytes, Position]]] = {}
        self._wake: dict[str, IDelayedCall] = {}

    def live(self, channel: str, payload: bytes) -> Optional[tuple[bytes, Optional[Position]]]:
        """A live message of ``channel`` as it is to be handed on now (its payload
        without its position, and the position), or None: it is dropped or held."""
        if self._has_history is None:
            return payload, None
        positioned = self._positioned.get(channel)
        if positioned is None:
            positioned = self._positioned[channel] = self._has_history(channel)
        if not positioned:
            return payload, None
        position, payload = strip_position(payload)
        if position is not None and not self._inSequence(channel, payload, position):
            return None
        return payload, position

    def learned(self, channel: str, position: Position) -> None:
        """A client read ``channel``'s position from its history after it subscribed:
        the node's own, until a message comes, when it has none (every later message
        comes live)."""
        if channel in self._hub.channels() and channel not in self.positions:
            self.positions[channel] = position

    def forget(self, channel: str) -> None:
        """No local client listens to ``channel`` any more."""
        self._positioned.pop(channel, None)
        self.positions.pop(channel, None)
        self._recovering.pop(channel, None)
        self._quiet_until.pop(channel, None)
        self._strikes.pop(channel, None)
        self._suspects.pop(channel, None)
        wake = self._wake.pop(channel, None)
        if wake is not None and wake.active():
            wake.cancel()

    def recoverAfterOutage(self, channels: Iterable[str]) -> None:
        """What was published on ``channels`` while their Redis was away is in their
        histories: each with a position is read since it (one read per channel, for all
        its clients, who are told the outcome)."""
        if self._read_history is None:
            return
        for channel in channels:
            position = self.positions.get(channel)
            recovery = self._recovering.get(channel)
            if recovery is not None:
                recovery.announce = True
            elif position is not None and self._hub.members(channel):
                self._recover(channel, position, announce=True)

    def _inSequence(self, channel: str, payload: bytes, position: Position) -> bool:
        """Whether a live message at ``position`` is to be handed on now: it follows the
        last one. A duplicate is dropped; one held while its channel is recovered waits;
        after a skip or another epoch, recovery starts (holding it): one read, which
        also shows whether the position can be true (see :meth:`_readDone`); while the
        channel is quiet after a forged one, skipping messages wait and the others
        flow."""
        recovery = self._recovering.get(channel)
        if recovery is not None:
            recovery.held.append((payload, position))
            if len(recovery.held) > self._max_held:
                self._gaveUp(channel)
            return False
        last = self.positions.get(channel)
        verdict = follow(last, position)
        if verdict == DUPLICATE:
            self.stats["duplicates"] += 1
            return False
        if verdict in (SKIPPED, NEW_EPOCH) and self._read_history is not None:
            assert last is not None
            if self._clock.seconds() < self._quiet_until.get(channel, 0.0):
                self._park(channel, payload, position)
                return False
            self.stats["skips" if verdict == SKIPPED else "epochs"] += 1
            self._recover(channel, last, [(payload, position)], triggers=1)
            return False
        if verdict == NEW_EPOCH:
            # Nothing to read it from: the channel's clients are told.
            self.stats["epochs"] += 1
            self.stats["unrecovered"] += 1
            self._tell(channel, False, EPOCH_CHANGED, Position(0, position.epoch))
        self.positions[channel] = position
        return True

    def _park(self, channel: str, payload: bytes, position: Position) -> None:
        """Keep a skipping message of a quiet channel until its quiet ends."""
        suspects = self._suspects.setdefault(channel, [])
        suspects.append((payload, position))
        if len(suspects) > MAX_SUSPECTS:
            del suspects[0]
            self.stats["impossible"] += 1
        if channel not in self._wake:
            delay = self._quiet_until[channel] - self._clock.seconds()
            self._wake[channel] = self._clock.callLater(max(0.0, delay), self._woken,
                                                        channel)

    def _woken(self, channel: str) -> None:
        """A channel's quiet is over: its skipping messages are looked at again, in the
        order they came (the first that still skips makes one read)."""
        self._wake.pop(channel, None)
        self._reconsider(channel, self._suspects.pop(channel, []))

    def _recover(self, channel: str, since: Position,
                 held: Optional[list[tuple[bytes, Position]]] = None,
                 announce: bool = False, triggers: int = 0) -> None:
        """Read (a page of) ``channel``'s history since ``since``, holding its live
        messages until the read is in; the first ``triggers`` of ``held`` made it."""
        read = self._read_history
        assert read is not None
        self.stats["recoveries"] += 1
        recovery = self._recovering[channel] = _Recovery(since, held or [], announce,
                                                         triggers)
        retried(lambda: read(channel, since), self._clock).addBoth(
            self._readDone, channel, recovery)

    def _readDone(self, result: Any, channel: str, recovery: _Recovery) -> None:
        if self._recovering.get(channel) is not recovery:
            return  # its clients left meanwhile, or it was given up
        if isinstance(result, Failure):
            self.log.warn("could not read the history of {channel} to recover it: "
                          "{error}", channel=channel, error=result.getErrorMessage())
            self._gaveUp(channel)
            return
        del self._recovering[channel]
        since = recovery.since
        triggers = recovery.held[:recovery.triggers]
        # What made the node read was published before the read: a position past the
        # stream's last offset, or in an epoch the stream does not have, cannot be true.
        true = [(payload, p) for payload, p in triggers
                if p.epoch == result.epoch and p.offset <= result.offset]
        held = true + recovery.held[recovery.triggers:]
        if len(true) < len(triggers):
            self._impossible(channel, len(triggers) - len(true))
        elif triggers:
            self._strikes.pop(channel, None)
        if result.epoch != since.epoch and any(p.epoch == result.epoch for _, p in true):
            # The stream's epoch confirms the new one a live message showed: the
            # channel's history was lost. Its clients are told; what the new epoch holds
            # is read (from offset 0) like any skip.
            self.stats["unrecovered"] += 1
            start = self.positions[channel] = Position(0, result.epoch)
            self.log.warn("the history of {channel} was lost (new epoch); telling its "
                          "clients", channel=channel)
            self._tell(channel, False, EPOCH_CHANGED, start)
            self._recover(channel, start, held)
            return
        page = step(since.epoch, since.offset + 1, result, FIRST_PAGE, first=True)
        if page.reason is not None:
            self._failed(channel, page.reason, result, held)
            return
        if not page.done or sum(len(p.payload) for p in page.publications) > PAGE_BYTES:
            self._handOff(channel, since, result, page.following - 1, recovery.announce)
        else:
            epoch = since.epoch
            for publication in page.publications:
                position = self.positions[channel] = Position(publication.offset, epoch)
                self._hand_on(channel, publication.payload, position)
            if recovery.announce:
                self._tell(channel, True, None, None, len(page.publications))
        self.stats["recovered"] += len(page.publications)
        self._reconsider(channel, held)

    def _handOff(self, channel: str, since: Position, read: History, end: int,
                 announce: bool) -> None:
        """More was missed than one page may hand on at once: each client catches up
        from ``since`` at its own pace, starting with this read (shared); the node goes
        on from where the channel stood when it was read."""
        shared = SharedHistory(read)
        self.positions[channel] = Position(max(end, read.offset), since.epoch)
        for member in tuple(self._hub.members(channel)):
            self.client_of(member).catchUp(channel, since, shared, announce)

    def _reconsider(self, channel: str, held: list[tuple[bytes, Position]]) -> None:
        """The live messages held during a read, looked at again in order: what the
        read gave is dropped, what follows is handed on, a skip is recovered."""
        before = self._recovering.get(channel)
        for payload, position in held:
            if self._hub.members(channel) and self._inSequence(channel, payload, position):
                self._hand_on(channel, payload, position)
        recovery = self._recovering.get(channel)
        if recovery is not None and recovery is not before:
            # Every one of them came before that read was sent: each is checked by it.
            recovery.triggers = len(recovery.held)

    def _impossible(self, channel: str, count: int) -> None:
        """A read showed that ``count`` live positions of ``channel`` cannot be true
        (forged): they are dropped, and the channel's skips wait a while (doubling while
        it goes on) before they make the node read again."""
        self.stats["impossible"] += count
        strikes = self._strikes[channel] = self._strikes[channel] + 1
        quiet = min(QUIET_MAX, QUIET * 2 ** (strikes - 1))
        self._quiet_until[channel] = self._clock.seconds() + quiet
        self.log.warn("dropped {count} message(s) on {channel} whose position its history "
                      "shows cannot be true (forged?); its skips wait {quiet:.0f} s before "
                      "the next read", count=count, channel=channel, quiet=quiet)

    def _failed(self, channel: str, reason: str, read: History,
                held: list[tuple[bytes, Position]]) -> None:
        """The history does not hold what was missed: tell the channel's clients, and go
        on from where it stands (its messages held meanwhile, as they follow)."""
        self.stats["unrecovered"] += 1
        start = self.positions[channel] = start_of(read, [p for _, p in held])
        self.log.warn("could not recover {channel} from its history ({reason}); telling "
                      "its clients", channel=channel, reason=reason)
        self._tell(channel, False, reason, start)
        self._reconsider(channel, held)

    def _gaveUp(self, channel: str) -> None:
        """The history cannot be read (or too much waits for it): tell the channel's
        clients, and hand on what was held, in order."""
        recovery = self._recovering.pop(channel)
        self.stats["unrecovered"] += 1
        self._tell(channel, False, UNAVAILABLE, None)
        for payload, position in recovery.held:
            last = self.positions.get(channel)
            if last is None or position.epoch != last.epoch or position.offset > last.offset:
                self.positions[channel] = position
                self._hand_on(channel, payload, position)

    def _tell(self, channel: str, recovered: bool, reason: Optional[str],
              position: Optional[Position], messages: int = 0) -> None:
        for member in tuple(self._hub.members(channel)):
            self.client_of(member).channelRecovered(channel, recovered, reason, position,
                                                    messages)

    def recovering(self) -> int:
        """How many channels are being recovered from their history now."""
        return len(self._recovering)
