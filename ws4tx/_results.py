"""What a publish gives: :class:`Sent`, or :class:`PublishError`. Defined here, below both
the operations (:mod:`ws4tx._ops`) and the public store (:mod:`ws4tx.redis_store`, which
exports them under ws4redis's paths), so that neither imports the other."""

from __future__ import annotations

from typing import Optional

import redis

from ws4tx import history


class PublishError(redis.exceptions.ConnectionError):
    """Redis could not be reached or refused the command (it names the Redis address,
    password masked). A subclass of redis-py's ``ConnectionError``, so that code written
    for ws4redis that catches it keeps working."""


class Sent(int):
    """What a publish did: the number of Redis subscribers that got it (it is that
    int), the ``positions`` of the message on the channels of a facility with history
    (channel -> :class:`~ws4tx.history.Position`), and whether it was ``repeated``: a
    publish with an idempotency key that every channel had published already (nothing was
    stored nor delivered again; ``positions`` are the first publish's)."""

    positions: dict[str, history.Position]
    repeated: bool

    def __new__(cls, receivers: int, positions: Optional[dict[str, history.Position]] = None,
                repeated: bool = False) -> Sent:
        sent = super().__new__(cls, receivers)
        sent.positions = dict(positions or {})
        sent.repeated = repeated
        return sent

    def __repr__(self) -> str:
        return f"Sent({int(self)}, positions={self.positions!r}, repeated={self.repeated})"
