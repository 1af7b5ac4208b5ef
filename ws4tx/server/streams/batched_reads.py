"""Batched history reads: the reads asked for in one reactor turn go to Redis as one
read per channel, shared by every client that asked, and each recovered message is
framed once for all of them (:class:`SharedHistory`); full pages are kept a while for
the catch-ups that ask for them on a later turn."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ws4tx.envelope import server_voice
from ws4tx.history import History, HistoryRead, Position, Publication, Retention
from ws4tx.server import deflate
from ws4tx.server.broker import IBroker
from ws4tx.server.streams._retry import retried_each
from ws4tx.server.streams._text import is_text
from ws4tx.server.streams._turn import SentAtTurnEnd

#: Messages in a recovery's first page (shared by the clients that join in one turn, and
#: read by a node for its own recovery after a gap or an outage).
FIRST_PAGE = 64
#: Later pages hold about this many bytes (at least one message, at most FIRST_PAGE).
PAGE_BYTES = 256 * 1024
#: Full pages kept for catch-ups at the same position on a later turn (the oldest goes).
KEPT_PAGES = 8


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


class HistoryReads(SentAtTurnEnd):
    """Batches joining clients' history reads per channel and reactor turn."""

    def __init__(self, broker: IBroker, clock: IReactorTime) -> None:
        self._broker = broker
        self._clock = clock
        self._batch: dict[str, _Batch] = {}
        self._flush_call: Optional[IDelayedCall] = None
        #: What runs once the reads of this turn are sent (see :meth:`afterSending`).
        self._after: list[Callable[[], None]] = []
        #: (channel, since, limit) -> a full page read with more after it (its messages
        #: cannot change), kept for the catch-ups that ask for it on a later turn.
        self._pages: OrderedDict[tuple[str, int, int], SharedHistory] = OrderedDict()
        #: Reads sent to Redis (one per channel), the batches they went in (one per
        #: turn), and the clients' requests they answered.
        self.stats = {"history_reads": 0, "history_batches": 0, "history_read_requests": 0}

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
        # One batched read for every channel: one round trip (a call of the histories
        # script per Redis server, per slot on a Cluster).
        reads = [HistoryRead(channel, batch.retention, batch.since, batch.limit)
                 for channel, batch in batches.items()]
        self.stats["history_reads"] += len(reads)
        self.stats["history_batches"] += 1
        answers = retried_each(reads, self._broker.histories, self._clock)
        self._sent()
        for read, answer in zip(reads, answers, strict=True):
            answer.addBoth(self._answer, batches[read.channel].waiters, read.channel,
                           read.since, batches[read.channel].limit)

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
