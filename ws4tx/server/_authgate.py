"""A bound on the authentication work handshakes do in threads.

Django's session look-up and the site's hooks run in the reactor's thread pool, which the
site's own pages (``--wsgi``) and event handlers share: a storm of handshakes with a
session cookie would otherwise take every thread and make the pages wait. An
:class:`AuthGate` lets at most ``concurrency`` authentications run at once; up to ``queue``
more handshakes wait for a slot, in order; past that a handshake is refused at once with
503 and ``Retry-After``.

A slot is held until its thread really finishes. A thread cannot be stopped: a handshake
that goes away while its authentication runs is answered at once (its Deferred fails with
``CancelledError``), but the slot stays taken until the thread returns, so the threads
themselves are bounded, not only the handshakes that wait for them. A handshake that goes
away while it waits leaves the queue.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx.server._log import observer
from ws4tx.server.auth import HandshakeDenied

T = TypeVar("T")
log = Logger(observer=observer)

#: Seconds a refused handshake is told to wait before it tries again (``Retry-After``).
RETRY_AFTER = 1

#: Why a handshake past the queue bound is refused (the 503's reason).
QUEUE_FULL = "too many handshakes waiting for authentication: retry later"

#: Why a handshake whose authentication outlasts ``handshake_timeout`` is answered 503.
TIMED_OUT = "authentication did not finish in time: retry later"


class AuthGate:
    """At most ``concurrency`` authentications at once, at most ``queue`` waiting."""

    def __init__(self, concurrency: int, queue: int, retry_after: int = RETRY_AFTER) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("an AuthGate needs concurrency >= 1 and queue >= 0")
        self.concurrency = concurrency
        self.queue = queue
        self.retry_after = retry_after
        #: Authentications whose work has started and not yet finished.
        self.running = 0
        #: The most that ever ran at once.
        self.most = 0
        #: Handshakes refused because the queue was full.
        self.refused = 0
        #: Handshakes waiting for a slot (insertion order: first come, first served).
        self._waiting: dict[defer.Deferred[Any], Callable[[], defer.Deferred[Any]]] = {}
        #: Refusals of the episode under way (logged when it ends).
        self._episode = 0

    @property
    def waiting(self) -> int:
        """How many handshakes wait for a slot."""
        return len(self._waiting)

    def run(self, start: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """``start()`` (which starts the work in a thread and returns its Deferred) once a
        slot is free: now, or after the handshakes that wait before it; the Deferred
        returned fires with the work's result. Past the queue bound it fails at once with
        :class:`HandshakeDenied` (503, ``Retry-After``)."""
        answer: defer.Deferred[T] = defer.Deferred(self._cancel)
        if self.running < self.concurrency:
            self._start(answer, start)
        elif len(self._waiting) < self.queue:
            self._waiting[answer] = start
        else:
            return self._refuse()
        return answer

    def _refuse(self) -> defer.Deferred[Any]:
        self.refused += 1
        if not self._episode:
            log.warn("authentication queue full ({queue} handshakes wait for {n} running "
                     "authentications): handshakes answered 503 until it drains; "
                     "AUTH_CONCURRENCY and AUTH_QUEUE set the bounds",
                     queue=self.queue, n=self.running)
        self._episode += 1
        return defer.fail(HandshakeDenied(QUEUE_FULL, 503, retry_after=self.retry_after))

    def _cancel(self, answer: defer.Deferred[Any]) -> None:
        """The handshake went away: out of the queue if it waits; if its work runs, the
        slot stays taken until the work finishes (the Deferred fails with
        CancelledError now)."""
        self._waiting.pop(answer, None)

    def _start(self, answer: defer.Deferred[Any],
               start: Callable[[], defer.Deferred[Any]]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        defer.maybeDeferred(start).addBoth(self._finished, answer)

    def _finished(self, result: Any, answer: defer.Deferred[Any]) -> None:
        self.running -= 1
        self._next()
        if answer.called:  # cancelled: nobody waits for this result any more
            return
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    def _next(self) -> None:
        """Start the first waiting handshakes while slots are free."""
        while self._waiting and self.running < self.concurrency:
            answer = next(iter(self._waiting))
            self._start(answer, self._waiting.pop(answer))
        if self._episode and not self._waiting:
            log.info("authentication queue drained; {n} handshakes were answered 503",
                     n=self._episode)
            self._episode = 0
