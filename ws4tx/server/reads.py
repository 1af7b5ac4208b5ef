"""The history reads of joining clients, batched: the reads asked for in one reactor turn go
to Redis as one read per channel, shared by every client that asked, and each recovered
message is framed once for all of them.

A client asks after it joined the hub, so a read sent on a later turn than every request
of its batch is made after each asker's subscription was in place: what is published after
the read reaches them live (the recovery's merge relies on it). One read covers every
asker of a channel: it starts after the lowest position asked (each client's merge skips
what it already has); a client that asked only where the channel stands (no position) is
answered by the same read, or by a read of its newest entry when nobody asked more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ws4tx.history import Retention
from ws4tx.naming import history_keys
from ws4tx.server.broker import IBroker
from ws4tx.server.router import retried
from ws4tx.server.streams import (
    FIRST_PAGE,
    SharedHistory as SharedHistory,  # its old home
)


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

    def _flush(self) -> None:
        self._flush_call = None
        batches, self._batch = self._batch, {}
        for channel, batch in batches.items():
            self.stats["history_reads"] += 1
            read = partial(self._broker.history, history_keys(self._prefix, channel),
                           batch.retention, since=batch.since, limit=batch.limit)
            retried(read, self._clock).addBoth(self._answer, batch.waiters)

    def _answer(self, result: Any, waiters: list[defer.Deferred[Any]]) -> None:
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        shared = SharedHistory(result)
        for waiter in waiters:
            waiter.callback(shared)
