"""One client's streams: the join's replay (stored messages, the history since the
positions asked, held live messages merged in order), the catch-ups the node hands it
after a long gap, and what it is told; it drives its connection through
:class:`StreamTransport`, which frames, writes and paces."""

from __future__ import annotations

from collections import deque
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, AbstractSet, Any, Iterable, Optional, Protocol, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import envelope
from ws4tx.envelope import server_voice
from ws4tx.history import (
    TRIMMED,
    UNAVAILABLE,
    History,
    Merge,
    Page,
    Position,
    Publication,
    merge,
    start_of,
    step,
)
from ws4tx.server import deflate
from ws4tx.server._log import observer
from ws4tx.server.broker import BrokerUnavailable
from ws4tx.server.streams._recovered_event import recovered_event
from ws4tx.server.streams.batched_reads import FIRST_PAGE, SharedHistory
from ws4tx.server.streams.catchup import CatchUp

if TYPE_CHECKING:
    from ws4tx.server.streams.node_streams import Streams


#: The empty table every client shares while it has nothing in one (most of them, once
#: joined): read-only, so a write to it fails loudly instead of reaching every client; a
#: client makes its own dictionary on its first write.
_EMPTY = cast("dict[Any, Any]", MappingProxyType({}))


class StreamTransport(Protocol):
    """What a client's stream state drives: its connection (a WebSocket one, see
    :class:`ws4tx.server.protocol.PushProtocol`; an SSE one would do the same). It frames,
    writes and paces; the stream state decides what goes out, and when."""

    #: Who is at the other end (for the log), and whether it speaks the event envelope.
    peer: Optional[str]
    speaks_events: bool

    @property
    def dropped(self) -> bool:
        """Whether the client is being dropped as slow (it gets nothing more)."""

    def sendStored(self, channel: str, payload: bytes) -> None:
        """Write ``channel``'s stored message now (when still open): as it was stored to
        a connection, in an envelope naming the channel to a subscription."""

    def send(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        """Write a message of ``channel`` after whatever is queued (bounded: a client
        that lets too much wait is dropped as slow)."""

    def queue(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        """Queue a recovered message, written as the client's socket drains."""

    def sendEvent(self, event: str, data: Any) -> None:
        """Emit an event (to a client that speaks events) after what is queued."""

    def pace(self) -> None:
        """Write what is queued while the socket drains, then call
        :meth:`ClientStream.drained` once little is left."""

    def tooSlow(self, why: str) -> None:
        """Drop the client as slow (once), saying ``why``."""


class ClientStream:
    """One client's streams: on join, every channel's stored message and, for an event
    client of a facility with history (``positions``), each channel's history since the
    position it asked to recover from (``recover``) or where the channel stands, merged
    with the live messages held meanwhile; later, the catch-ups the node hands it after a
    long gap (:meth:`catchUp`) and the outcomes it is told (:meth:`channelRecovered`).
    What it decides goes out through its ``transport``; :attr:`careful` says whether live
    messages must pass through :meth:`live` (held, or checked against their positions)."""

    # One per client and subscription: no __dict__.
    __slots__ = ("_catching", "_catchups", "_config", "_following", "_held", "_joining",
                 "_last", "_ordered", "_outcomes", "_positions", "_reads", "_recover",
                 "_replaying", "_retention", "_stored", "_streams", "_subscribed", "_taking",
                 "_transport", "careful", "channels")

    log = Logger(observer=observer)

    def __init__(self, transport: StreamTransport, streams: Streams, facility: str,
                 channels: tuple[str, ...], recover: dict[str, Position]) -> None:
        self._transport = transport
        self._streams = streams
        self._config = config = streams.config
        self.channels = channels
        self._retention = config.history_for(facility)
        #: Whether this client gets messages with their positions (an event client of a
        #: facility with history), and the positions it asked to recover from, by channel.
        self._positions = transport.speaks_events and self._retention is not None
        self._recover: dict[str, Position] = recover if self._positions and recover else _EMPTY
        #: Live frames that came while the stored messages were being fetched (they go
        #: out after them): [(channel, prepared, payload)], None once the replay is done.
        self._held: Optional[list[tuple[str, Any, bytes]]] = [] if channels else None
        #: The stored messages fetched so far. (Here and below, a table is the shared
        #: :data:`_EMPTY` until it is first written.)
        self._stored: dict[str, Optional[bytes]] = _EMPTY
        #: The position of the last message sent on each channel (or where the client
        #: was told the channel stands): what comes again (a live message the node
        #: also recovered) is not sent twice.
        self._last: dict[str, Position] = _EMPTY
        #: The history reads of the channels being recovered (a SharedHistory, or the
        #: failure).
        self._reads: dict[str, Any] = _EMPTY
        #: The catch-ups under way; those of the join still to start, with their first
        #: page; their outcomes (recovered, reason, messages) and the offset each
        #: reached; whether the join's reads were ordered.
        self._catchups: Optional[list[CatchUp]] = None  # None: none under way
        #: (None when there are none: most clients recover nothing.)
        self._joining: Optional[deque[tuple[CatchUp, SharedHistory]]] = None
        self._outcomes: dict[str, tuple[bool, Optional[str], int]] = _EMPTY
        self._following: dict[str, int] = _EMPTY
        self._ordered = True
        self._taking = self._replaying = False
        #: channel -> the live frames held while the node's catch-up of it runs.
        self._catching: dict[str, list[tuple[deflate.Message, bytes]]] = _EMPTY
        self.careful = True
        self._recheck()
        self._subscribed: Optional[defer.Deferred[None]] = defer.Deferred()
        self._subscribed.addBoth(self._letGo).addCallback(self._replay)

    @property
    def subscribed(self) -> defer.Deferred[None]:
        """Fires once the client's channels are subscribed (and its replay is on the
        way); once it has, a Deferred that has fired (the stream does not keep it)."""
        if self._subscribed is None:
            return defer.succeed(None)
        return self._subscribed

    def _letGo(self, result: Any) -> Any:
        self._subscribed = None
        return result

    def _recheck(self) -> None:
        self.careful = self._positions or self._held is not None or bool(self._catching)

    @property
    def catching(self) -> bool:
        """Whether a catch-up is under way (the transport paces it)."""
        return bool(self._catchups)

    # Joining

    def _replay(self, _: object) -> None:
        """Fetch every channel's stored message and, for an event client of a facility
        with history, the history of its channels (since its positions, or where they
        stand): all in flight at once, the reads shared with the other clients that
        join in this turn."""
        streams = self._streams
        waits: list[defer.Deferred[Any]] = []
        # Every channel's stored message, read with those of the other clients that join
        # in this turn (an MGET per Redis server).
        stored = streams.stored.fetchMany(self.channels) if self.channels else []
        for channel, fetched in zip(self.channels, stored, strict=True):
            waits.append(fetched.addCallbacks(
                self._fetched, self._noReplay, callbackArgs=(channel,),
                errbackArgs=(channel,)))
        retention = self._retention
        if retention is not None and self._positions:
            for channel in self.channels:
                # Since the client's position; else only the channel's epoch and last
                # offset, which become the client's position. Shared with the other
                # clients that ask in this turn (see HistoryReads).
                position = self._recover.get(channel)
                waits.append(streams.reads.read(
                    channel, retention, None if position is None else position.offset)
                    .addBoth(self._read, channel))
        if not waits:
            return
        # A message published before the reads may still be on its way here (the
        # subscriber and the command connection are two sockets): wait for it, by a
        # barrier sent right after the reads, not after their answers (one round trip).
        # (A single wait, as most joins have, is not gathered into a list of one.)
        barrier = streams.barrierAfterReads()
        (waits[0] if len(waits) == 1 else defer.gatherResults(waits)).addCallback(
            lambda _: barrier.addErrback(self._barrierAgain)).addBoth(self._replayStored)

    def _barrierAgain(self, failure: Failure) -> Any:
        """The barrier sent with the reads found the broker unavailable, which the reads,
        tried again, outlived: a barrier after them (a failure again is for
        :meth:`_replayStored` to judge)."""
        if failure.check(BrokerUnavailable):
            return self._streams.barrier()
        return failure

    def _noReplay(self, failure: Failure, channel: str) -> None:
        self.log.debug("no replay for {peer}: {error}", peer=self._transport.peer,
                       error=failure.getErrorMessage())
        self._fetched(None, channel)

    def _fetched(self, stored: Optional[bytes], channel: str) -> None:
        if self._stored is _EMPTY:
            self._stored = {}
        self._stored[channel] = stored

    def _read(self, result: Any, channel: str) -> None:
        if isinstance(result, Failure):
            self.log.info("recovering {channel} for {peer} failed: {error}", channel=channel,
                          peer=self._transport.peer, error=result.getErrorMessage())
        self._readOf(channel, result)

    def _readOf(self, channel: str, read: Any) -> None:
        if self._reads is _EMPTY:
            self._reads = {}
        self._reads[channel] = read

    def _outcome(self, channel: str, outcome: tuple[bool, Optional[str], int]) -> None:
        if self._outcomes is _EMPTY:
            self._outcomes = {}
        self._outcomes[channel] = outcome

    def _replayStored(self, result: object) -> None:
        """Every channel's stored message is in, and every live message published before
        it too (or the broker is down): send the stored ones, and catch the client up on
        each channel it asked to recover, one after the other, a page at a time as its
        socket drains; live frames stay held meanwhile. A stored message that also came
        live (it was published, then stored, while the client joined) is sent once,
        live."""
        if self._held is None:
            return  # it went away meanwhile
        # Ordered: every message published before the reads has arrived (the barrier), or
        # none can any more (the subscriber is down: what was published meanwhile is
        # recovered by the node from the positions it learns here once it is back).
        self._ordered = not isinstance(result, Failure) or bool(result.check(BrokerUnavailable))
        live = {(channel_, payload) for channel_, _, payload in self._held}
        budget = self._config.max_recovery
        for channel_ in self.channels:
            asked = self._recover.get(channel_)
            if asked is not None and channel_ in self._reads:
                read = self._reads[channel_]
                if not isinstance(read, SharedHistory):
                    self._outcome(channel_, (False, UNAVAILABLE, 0))
                else:
                    first = step(asked.epoch, asked.offset + 1, read.history, FIRST_PAGE,
                                 first=True)
                    need = read.history.offset - asked.offset
                    if first.reason is None and need > budget:
                        first = Page((), asked.offset + 1, True, TRIMMED)
                    if first.reason is None:
                        budget -= need
                        self._at(channel_, asked)
                        if self._joining is None:
                            self._joining = deque()
                        self._joining.append((CatchUp(
                            channel_, asked, partial(self._readPage, channel_),
                            partial(self._enqueue, channel_), self._joinCaughtUp,
                            self._transport.pace), read))
                        continue
                    self._outcome(channel_, (False, first.reason, 0))
            message = self._stored.get(channel_)
            if message is not None and (channel_, message) not in live:
                self._sendStored(channel_, message)
        self._stored = _EMPTY
        self._replaying = True
        self._nextCatchUp()

    def _nextCatchUp(self) -> None:
        """Start the next channel's catch-up of the join; once none is left, finish."""
        while self._joining:
            catchup, first = self._joining.popleft()
            self._started(catchup)
            self._taking = True
            catchup.take(first, FIRST_PAGE)
            self._taking = False
            self._transport.pace()
            if not catchup.done:
                return
        self._joining = None
        if self._held is not None:
            self._joinDone()

    def _started(self, catchup: CatchUp) -> None:
        if self._catchups is None:
            self._catchups = []
        self._catchups.append(catchup)

    def _ended(self, catchup: CatchUp) -> None:
        assert self._catchups is not None
        self._catchups.remove(catchup)
        if not self._catchups:
            self._catchups = None

    def _joinCaughtUp(self, catchup: CatchUp) -> None:
        self._ended(catchup)
        if catchup.last_read is not None:
            self._readOf(catchup.channel, SharedHistory(catchup.last_read))
        self._outcome(catchup.channel, (catchup.reason is None, catchup.reason,
                                        catchup.sent))
        if self._following is _EMPTY:
            self._following = {}
        self._following[catchup.channel] = catchup.following
        if not self._taking:
            self._nextCatchUp()

    def _joinDone(self) -> None:
        """Every channel is caught up: the positions of the channels not recovered, the
        verdict, then the live frames held meanwhile, in the order they came."""
        held, self._held = self._held or [], None
        self._replaying = False
        self._recheck()
        merges = self._merge(held)
        keep = [True] * len(held)
        for channel_, merging in merges.items():
            indexes = [i for i, (c, _, _) in enumerate(held) if c == channel_]
            for index, kept in zip(indexes, merging.live, strict=True):
                keep[index] = kept
        learned = self._learned(merges, held, ordered=self._ordered)
        for channel_, start in learned.items():
            self._at(channel_, start)
        transport = self._transport
        if learned:
            transport.sendEvent(envelope.POSITIONS_EVENT, {"channels": {
                channel_: {"epoch": p.epoch, "offset": p.offset}
                for channel_, p in learned.items()}})
        if self._recover:
            verdict = recovered_event(merges, self._outcomes)
            self._streams.verdict(verdict.get("reason"))
            transport.sendEvent(envelope.RECOVERED_EVENT, verdict)
        self._outcomes = self._following = _EMPTY
        for (channel_, prepared, payload), kept in zip(held, keep, strict=True):
            if kept and (not self._positions or prepared.position is None
                         or self._fresh(channel_, prepared.position)):
                transport.send(channel_, self._outgoing(prepared, channel_), payload)

    def _merge(self, held: list[tuple[str, Any, bytes]]) -> dict[str, Merge]:
        """Each channel the client asked to recover: its outcome merged with its live
        messages held meanwhile (those after what the history gave are kept)."""
        merges = {}
        for channel_, (recovered, reason, _) in self._outcomes.items():
            positions = [prepared.position for c, prepared, _ in held if c == channel_]
            read = self._reads.get(channel_)
            if recovered and isinstance(read, SharedHistory):
                epoch = self._recover[channel_].epoch
                end = self._following[channel_] - 1
                merges[channel_] = merge(Position(end, epoch), History(epoch, end),
                                                 positions)
            else:
                merges[channel_] = Merge(False, reason or UNAVAILABLE, (),
                                                 (True,) * len(positions))
        return merges

    def _learned(self, merges: dict[str, Merge], held: list[tuple[str, Any, bytes]],
                 ordered: bool) -> dict[str, Position]:
        """The positions to tell the client of its channels that it has none for (not
        asked, or not recovered): the channel's last offset when it was read, or just
        before the first live message held, whichever is lower, so that every message
        after it reaches the client (live). The node learns them too when every message
        published before the reads is known to have arrived, or none can arrive any more
        because the subscriber is down (``ordered``): then it reads what was published
        meanwhile once the subscriber is back."""
        reads, self._reads = self._reads, _EMPTY
        learned = {}
        channels = self._streams.channels
        for channel_, shared in reads.items():
            if not isinstance(shared, SharedHistory):
                continue
            read = shared.history
            start = start_of(read, [p.position for c, p, _ in held if c == channel_])
            if ordered:
                channels.learned(channel_, start)
            merged = merges.get(channel_)
            if merged is None or not merged.recovered:
                learned[channel_] = start
        return learned

    def _sendStored(self, channel: str, stored: bytes) -> None:
        forged = server_voice(stored)
        if forged is not None:
            self.log.warn("not replaying a stored message to {peer}: it is {what}",
                          peer=self._transport.peer, what=forged)
            return
        self._transport.sendStored(channel, stored)

    # Catching up: recovered messages written as the socket drains

    def _readPage(self, channel: str, since: int, limit: int) -> defer.Deferred[Any]:
        """The next page of ``channel``'s history for a catch-up (shared with the other
        clients that ask for one in this turn)."""
        assert self._retention is not None
        return self._streams.reads.page(channel, self._retention, since, limit)

    def _enqueue(self, channel: str, shared: SharedHistory,
                 publication: Publication) -> None:
        """Queue a message read from the history, with its position (framed once for
        every client that recovers it)."""
        prepared = shared.frame(publication)
        if prepared is None:
            self.log.warn("not recovering a message to {peer}: it speaks with the "
                          "server's voice", peer=self._transport.peer)
            return
        if prepared.position is not None and not self._fresh(channel, prepared.position):
            # It has it already (live, or by its own catch-up): a catch-up the node asked
            # for starts where the node's position was, which may be behind the client's.
            return
        outgoing = self._outgoing(prepared, channel)  # encoded once for every client
        if len(outgoing.plain) > self._config.max_outgoing_size:
            self.log.debug("not recovering a message of {size} bytes to {peer}: over the "
                           "outgoing limit", size=len(outgoing.plain),
                           peer=self._transport.peer)
            return
        self._transport.queue(channel, outgoing, publication.payload)

    def drained(self) -> None:
        """The client's queue is low: the catch-ups read their next pages."""
        for catchup in tuple(self._catchups or ()):
            catchup.drained()

    def catchUp(self, channel: str, since: Position, first: Any, announce: bool) -> None:
        """The node could not give ``channel``'s missed messages in one page: catch this
        client up from ``since`` itself, with ``first`` (the node's read), holding the
        channel's live messages until it is done; tell it the outcome (when
        ``announce``, also a success)."""
        if self._held is not None or channel in self._catching or self._transport.dropped:
            return  # still joining: its own catch-up covers it
        if self._catching is _EMPTY:
            self._catching = {}
        self._catching[channel] = []
        self._recheck()
        catchup = CatchUp(channel, since, partial(self._readPage, channel),
                          partial(self._enqueue, channel),
                          partial(self._caughtUp, announce=announce), self._transport.pace)
        self._started(catchup)
        catchup.take(first, FIRST_PAGE)
        self._transport.pace()

    def _caughtUp(self, catchup: CatchUp, announce: bool) -> None:
        """A catch-up the node asked for is done: the live messages held meanwhile
        that come after it, and (when asked, or it failed) the outcome."""
        channel = catchup.channel
        self._ended(catchup)
        held = self._release(channel)
        self._recheck()
        positions = [prepared.position for prepared, _ in held]
        end = catchup.following - 1
        epoch = catchup.asked.epoch
        merged = merge(Position(end, epoch), History(epoch, end), positions)
        if catchup.reason is not None or not merged.recovered:
            read = catchup.last_read
            start = start_of(read, positions) if read is not None else None
            if channel in self._last:
                del self._last[channel]
            self.channelRecovered(channel, False, catchup.reason or merged.reason, start, 0)
            kept = [True] * len(held)
        else:
            if announce:
                self.channelRecovered(channel, True, None, None, catchup.sent)
            kept = list(merged.live)
        for (prepared, payload), keep in zip(held, kept, strict=True):
            if keep and (not self._positions or prepared.position is None
                         or self._fresh(channel, prepared.position)):
                self._transport.send(channel, self._outgoing(prepared, channel), payload)
        self._transport.pace()

    def leaveChannels(self, gone: AbstractSet[str]) -> None:
        """The client left ``gone`` (it stays): nothing more of them, and the join's
        next catch-up starts if the one under way was of them."""
        self.channels = tuple(c for c in self.channels if c not in gone)
        if self._held is not None:
            self._held = [held for held in self._held if held[0] not in gone]
        self._stopCatchingUp(gone)
        if self._replaying and not self._catchups:
            self._nextCatchUp()  # the join's catch-up that was under way is gone

    def close(self) -> None:
        """The client went away: read no more pages."""
        self._stopCatchingUp(self.channels)
        self._held = None
        self._joining = None

    def _release(self, channel: str) -> list[tuple[deflate.Message, bytes]]:
        """The live frames held while ``channel`` was caught up, no longer held."""
        catching = self._catching
        if channel not in catching:
            return []
        held = catching.pop(channel)
        if not catching:
            self._catching = _EMPTY
        return held

    def _stopCatchingUp(self, channels: Iterable[str]) -> None:
        """Read no more pages of ``channels``."""
        gone = set(channels)
        for catchup in tuple(self._catchups or ()):
            if catchup.channel in gone:
                catchup.cancel()
                self._ended(catchup)
                self._release(catchup.channel)
        if self._joining:
            self._joining = deque((c, first) for c, first in self._joining
                                  if c.channel not in gone) or None
        self._recheck()

    # Live messages

    def live(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        """A live message (when :attr:`careful`): held while the client joins or its
        channel is caught up, dropped when the client has it, else sent."""
        held = self._held
        if held is not None:
            if len(held) < self._config.max_queue_messages:
                held.append((channel, prepared, payload))
            else:
                self._transport.tooSlow("its stored messages did not come in time")
            return
        catching = self._catching.get(channel) if self._catching else None
        if catching is not None:
            # Its channel is being caught up: after what the history gives.
            if len(catching) < self._config.max_queue_messages:
                catching.append((prepared, payload))
            else:
                self._transport.tooSlow("its recovery did not drain in time")
            return
        if self._positions and prepared.position is not None \
                and not self._fresh(channel, prepared.position):
            return
        self._transport.send(channel, self._outgoing(prepared, channel), payload)

    def _fresh(self, channel: str, position: Position) -> bool:
        """Whether the message at ``position`` comes after the last one this client got
        on ``channel`` (then it is the last one); a message of another epoch does."""
        last = self._last.get(channel)
        if last is not None and last.epoch == position.epoch \
                and position.offset <= last.offset:
            return False
        self._at(channel, position)
        return True

    def _at(self, channel: str, position: Position) -> None:
        """The client's last message on ``channel`` is at ``position``."""
        if self._last is _EMPTY:
            self._last = {}
        self._last[channel] = position

    def _outgoing(self, prepared: deflate.Message, channel: str) -> deflate.Message:
        """What this client gets of a prepared message: with its position, in a
        publication envelope, for an event client of a facility with history (built once
        per message for all of them); the message as published for everyone else."""
        return prepared.published(channel) if self._positions else prepared

    def channelRecovered(self, channel: str, recovered: bool, reason: Optional[str],
                         position: Optional[Position], messages: int) -> None:
        """The node recovered ``channel`` from its history after an outage (``messages``
        were missed and are on their way), or could not (``reason``; it goes on from
        ``position``): an event client of a facility with history is told (one that is
        still joining learns its positions by itself)."""
        if not self._positions or self._held is not None:
            return
        send = self._transport.sendEvent
        if position is not None:
            self._at(channel, position)
            send(envelope.POSITIONS_EVENT, {"channels": {
                channel: {"epoch": position.epoch, "offset": position.offset}}})
        outcome: dict[str, Any] = {"recovered": recovered}
        if recovered:
            send(envelope.RECOVERED_EVENT, {**outcome, "channels": {
                channel: {**outcome, "messages": messages}}})
        else:
            outcome["reason"] = reason
            send(envelope.RECOVERED_EVENT, {**outcome, "channels": {channel: outcome}})
