"""History reads tried again while the broker is unavailable: its command connection
may come back after its subscriber."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ws4tx.server.broker import BrokerUnavailable

T = TypeVar("T")

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


def retried_each(items: Sequence[T],
                 call: Callable[[list[T]], list[defer.Deferred[Any]]],
                 clock: IReactorTime, attempts: int = READ_ATTEMPTS,
                 delay: float = READ_RETRY_DELAY) -> list[defer.Deferred[Any]]:
    """As :func:`retried`, for a batch: ``call(items)`` gives a Deferred per item; the
    items that failed with :class:`BrokerUnavailable` are tried again together (with the
    same delays), each item's Deferred firing with its own outcome."""
    results: list[defer.Deferred[Any]] = [defer.Deferred() for _ in items]

    def attempt(indices: list[int], n: int) -> None:
        sent = call([items[i] for i in indices])
        answers = defer.DeferredList(sent, consumeErrors=True)
        answers.addCallback(settled, indices, n)

    def settled(outcomes: list[tuple[bool, Any]], indices: list[int], n: int) -> None:
        again = []
        for index, (ok, outcome) in zip(indices, outcomes, strict=True):
            if ok:
                results[index].callback(outcome)
            elif outcome.check(BrokerUnavailable) and n < attempts:
                again.append(index)
            else:
                results[index].errback(outcome)
        if again:
            clock.callLater(delay * n, attempt, again, n + 1)

    attempt(list(range(len(items))), 1)
    return results
