"""The log of one connection's attempts to reach Redis, for every kind of connection.

A :class:`AttemptLog` is told why each attempt failed (:meth:`AttemptLog.failed`), and
wraps the connection's retry policy (:meth:`AttemptLog.retrying`), so it logs each failure
with its reason and the delay of the next attempt. The first failure of an outage is
logged at once, at warn; later ones are summed up, one line every :data:`SUMMARY_INTERVAL`
seconds at most, with their count; the first success after failures is logged with how
long the outage lasted. :attr:`AttemptLog.problem` is the reason while there is one, for
the health check.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds between two lines about the same outage's failed attempts.
SUMMARY_INTERVAL = 30.0


def describe(reason: Any) -> str:
    """Why an attempt failed, in a few words (``reason``: an exception or a Failure)."""
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, (error.TimeoutError, defer.TimeoutError)):
        text = str(value.args[0]) if value.args and isinstance(value.args[0], str) else ""
        return text if text.startswith("Redis") else "timed out"
    if isinstance(value, error.DNSLookupError):
        return "host name not found"
    if isinstance(value, error.NoRouteError):
        return "no route to host"
    if isinstance(value, (error.ConnectionLost, error.ConnectionDone)):
        return "Redis closed the connection"
    if isinstance(value, txredisapi.ResponseError):
        return f"Redis answered: {value}"
    text = str(value).strip()
    return text or type(value).__name__


class AttemptLog:
    """The log of one connection's attempts (see the module's docstring).

    ``what`` names the connection in every line (``Redis subscriber connection to
    redis://…``)."""

    def __init__(self, log: Logger, what: str, clock: IReactorTime,
                 interval: float = SUMMARY_INTERVAL) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.interval = interval
        #: Why the connection cannot be made (the last failure's reason), or None.
        self.problem: Optional[str] = None
        self._reason: Optional[str] = None
        #: Since when the connection is wanted and not ready (None: it is ready).
        self._since: Optional[float] = None
        self._lost = False
        #: Whether the retry policy's next call is ClientService's reconnection after a
        #: lost connection (not a failed attempt).
        self._reconnecting = False
        self._failures = 0
        self._unsaid = 0
        self._said_at = 0.0

    def starting(self) -> None:
        """The first attempt is on its way: an outage, if any, starts now."""
        self._since = self.clock.seconds()

    def lost(self) -> None:
        """The ready connection was lost: the outage starts now."""
        self._since = self.clock.seconds()
        self._lost = self._reconnecting = True
        self._reason = None

    def failed(self, reason: Any) -> None:
        """An attempt failed for ``reason`` (an exception, a Failure or a text). The
        first reason given for an attempt is kept (an AUTH refusal, then the connection
        closed because of it: the refusal)."""
        if self._reason is None:
            self._reason = reason if isinstance(reason, str) else describe(reason)

    def report(self, reason: Any, delay: float) -> None:
        """An attempt failed for ``reason``; the next one is in ``delay`` seconds."""
        self.failed(reason)
        self._logFailure(delay)

    def retrying(self, policy: Callable[[int], float]) -> Callable[[int], float]:
        """``policy`` (attempt number -> delay), which also logs the failed attempt."""

        def delay(attempt: int) -> float:
            seconds = policy(attempt)
            if self._reconnecting:
                self._reconnecting = False
            else:
                self._logFailure(seconds)
            return seconds

        return delay

    def _logFailure(self, delay: float) -> None:
        reason, self._reason = self._reason or "no reason given", None
        now = self.clock.seconds()
        if self._since is None:
            self._since = now
        self.problem = reason
        self._failures += 1
        self._unsaid += 1
        if self._failures == 1:
            self.log.warn("cannot reach {what}: {reason}; retrying in {delay:.1f} s",
                          what=self.what, reason=reason, delay=delay)
        elif now - self._said_at >= self.interval:
            self.log.warn("still cannot reach {what}: {reason}; {count} more failed "
                          "attempts in {period:.0f} s, retrying in {delay:.1f} s",
                          what=self.what, reason=reason, count=self._unsaid,
                          period=now - self._said_at, delay=delay)
        else:
            return
        self._said_at = now
        self._unsaid = 0

    def succeeded(self) -> None:
        """The connection is ready: an outage ends, said with its length once it has
        ended (whoever hears the line finds no problem: the health check says 200)."""
        outage = (self._failures or self._lost) and self._since is not None
        done = "restored" if self._lost else "ready"
        down = self.clock.seconds() - (self._since or 0.0)
        count = self._failures
        self._reason = None
        self.problem = None
        self._since = None
        self._lost = self._reconnecting = False
        self._failures = self._unsaid = 0
        if outage:
            self.log.info("{what} {done} after {down:.1f} s ({count} failed attempts)",
                          what=self.what, done=done, down=down, count=count)
