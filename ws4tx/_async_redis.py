"""The redis.asyncio clients of the asynchronous API (``ws4tx.api.apublish`` & co.).

The same servers as the synchronous side (:func:`ws4tx._sync_redis.addresses`: ``use_url``,
the settings, ``$WS4TX_REDIS_URL``), the same bounds (``PUBLISH_TIMEOUT`` on connecting and
on each answer, one retry on a fresh connection), the same topologies: one Redis, Sentinel
(redis.asyncio's ``Sentinel(...).master_for()``), shards (a client each, channels placed by
:func:`ws4tx._sync_redis.shard_index`) and a Redis Cluster (redis.asyncio's
``RedisCluster``). A redis.asyncio client belongs to the event loop it first ran on, so
there is one set of clients per running loop, built on first use and dropped with the
loop (or when the synchronous side rebuilds its clients: a setting changed).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Optional

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    RedisError,
)

from ws4tx import _django_settings, _ops, _sync_redis, naming
from ws4tx.redis_address import RedisAddress
from ws4tx.redis_store import PublishError

_lock = threading.Lock()
#: loop -> (the sync side's generation the clients were built for, the clients)
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                    tuple[int, tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def clients() -> tuple[Any, ...]:
    """The running loop's redis.asyncio clients, one per shard; :class:`PublishError`
    naming the address when one cannot be built."""
    loop = asyncio.get_running_loop()
    try:
        addresses = _sync_redis.addresses()
    except (RedisError, RedisClusterException) as e:  # pragma: no cover - parse errors
        raise PublishError(f"could not reach Redis: {e}") from e
    generation = _sync_redis.generation()
    with _lock:
        found = _clients.get(loop)
        if found is not None and found[0] == generation:
            return found[1]
        timeout = _django_settings.publish_timeout()
        built = tuple(_build(address, timeout) for address in addresses)
        _clients[loop] = (generation, built)
        return built


def on_cluster(name: Optional[str]) -> bool:
    """Whether channel or key ``name`` lives on a Redis Cluster shard
    (:func:`ws4tx._sync_redis.on_cluster`)."""
    return _sync_redis.on_cluster(name)


async def aclose() -> None:
    """Close the running loop's clients (the next call builds new ones)."""
    with _lock:
        found = _clients.pop(asyncio.get_running_loop(), None)
    for client in found[1] if found else ():
        await client.aclose()


def _build(found: RedisAddress, timeout: float) -> Any:
    bounds: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if found.is_cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return _sync_redis.retried_on_connection_errors(RedisCluster)(
            startup_nodes=[ClusterNode(host, port) for host, port in found.cluster_nodes],
            username=found.username, password=found.password, **bounds)
    if not found.is_sentinel:
        return Redis.from_url(found.url, retry=retry, **bounds)
    from redis.asyncio.sentinel import Sentinel

    assert found.master_name is not None
    sentinel = Sentinel(
        list(found.sentinels),
        sentinel_kwargs={"password": found.sentinel_password, "ssl": found.ssl, **bounds},
        **bounds,
    )
    return sentinel.master_for(found.master_name, db=found.db, username=found.username,
                               password=found.password, retry=retry, ssl=found.ssl)


async def execute(batch: _ops.Batch) -> _ops.Replies:
    """Run ``batch`` as :meth:`ws4tx.redis_store.RedisStore._execute` does, with the
    running loop's clients."""
    shards = clients()
    addresses = _sync_redis.addresses()
    calls = batch.calls
    replies = _ops.Replies([None] * len(calls), [""] * len(calls))
    prefix = _django_settings.prefix()

    def shard_index(name: str) -> int:
        return naming.shard_of(prefix, name, len(shards))

    for shard, indices in _ops.shard_groups(calls, len(shards), shard_index):
        where = addresses[shard].safe_url
        answered: Any
        try:
            answered = await _ops.aexecute(shards[shard], [calls[i] for i in indices],
                                           addresses[shard].is_cluster,
                                           raise_on_error=not batch.errors_as_replies)
        except (RedisError, RedisClusterException) as e:
            answered = e
        _ops.record(replies, batch, indices, where, answered)
    return _ops.finished(replies, batch)
