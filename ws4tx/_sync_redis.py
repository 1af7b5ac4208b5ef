"""The process's one redis-py client, for the Django side.

Built on first use (never at import time) from, in order: the URL given to :func:`use_url`,
the ``WS4TX_REDIS_URL`` setting, the ``WS4TX_``/``WS4REDIS_CONNECTION`` dictionary, the
``WS4TX_REDIS_URL`` environment variable, ``redis://localhost:6379/0``.

Every Redis call is bounded by the ``PUBLISH_TIMEOUT`` setting (default 5 s): connecting
and each answer time out, and a broken connection is retried once on a fresh one (a Redis
restart is then invisible), never more, so that a request never hangs on a Redis that is
down. The client's connection pool is thread-safe and survives ``fork``.

For a ``redis+sentinel://`` address the client is redis-py's ``Sentinel(...).master_for()``:
each new connection asks the Sentinels where the master is (and checks its role), so after
a failover the next call (or its one retry) reaches the new master.

For a ``redis+cluster://`` address the client is redis-py's ``RedisCluster``, and messages
are published with ``SPUBLISH`` (sharded pub/sub, see :func:`on_cluster`). A cluster may be
one shard among others: each shard has the client of its own kind.

Several servers (a list of URLs: channels sharded over them) get one client each;
:func:`client_for` is the client of a channel's or key's shard
(:func:`ws4tx.naming.shard_of`, the function the server uses too: the control channel,
the reply channels and the node registry on the first).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from ws4tx import _django_settings, _history_check, naming, redis_address, schema
from ws4tx.redis_address import RedisAddress

#: Settings whose change (``override_settings``) makes the next call build a new client.
WATCHED_SETTINGS = frozenset(
    {redis_address.REDIS_URL_ENV}
    | set(schema.setting_names("CONNECTION"))
    | set(schema.setting_names("PUBLISH_TIMEOUT"))
)

_lock = threading.Lock()
_clients: Optional[tuple[redis.Redis, ...]] = None
_addresses: Optional[tuple[RedisAddress, ...]] = None
_forced_url: Optional[str] = None
#: How many times the clients were dropped (the async clients follow it).
_generation = 0


def use_url(url: str) -> None:
    """Make every later client of this process use ``url`` (or several URLs separated by
    whitespace: the shards, in order), whatever the settings say.

    The Twisted server calls it when it hosts the Django site, so that both halves use the
    same Redis (an embedded one included). Raises ``InvalidRedisAddress`` for a bad URL.
    """
    global _forced_url
    redis_address.parse_list(url, "use_url")  # refuse a bad URL here, not at the first publish
    with _lock:
        _forced_url = url
        _drop()


def reset() -> None:
    """Forget :func:`use_url` and close the client; the next call builds a new one.
    For tests."""
    global _forced_url
    with _lock:
        _forced_url = None
        _drop()


def address() -> RedisAddress:
    """Where this process's client connects (or will connect); with shards, the first."""
    return addresses()[0]


def addresses() -> tuple[RedisAddress, ...]:
    """Every Redis server of this process, in the shards' order."""
    with _lock:
        if _addresses is not None:
            return _addresses
        return _resolve()


def client() -> redis.Redis:
    """The process's redis-py client, built on first use; with shards, the first one's
    (:func:`client_for` picks a channel's)."""
    return clients()[0]


def clients() -> tuple[redis.Redis, ...]:
    """A redis-py client per Redis server, in the shards' order, built on first use."""
    global _clients, _addresses
    with _lock:
        if _clients is None:
            _watch_settings()
            found = _resolve()
            timeout = _django_settings.publish_timeout()
            _clients = tuple(_build(address, timeout) for address in found)
            _addresses = found
        return _clients


def on_cluster(name: Optional[str]) -> bool:
    """Whether channel or key ``name`` (None: the first shard's registry and control
    channel) lives on a Redis Cluster (``SPUBLISH``, cluster names): a property of its
    shard, not of the process."""
    found = addresses()
    index = 0 if name is None else naming.shard_of(_django_settings.prefix(), name,
                                                   len(found))
    return found[index].is_cluster


def shard_index(name: str) -> int:
    """The index of the shard of channel or key ``name`` (0 with one Redis)."""
    return naming.shard_of(_django_settings.prefix(), name, len(addresses()))


def client_for(name: str) -> redis.Redis:
    """The client of the Redis server that holds channel or key ``name``."""
    return clients()[shard_index(name)]


def address_of(connection: redis.Redis) -> Optional[RedisAddress]:
    """The address of one of this process's clients, or None for another client."""
    with _lock:
        if _clients is None or _addresses is None:
            return None
        for known, found in zip(_clients, _addresses, strict=True):
            if known is connection:
                return found
        return None


_ClusterT = TypeVar("_ClusterT", bound=type)


@functools.cache
def retried_on_connection_errors(cluster: _ClusterT) -> _ClusterT:
    """``cluster`` (redis-py's ``RedisCluster``, or redis.asyncio's) that retries a
    command after a lost connection or a changed cluster, as its class does, but not after
    a timeout: a command that timed out may have run (a publish stored and delivered), and
    running it again would do it twice. One Redis and Sentinel retry on a lost connection
    only, too."""
    allowed = tuple(e for e in cluster.ERRORS_ALLOW_RETRY  # type: ignore[attr-defined]
                    if not issubclass(e, RedisTimeoutError))
    return type(cluster.__name__, (cluster,), {  # type: ignore[return-value]
        "__module__": __name__, "ERRORS_ALLOW_RETRY": allowed})


def _build(found: RedisAddress, timeout: float) -> redis.Redis:
    """A client of ``found`` whose every call is bounded by ``timeout``."""
    bounds: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
    }
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if found.is_cluster:
        from redis.cluster import ClusterNode, RedisCluster

        cluster: redis.Redis = retried_on_connection_errors(RedisCluster)(
            startup_nodes=[ClusterNode(host, port) for host, port in found.cluster_nodes],
            username=found.username, password=found.password, **bounds)
        return cluster
    if not found.is_sentinel:
        return redis.Redis.from_url(found.url, retry=retry, **bounds)
    from redis.sentinel import Sentinel

    assert found.master_name is not None  # is_sentinel says there is one
    sentinel = Sentinel(
        list(found.sentinels),
        sentinel_kwargs={"password": found.sentinel_password, "ssl": found.ssl, **bounds},
        **bounds,
    )
    master: redis.Redis = sentinel.master_for(
        found.master_name, db=found.db, username=found.username,
        password=found.password, retry=retry, ssl=found.ssl,
    )
    return master


def _resolve() -> tuple[RedisAddress, ...]:
    if _forced_url is not None:
        return redis_address.parse_list(_forced_url, "use_url")
    return redis_address.shards_from_settings(_django_settings.django_settings())


def generation() -> int:
    """A number that changes whenever the clients are dropped (a setting changed,
    :func:`use_url`, :func:`reset`): :mod:`ws4tx._async_redis` rebuilds its own then. Also
    watches the settings, as building the clients does."""
    with _lock:
        _watch_settings()
        return _generation


def _drop() -> None:
    """Close and forget the client (the caller holds the lock), and whether the nodes of
    its registry agreed with this site's ``HISTORY``: the next client may reach others."""
    global _clients, _addresses, _generation
    _generation += 1
    old, _clients, _addresses = _clients, None, None
    for each in old or ():
        each.close()
    _history_check.forget()


def _watch_settings() -> None:
    """Rebuild the client when a test changes a setting it depends on."""
    _django_settings.on_change(WATCHED_SETTINGS, _dropLocked, "ws4tx._sync_redis")


def _dropLocked() -> None:
    with _lock:
        _drop()
