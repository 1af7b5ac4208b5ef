"""History reads tried again while the broker is unavailable: its command connection
may come back after its subscriber."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ws4tx.server.broker import BrokerUnavailable

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
