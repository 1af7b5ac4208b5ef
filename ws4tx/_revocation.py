"""Users' revocation counters, bumped when a user's credentials change (logout, a new
password, a deactivation, a deletion): every resume token made before is then refused by
every node (see :mod:`ws4tx._resume`). One ``INCR`` per user, on the Redis server (shard,
Cluster slot) that :func:`ws4tx.naming.revocation_key` places the key on; the key never
expires (a counter that went back to 0 would accept the tokens of before).
"""

from __future__ import annotations

from typing import Iterable


def bump(users: Iterable[str]) -> None:
    """Bump the revocation counter of each of ``users`` (names), where the nodes read it
    (its shard; its cluster name and slot on a cluster); raises
    :class:`~ws4tx.redis_store.PublishError` when Redis cannot be reached."""
    from ws4tx import _ops
    from ws4tx.redis_store import RedisStore

    store = RedisStore()
    _ops.run(_ops.revoke(list(users), store._cluster()), store._execute)
