"""Flow control of one client, whatever transport carries it (a WebSocket, an SSE stream):
what waits for it, whether its socket drains, and when it is too slow to keep.

A transport is the producer of its socket: the socket pauses it when its buffer is full
(:meth:`Flow.pause`) and resumes it once drained (:meth:`Flow.resume`). What is written
meanwhile is counted (:meth:`Flow.overflows`); past ``max_queue_bytes`` bytes,
``max_queue_messages`` messages or ``slow_timeout`` seconds since the first pause, the
client is dropped as slow (:meth:`Flow.tooSlow`): counted once in the node's
``slow_consumers``, then the transport's own way of dropping (a close frame then an abort
for a WebSocket, an abort for a stream). What its streams hold back (a recovery's pages,
what must come after them) waits in :attr:`Flow.pending`, bounded the same way
(:meth:`Flow.hold`); it is a queue only while something waits (an idle connection keeps
none). Pure apart from reading the clock.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, MutableMapping, Optional, TypeVar, Union

from twisted.internet.interfaces import IReactorTime

from ws4tx.server.config import ServerConfig
from ws4tx.server.streams import FIRST_PAGE

T = TypeVar("T")

#: What :attr:`Flow.pending` is while nothing waits: one empty tuple for every
#: connection, instead of an empty deque each (760 bytes).
_NOTHING: tuple[()] = ()


class Flow(Generic[T]):
    """The flow control of one client: ``drop(why)`` drops it the transport's way (called
    once); ``stats`` is the node's counters."""

    __slots__ = ("_clock", "_config", "_drop", "_stats", "dropped", "paused_at",
                 "pending", "queued_bytes", "queued_messages")

    def __init__(self, config: ServerConfig, clock: IReactorTime,
                 stats: MutableMapping[str, int], drop: Callable[[str], None]) -> None:
        self._config = config
        self._clock = clock
        self._stats = stats
        self._drop = drop
        #: What waits for the client, written as its socket drains (in order): a deque
        #: while something waits, else empty and shared. Read it as it is; change it
        #: through :meth:`queue`, :meth:`hold`, :meth:`next`, :meth:`keep`, :meth:`clear`.
        self.pending: Union[deque[T], tuple[()]] = _NOTHING
        #: When its socket stopped draining (None: it drains).
        self.paused_at: Optional[float] = None
        #: What was written since, in bytes and messages.
        self.queued_bytes = self.queued_messages = 0
        #: Whether it is being dropped as slow.
        self.dropped = False

    def pause(self) -> None:
        """The socket's buffer is full (Twisted says so again on every write while it
        is: the first time starts the clock)."""
        if self.paused_at is None:
            self.paused_at = self._clock.seconds()

    def resume(self) -> None:
        """The socket drained: nothing is counted against the client any more."""
        self.paused_at = None
        self.queued_bytes = self.queued_messages = 0

    def overflows(self, size: int, messages: int = 1) -> bool:
        """Count ``messages`` messages of ``size`` bytes written while the socket does not
        drain: whether they must not be written (the client is, or now is, dropped as
        slow)."""
        if self.dropped:
            return True
        config = self._config
        self.queued_bytes += size
        self.queued_messages += messages
        assert self.paused_at is not None
        waited = self._clock.seconds() - self.paused_at
        if (self.queued_bytes <= config.max_queue_bytes
                and self.queued_messages <= config.max_queue_messages
                and waited <= config.slow_timeout):
            return False
        self.tooSlow(f"{self.queued_bytes} bytes in {self.queued_messages} messages "
                     f"waiting, not drained for {waited:.1f} s")
        return True

    def hold(self, item: T) -> None:
        """Queue ``item`` after what waits (bounded: past ``max_queue_messages`` items
        beyond a recovery's first page the client is dropped as slow)."""
        if len(self.pending) > self._config.max_queue_messages + FIRST_PAGE:
            self.tooSlow("its recovery did not drain in time")
        else:
            self.queue(item)

    def queue(self, item: T) -> None:
        """Queue ``item`` after what waits (unbounded: a recovery's pages, which its
        stream reads only as they drain)."""
        pending = self.pending
        if not pending:
            pending = self.pending = deque()
        pending.append(item)

    def next(self) -> T:
        """Take the first of what waits (there must be one)."""
        pending = self.pending
        assert isinstance(pending, deque)
        item = pending.popleft()
        if not pending:
            self.pending = _NOTHING
        return item

    def keep(self, wanted: Callable[[T], bool]) -> None:
        """Keep only what waits that is ``wanted`` (in order)."""
        kept = [item for item in self.pending if wanted(item)]
        self.pending = deque(kept) if kept else _NOTHING

    def clear(self) -> None:
        """Forget whatever waits."""
        self.pending = _NOTHING

    def tooSlow(self, why: str) -> None:
        """Drop the client as slow (once)."""
        if not self.dropped:
            self.dropped = True
            self._stats["slow_consumers"] += 1
            self._drop(why)
