"""Users' revocation counters, bumped when a user's credentials change (logout, a new
password, a deactivation, a deletion): every resume token made before is then refused by
every node (see :mod:`ws4tx._resume`). One ``INCR`` per user, on the Redis server (shard,
Cluster slot) that :func:`ws4tx.naming.revocation_key` places the key on; the key never
expires (a counter that went back to 0 would accept the tokens of before).
"""

from __future__ import annotations

from typing import Iterable

from ws4tx import _django_settings, _sync_redis, naming


def bump(users: Iterable[str]) -> None:
    """Bump the revocation counter of each of ``users`` (names); raises redis-py's
    errors when Redis cannot be reached."""
    prefix = _django_settings.prefix()
    for user in users:
        key = naming.revocation_key(prefix, user)
        _sync_redis.client_for(key).incr(key)
