"""Token buckets on an injected clock. Pure apart from reading the clock."""

from __future__ import annotations

from typing import Hashable

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends some."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()

    def take(self, cost: float = 1) -> bool:
        """Spend ``cost`` tokens if there are as many; False means over the limit."""
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def charge(self, cost: float) -> None:
        """Spend ``cost`` tokens whatever is left (a cost known only afterwards): the
        bucket may go into debt, and :meth:`take` refuses until it is repaid."""
        self.take(0)
        self._tokens -= cost

    @property
    def full(self) -> bool:
        """Whether the bucket has refilled to its burst (it then remembers nothing)."""
        return self._tokens + (self._clock.seconds() - self._stamp) * self.rate >= self.burst


class Budgets:
    """A :class:`TokenBucket` per key (a user, an address), made when first used and
    forgotten once it has refilled: memory follows the keys active lately, not all ever
    seen."""

    def __init__(self, rate: float, burst: float, clock: IReactorTime,
                 max_keys: int = 10_000) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, cost: float) -> bool:
        """Spend ``cost`` from ``key``'s budget; False means over it."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forgetFull()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket.take(cost)

    def charge(self, key: Hashable, cost: float) -> None:
        """Spend ``cost`` from ``key``'s budget whatever is left (see
        :meth:`TokenBucket.charge`)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self.take(key, 0)
            bucket = self._buckets[key]
        bucket.charge(cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forgetFull(self) -> None:
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
