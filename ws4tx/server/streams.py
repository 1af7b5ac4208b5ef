"""Catching a client up on a channel from its history, a page at a time, at the pace its
socket drains (the start of the one home of channel streams that issue #21 asks for).

A recovery that writes everything missed in one reactor turn trips the slow-client bound
(``max_queue_bytes``) as soon as it passes a megabyte, and costs memory for all of it at
once. Here a recovery reads ``COUNT``-limited pages (:func:`ws4tx.history.step` says what
each gives), hands their messages to the client's paced queue, and reads the next page
only once the client's queue has drained below :data:`LOW_MARK`: its CPU and memory follow
what is delivered, never what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ws4tx import history
from ws4tx.envelope import server_voice
from ws4tx.history import UNAVAILABLE, History, Position, Publication, Retention
from ws4tx.naming import history_keys
from ws4tx.server import deflate
from ws4tx.server.broker import BrokerUnavailable, IBroker

#: Messages in a recovery's first page (shared by the clients that join in one turn, and
#: read by a node for its own recovery after a gap or an outage).
FIRST_PAGE = 64
#: Later pages hold about this many bytes (at least one message, at most FIRST_PAGE).
PAGE_BYTES = 256 * 1024
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
        page = history.step(self.asked.epoch, self.following, read, limit, first)
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
