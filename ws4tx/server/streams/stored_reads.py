"""Batched stored-message reads: the channels whose stored message joining clients ask
for in one reactor turn are read on the next one together (one ``MGET`` per Redis server,
or per slot on a Cluster: :meth:`~ws4tx.server.broker.IBroker.fetchMany`), each channel
once however many clients asked.

A client asks once its channels are subscribed, so a read sent on a later turn than every
request of its batch is made after each asker's subscription was in place: a message
stored after the read reaches them live (the join's replay relies on it)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ws4tx.server.broker import IBroker
from ws4tx.server.streams._turn import SentAtTurnEnd


class StoredReads(SentAtTurnEnd):
    """Batches joining clients' stored-message reads per reactor turn."""

    def __init__(self, broker: IBroker, clock: IReactorTime) -> None:
        self._broker = broker
        self._clock = clock
        #: channel -> who waits for its stored message, in this turn.
        self._batch: dict[str, list[defer.Deferred[Optional[bytes]]]] = {}
        self._flush_call: Optional[IDelayedCall] = None
        self._after: list[Callable[[], None]] = []

    def fetchMany(self, keys: Sequence[str]) -> list[defer.Deferred[Optional[bytes]]]:
        """The stored message of each of ``keys`` (None where there is none), read on
        the next reactor turn with the other keys asked for in this one."""
        batch = self._batch
        answers: list[defer.Deferred[Optional[bytes]]] = []
        for key in keys:
            d: defer.Deferred[Optional[bytes]] = defer.Deferred()
            waiting = batch.get(key)
            if waiting is None:
                batch[key] = [d]
            else:
                waiting.append(d)
            answers.append(d)
        if self._flush_call is None and batch:
            self._flush_call = self._clock.callLater(0, self._flush)
        return answers

    def _flush(self) -> None:
        self._flush_call = None
        batch, self._batch = self._batch, {}
        keys = list(batch)
        answers = self._broker.fetchMany(keys)
        self._sent()
        for key, answer in zip(keys, answers, strict=True):
            answer.addBoth(_answer, batch[key])


def _answer(result: Any, waiters: list[defer.Deferred[Optional[bytes]]]) -> None:
    for waiter in waiters:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
