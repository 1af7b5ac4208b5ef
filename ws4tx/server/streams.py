"""Channel streams, in one home: where each channel with history stands, the history
reads, the merge of stored, history and live messages, and recovery — when a client joins,
when a live message shows a gap, after an outage of one shard or of all.

- :class:`ChannelStreams` (the router's): each positioned channel's position, and its
  recovery from the history once for all its local clients after a skip, a new epoch or
  an outage (:meth:`ChannelStreams.recoverAfterOutage` gets only the channels of the
  Redis that came back), handing what it recovers back to the router's fan-out.
- :class:`ClientStream` (one per client): the join's replay (stored messages, the
  history since the positions asked, held live messages merged in order), the catch-ups
  the node hands it after a long gap, and what it is told. It drives its client through
  :class:`StreamTransport`: the connection frames, writes and paces; this module decides.
- :class:`HistoryReads`: the reads asked for in one reactor turn, one per channel.
- :class:`CatchUp`: one client's recovery of one channel, a page at a time.
- :class:`Streams` (the node's): all of them together; :meth:`ws4tx.server.node.Node.join`
  is the client's way in.

A recovery that wrote everything missed in one reactor turn would trip the slow-client
bound (``max_queue_bytes``) as soon as it passed a megabyte, and cost memory for all of it
at once. Here a recovery reads ``COUNT``-limited pages (:func:`ws4tx.history.step` says
what each gives), hands their messages to the client's paced queue, and reads the next
page only once the client's queue has drained below :data:`LOW_MARK`: its CPU and memory
follow what is delivered, never what was asked.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from functools import partial
from typing import AbstractSet, Any, Callable, Iterable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import envelope
from ws4tx.envelope import server_voice
from ws4tx.history import (
    DUPLICATE,
    EPOCH_CHANGED,
    NEW_EPOCH,
    SKIPPED,
    TRIMMED,
    UNAVAILABLE,
    UNKNOWN_POSITION,
    History,
    Merge,
    Page,
    Position,
    Publication,
    Retention,
    follow,
    merge,
    start_of,
    step,
    strip_position,
)
from ws4tx.naming import history_keys
from ws4tx.server import deflate
from ws4tx.server._log import observer
from ws4tx.server.broker import BrokerUnavailable, IBroker
from ws4tx.server.hub import Hub

#: Messages in a recovery's first page (shared by the clients that join in one turn, and
#: read by a node for its own recovery after a gap or an outage).
FIRST_PAGE = 64
#: Later pages hold about this many bytes (at least one message, at most FIRST_PAGE).
PAGE_BYTES = 256 * 1024
#: Full pages kept for catch-ups at the same position on a later turn (the oldest goes).
KEPT_PAGES = 8
#: A client's queue of recovered messages below which the next page is read.
LOW_MARK = 4


def is_text(payload: bytes) -> bool:
    """Whether ``payload`` goes out as a text frame (valid UTF-8) rather than binary."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SharedHistory:
    """A history read shared by the clients of one batch, with each of its messages
    framed (as a :class:`~ws4tx.server.deflate.Message` with its position) once."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._frames: dict[int, Optional[deflate.Message]] = {}

    def frame(self, publication: Publication) -> Optional[deflate.Message]:
        """The prepared message of ``publication`` (None when its payload speaks with the
        server's voice: it is never sent)."""
        offset = publication.offset
        if offset in self._frames:
            return self._frames[offset]
        payload = publication.payload
        prepared: Optional[deflate.Message] = None
        if server_voice(payload) is None:
            prepared = deflate.Message(payload, not is_text(payload))
            prepared.position = Position(offset, self.history.epoch)
        self._frames[offset] = prepared
        return prepared


#: How often, and how long apart, a history read that found the broker unavailable is
#: tried again (its command connection may come back after its subscriber).
READ_ATTEMPTS = 10
READ_RETRY_DELAY = 0.5


def retried(call: Callable[[], defer.Deferred[Any]], clock: IReactorTime,
            attempts: int = READ_ATTEMPTS,
            delay: float = READ_RETRY_DELAY) -> defer.Deferred[Any]:
    """``call()``'s result, ``call`` being tried again (``delay`` seconds after the first
    failure, growing by ``delay`` each time, ``attempts`` times in all) while it fails with
    :class:`BrokerUnavailable`: the broker's command connection may come back after its
    subscriber."""
    result: defer.Deferred[Any] = defer.Deferred()

    def attempt(n: int) -> None:
        call().addCallbacks(result.callback, failed, errbackArgs=(n,))

    def failed(failure: Failure, n: int) -> None:
        if failure.check(BrokerUnavailable) and n < attempts:
            clock.callLater(delay * n, attempt, n + 1)
        else:
            result.errback(failure)

    attempt(1)
    return result


# Reads: the history reads of joining clients, batched
#
# The reads asked for in one reactor turn go to Redis as one read per channel, shared by
# every client that asked, and each recovered message is framed once for all of them.
#
# A client asks after it joined the hub, so a read sent on a later turn than every request
# of its batch is made after each asker's subscription was in place: what is published
# after the read reaches them live (the recovery's merge relies on it). One read covers
# every asker of a channel: it starts after the lowest position asked (each client's merge
# skips what it already has); a client that asked only where the channel stands (no
# position) is answered by the same read, or by a read of its newest entry when nobody
# asked more.


@dataclass
class _Batch:
    """The requests for one channel in one turn: the lowest position asked (None: only
    where the channel stands), and who waits."""

    retention: Retention
    since: Optional[int] = None
    limit: int = 1
    waiters: list[defer.Deferred[Any]] = field(default_factory=list)


class HistoryReads:
    """Batches joining clients' history reads per channel and reactor turn."""

    def __init__(self, broker: IBroker, clock: IReactorTime, prefix: Optional[str]) -> None:
        self._broker = broker
        self._clock = clock
        self._prefix = prefix
        self._batch: dict[str, _Batch] = {}
        self._flush_call: Optional[IDelayedCall] = None
        #: (channel, since, limit) -> a full page read with more after it (its messages
        #: cannot change), kept for the catch-ups that ask for it on a later turn.
        self._pages: OrderedDict[tuple[str, int, int], SharedHistory] = OrderedDict()
        #: Reads sent to Redis, and the clients' requests they answered.
        self.stats = {"history_reads": 0, "history_read_requests": 0}

    def read(self, channel: str, retention: Retention, since: Optional[int],
             limit: int = FIRST_PAGE) -> defer.Deferred[SharedHistory]:
        """A page of ``channel``'s history after ``since`` (at most ``limit`` messages;
        None: at least its epoch and last offset), read on the next reactor turn with the
        other requests of this one (from the lowest position asked: a client further on
        skips what it has, see :func:`ws4tx.history.step`)."""
        batch = self._batch.get(channel)
        if batch is None:
            batch = self._batch[channel] = _Batch(retention)
        if since is not None:
            batch.since = since if batch.since is None else min(batch.since, since)
            batch.limit = max(batch.limit, limit)
        d: defer.Deferred[SharedHistory] = defer.Deferred()
        batch.waiters.append(d)
        self.stats["history_read_requests"] += 1
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        return d

    def page(self, channel: str, retention: Retention, since: int,
             limit: int) -> defer.Deferred[SharedHistory]:
        """A later page of a catch-up: as :meth:`read`, but a full page another client
        at the same position read a moment ago (with more after it: it cannot change)
        is shared instead of read again."""
        shared = self._pages.get((channel, since, limit))
        if shared is not None:
            self._pages.move_to_end((channel, since, limit))
            self.stats["history_read_requests"] += 1
            return defer.succeed(shared)
        return self.read(channel, retention, since, limit)

    def _flush(self) -> None:
        self._flush_call = None
        batches, self._batch = self._batch, {}
        for channel, batch in batches.items():
            self.stats["history_reads"] += 1
            read = partial(self._broker.history, history_keys(self._prefix, channel),
                           batch.retention, since=batch.since, limit=batch.limit)
            retried(read, self._clock).addBoth(self._answer, batch.waiters, channel,
                                               batch.since, batch.limit)

    def _answer(self, result: Any, waiters: list[defer.Deferred[Any]], channel: str,
                since: Optional[int], limit: int) -> None:
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        shared = SharedHistory(result)
        publications = result.publications
        if since is not None and len(publications) == limit \
                and publications[-1].offset < result.offset:
            self._pages[(channel, since, limit)] = shared
            if len(self._pages) > KEPT_PAGES:
                self._pages.popitem(last=False)
        for waiter in waiters:
            waiter.callback(shared)


def next_limit(read: History) -> int:
    """How many messages to ask for in the page after ``read``: about
    :data:`PAGE_BYTES` worth at the size of ``read``'s messages."""
    publications = read.publications
    if not publications:
        return FIRST_PAGE
    size = max(1, sum(len(p.payload) for p in publications) // len(publications))
    return max(1, min(FIRST_PAGE, PAGE_BYTES // size))


#: Reads the page of a channel after an offset, of a number of messages (a shared read,
#: :class:`SharedHistory`).
ReadPage = Callable[[int, int], "defer.Deferred[Any]"]
#: Takes one recovered message (the shared read it came in, and the publication).
Send = Callable[[Any, Publication], None]


class CatchUp:
    """One client's recovery of one channel since ``asked``: each page's messages go to
    ``send``, then ``after`` is called (the client writes what it can); :meth:`drained`
    (the client's queue is low) reads the next page; ``finished`` is called once, when
    the recovery is done or failed (``reason``)."""

    def __init__(self, channel: str, asked: Position, read_page: ReadPage, send: Send,
                 finished: Callable[[CatchUp], None],
                 after: Callable[[], None] = lambda: None) -> None:
        self.channel = channel
        self.asked = asked
        #: The offset that must come next; the messages sent; why it failed.
        self.following = asked.offset + 1
        self.sent = 0
        self.reason: Optional[str] = None
        self.done = False
        #: The last page read (where the channel stood then).
        self.last_read: Optional[History] = None
        self._read_page = read_page
        self._send = send
        self._finished = finished
        self._after = after
        self._limit = FIRST_PAGE
        self._reading = False

    def take(self, shared: Any, limit: int) -> None:
        """Take a page (a shared read of ``limit`` messages at most)."""
        read: History = shared.history
        first = self.last_read is None
        self.last_read = read
        page = step(self.asked.epoch, self.following, read, limit, first)
        for publication in page.publications:
            self._send(shared, publication)
        self.sent += len(page.publications)
        self.following = page.following
        self._limit = next_limit(read)
        if page.done:
            self._finish(page.reason)
        self._after()

    def drained(self) -> None:
        """The client's queue fell below its mark: read the next page (one at a time)."""
        if self.done or self._reading:
            return
        self._reading = True
        limit = self._limit
        self._read_page(self.following - 1, limit).addBoth(self._page, limit)

    def cancel(self) -> None:
        """The client went away or left the channel: read nothing more."""
        self.done = True

    def _page(self, result: Any, limit: int) -> None:
        self._reading = False
        if self.done:
            return
        if isinstance(result, Failure):
            self._finish(UNAVAILABLE)
            return
        self.take(result, limit)

    def _finish(self, reason: Optional[str]) -> None:
        self.done = True
        self.reason = reason
        self._finished(self)


# Channels: where each stands, and its recovery after a gap or an outage

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


# Clients: each one's catch-up, and the merge of stored, history and live messages

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

    def sendRaw(self, payload: bytes, binary: bool) -> None:
        """Write a channel's stored message now, as it was stored (when still open)."""

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


def _recovered(merges: dict[str, Merge],
               outcomes: dict[str, tuple[bool, Optional[str], int]]) -> dict[str, Any]:
    """The data of the ``ws4tx.recovered`` event: recovered only when every channel the
    client asked for (and may listen to) was; the first failure's reason otherwise
    (``outcomes``: the messages each channel's catch-up sent)."""
    failed = [m.reason for m in merges.values() if not m.recovered]
    if not merges:
        failed = [UNKNOWN_POSITION]
    data: dict[str, Any] = {"recovered": not failed}
    if failed:
        data["reason"] = failed[0]
    data["channels"] = {
        channel: {"recovered": True, "messages": outcomes[channel][2]} if m.recovered
        else {"recovered": False, "reason": m.reason} for channel, m in merges.items()}
    return data


class ClientStream:
    """One client's streams: on join, every channel's stored message and, for an event
    client of a facility with history (``positions``), each channel's history since the
    position it asked to recover from (``recover``) or where the channel stands, merged
    with the live messages held meanwhile; later, the catch-ups the node hands it after a
    long gap (:meth:`catchUp`) and the outcomes it is told (:meth:`channelRecovered`).
    What it decides goes out through its ``transport``; :attr:`careful` says whether live
    messages must pass through :meth:`live` (held, or checked against their positions)."""

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
        self._recover = recover if self._positions else {}
        #: Live frames that came while the stored messages were being fetched (they go
        #: out after them): [(channel, prepared, payload)], None once the replay is done.
        self._held: Optional[list[tuple[str, Any, bytes]]] = [] if channels else None
        #: The stored messages fetched so far.
        self._stored: dict[str, Optional[bytes]] = {}
        #: The position of the last message sent on each channel (or where the client
        #: was told the channel stands): what comes again (a live message the node
        #: also recovered) is not sent twice.
        self._last: dict[str, Position] = {}
        #: The history reads of the channels being recovered (a SharedHistory, or the
        #: failure).
        self._reads: dict[str, Any] = {}
        #: The catch-ups under way; those of the join still to start, with their first
        #: page; their outcomes (recovered, reason, messages) and the offset each
        #: reached; whether the join's reads were ordered.
        self._catchups: list[CatchUp] = []
        self._joining: deque[tuple[CatchUp, SharedHistory]] = deque()
        self._outcomes: dict[str, tuple[bool, Optional[str], int]] = {}
        self._following: dict[str, int] = {}
        self._ordered = True
        self._taking = self._replaying = False
        #: channel -> the live frames held while the node's catch-up of it runs.
        self._catching: dict[str, list[tuple[deflate.Message, bytes]]] = {}
        self.careful = True
        self._recheck()
        #: Fires once the client's channels are subscribed (and its replay is on the way).
        self.subscribed: defer.Deferred[None] = defer.Deferred()
        self.subscribed.addCallback(self._replay)

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
        for channel in self.channels:
            waits.append(streams.broker.fetch(channel).addCallbacks(
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
        # subscriber and the command connection are two sockets): wait for it.
        defer.gatherResults(waits).addCallback(
            lambda _: streams.barrier()).addBoth(self._replayStored)

    def _noReplay(self, failure: Failure, channel: str) -> None:
        self.log.debug("no replay for {peer}: {error}", peer=self._transport.peer,
                       error=failure.getErrorMessage())
        self._fetched(None, channel)

    def _fetched(self, stored: Optional[bytes], channel: str) -> None:
        self._stored[channel] = stored

    def _read(self, result: Any, channel: str) -> None:
        if isinstance(result, Failure):
            self.log.info("recovering {channel} for {peer} failed: {error}", channel=channel,
                          peer=self._transport.peer, error=result.getErrorMessage())
        self._reads[channel] = result

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
                    self._outcomes[channel_] = (False, UNAVAILABLE, 0)
                else:
                    first = step(asked.epoch, asked.offset + 1, read.history, FIRST_PAGE,
                                 first=True)
                    need = read.history.offset - asked.offset
                    if first.reason is None and need > budget:
                        first = Page((), asked.offset + 1, True, TRIMMED)
                    if first.reason is None:
                        budget -= need
                        self._last[channel_] = asked
                        self._joining.append((CatchUp(
                            channel_, asked, partial(self._readPage, channel_),
                            partial(self._enqueue, channel_), self._joinCaughtUp,
                            self._transport.pace), read))
                        continue
                    self._outcomes[channel_] = (False, first.reason, 0)
            message = self._stored.get(channel_)
            if message is not None and (channel_, message) not in live:
                self._sendStored(message)
        self._stored = {}
        self._replaying = True
        self._nextCatchUp()

    def _nextCatchUp(self) -> None:
        """Start the next channel's catch-up of the join; once none is left, finish."""
        while self._joining:
            catchup, first = self._joining.popleft()
            self._catchups.append(catchup)
            self._taking = True
            catchup.take(first, FIRST_PAGE)
            self._taking = False
            self._transport.pace()
            if not catchup.done:
                return
        if self._held is not None:
            self._joinDone()

    def _joinCaughtUp(self, catchup: CatchUp) -> None:
        self._catchups.remove(catchup)
        if catchup.last_read is not None:
            self._reads[catchup.channel] = SharedHistory(catchup.last_read)
        self._outcomes[catchup.channel] = (catchup.reason is None, catchup.reason,
                                           catchup.sent)
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
        self._last.update(learned)
        transport = self._transport
        if learned:
            transport.sendEvent(envelope.POSITIONS_EVENT, {"channels": {
                channel_: {"epoch": p.epoch, "offset": p.offset}
                for channel_, p in learned.items()}})
        if self._recover:
            verdict = _recovered(merges, self._outcomes)
            self._streams.verdict(verdict.get("reason"))
            transport.sendEvent(envelope.RECOVERED_EVENT, verdict)
        self._outcomes = {}
        self._following = {}
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
        reads, self._reads = self._reads, {}
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

    def _sendStored(self, stored: bytes) -> None:
        forged = server_voice(stored)
        if forged is not None:
            self.log.warn("not replaying a stored message to {peer}: it is {what}",
                          peer=self._transport.peer, what=forged)
            return
        self._transport.sendRaw(stored, not is_text(stored))

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
        for catchup in tuple(self._catchups):
            catchup.drained()

    def catchUp(self, channel: str, since: Position, first: Any, announce: bool) -> None:
        """The node could not give ``channel``'s missed messages in one page: catch this
        client up from ``since`` itself, with ``first`` (the node's read), holding the
        channel's live messages until it is done; tell it the outcome (when
        ``announce``, also a success)."""
        if self._held is not None or channel in self._catching or self._transport.dropped:
            return  # still joining: its own catch-up covers it
        self._catching[channel] = []
        self._recheck()
        catchup = CatchUp(channel, since, partial(self._readPage, channel),
                          partial(self._enqueue, channel),
                          partial(self._caughtUp, announce=announce), self._transport.pace)
        self._catchups.append(catchup)
        catchup.take(first, FIRST_PAGE)
        self._transport.pace()

    def _caughtUp(self, catchup: CatchUp, announce: bool) -> None:
        """A catch-up the node asked for is done: the live messages held meanwhile
        that come after it, and (when asked, or it failed) the outcome."""
        channel = catchup.channel
        self._catchups.remove(catchup)
        held = self._catching.pop(channel, [])
        self._recheck()
        positions = [prepared.position for prepared, _ in held]
        end = catchup.following - 1
        epoch = catchup.asked.epoch
        merged = merge(Position(end, epoch), History(epoch, end), positions)
        if catchup.reason is not None or not merged.recovered:
            read = catchup.last_read
            start = start_of(read, positions) if read is not None else None
            self._last.pop(channel, None)
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
        self._joining.clear()

    def _stopCatchingUp(self, channels: Iterable[str]) -> None:
        """Read no more pages of ``channels``."""
        gone = set(channels)
        for catchup in tuple(self._catchups):
            if catchup.channel in gone:
                catchup.cancel()
                self._catchups.remove(catchup)
                self._catching.pop(catchup.channel, None)
        self._joining = deque((c, first) for c, first in self._joining
                              if c.channel not in gone)
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
        self._last[channel] = position
        return True

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
            self._last[channel] = position
            send(envelope.POSITIONS_EVENT, {"channels": {
                channel: {"epoch": position.epoch, "offset": position.offset}}})
        outcome: dict[str, Any] = {"recovered": recovered}
        if recovered:
            send(envelope.RECOVERED_EVENT, {**outcome, "channels": {
                channel: {**outcome, "messages": messages}}})
        else:
            outcome["reason"] = reason
            send(envelope.RECOVERED_EVENT, {**outcome, "channels": {channel: outcome}})


# The node's streams

class Streams:
    """A node's channel streams: where each channel stands and its recovery
    (:class:`ChannelStreams`, the router's), the history reads its clients share, and
    each client's stream state (:class:`ClientStream`), which the channels' recoveries
    drive. ``barrier`` fires once every message published before now has reached the
    node's clients; ``verdict`` counts a recovery's outcome (its reason, None: recovered)."""

    def __init__(self, config: Any, broker: IBroker, clock: IReactorTime,
                 channels: ChannelStreams, barrier: Callable[[], defer.Deferred[None]],
                 verdict: Callable[[Optional[str]], None]) -> None:
        self.config = config
        self.broker = broker
        self.channels = channels
        self.barrier = barrier
        self.verdict = verdict
        #: Joining and catching-up clients' history reads, batched per channel and turn.
        self.reads = HistoryReads(broker, clock, config.prefix)
        self._clients: dict[Any, ClientStream] = {}
        channels.client_of = lambda member: self._clients.get(member, member)

    def join(self, client: StreamTransport, facility: str, channels: tuple[str, ...],
             recover: dict[str, Position]) -> ClientStream:
        """The stream state of a client that joins ``channels`` (its replay starts once
        its :attr:`ClientStream.subscribed` fires)."""
        stream = self._clients[client] = ClientStream(client, self, facility, channels,
                                                      recover)
        return stream

    def leave(self, client: StreamTransport) -> None:
        """The client went away."""
        stream = self._clients.pop(client, None)
        if stream is not None:
            stream.close()

    def leaveChannels(self, client: StreamTransport, gone: AbstractSet[str]) -> None:
        """The client left ``gone`` (and stays)."""
        stream = self._clients.get(client)
        if stream is not None:
            stream.leaveChannels(gone)
