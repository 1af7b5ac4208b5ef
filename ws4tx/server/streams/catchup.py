"""One client's catch-up of one channel, a page at a time: each page read once the
client's queue of recovered messages has drained below :data:`LOW_MARK`, so that its CPU
and memory follow what is delivered, never what was asked."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from ws4tx.history import UNAVAILABLE, History, Position, Publication, step
from ws4tx.server.streams.batched_reads import FIRST_PAGE, PAGE_BYTES

#: A client's queue of recovered messages below which the next page is read.
LOW_MARK = 4


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
