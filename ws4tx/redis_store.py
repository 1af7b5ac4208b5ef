"""Messages and the publishing logic of the Django side (ws4redis's ``ws4redis.redis_store``).

:class:`RedisStore` turns a facility and audiences into channel names (with
:mod:`ws4tx.naming`, the one place names are made) and publishes a message to them in one
Redis round trip: ``PUBLISH channel payload`` for each, plus ``SETEX channel expire payload``
(sent as ``SET channel payload EX expire``, the same command in redis-py 8's non-deprecated
spelling) so that a client connecting later gets it (ws4redis's replay). The SETs go in a
second round trip, once every PUBLISH succeeded: what Redis refused to publish is never
stored, and a message published but not stored raises :class:`NotStored`.

A facility with history (setting ``HISTORY``) is published to by the one Lua script both
halves run (:mod:`ws4tx.history`): per channel, atomically, its next offset, the stream
entry, the replay SET and the PUBLISH (of the payload behind its position, which the server
strips). It writes everything or nothing, so it never raises :class:`NotStored`.

With several Redis servers (shards, :mod:`ws4tx.sharding`) each channel is published to,
stored on and read from its own shard: one round trip per shard concerned (one pipeline
each). A shard that fails does not stop the others: the channels of the shards that
answered got the message (and store it), and then :class:`PublishError` names the shard
that failed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import redis
from redis.exceptions import RedisClusterException, RedisError

from ws4tx import _arguments, _audience, _django_settings, _sync_redis, history, naming
from ws4tx._results import PublishError as PublishError, Sent as Sent
from ws4tx.history import NotStored as NotStored  # the one class, under ws4redis's path
from ws4tx.redis_address import RedisAddress

#: In ``users``, ``groups`` or ``sessions``: the current request's own user name, groups
#: (from the database) or session. An anonymous request has no user and no groups.
SELF = _audience.SELF

T = TypeVar("T")

#: What a message may be made from.
MessageValue = Union[str, bytes, bytearray, memoryview, Sequence[Any]]


class RedisMessage(bytes):
    """A message, as bytes: a str is UTF-8 encoded, bytes are kept.

    ``RedisMessage(value)`` is None (falsy, never published) when ``value`` is empty or is
    the configured heartbeat (setting ``HEARTBEAT``). As in ws4redis, a pub/sub reply
    ``[b"message", ..., data]`` gives its data.
    """

    def __new__(cls, value: MessageValue) -> RedisMessage:
        if isinstance(value, RedisMessage):
            return value
        if isinstance(value, (list, tuple)):
            if len(value) >= 2 and value[0] in (b"message", "message"):
                return cls(value[-1])
            return None  # type: ignore[return-value]
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise TypeError(f"a message is str or bytes, not {type(value).__name__}")
        if not data:
            return None  # type: ignore[return-value]
        heartbeat = _django_settings.heartbeat()
        if heartbeat is not None and data == heartbeat.encode("utf-8"):
            return None  # type: ignore[return-value]
        return super().__new__(cls, data)


def as_message(message: Any) -> Optional[RedisMessage]:
    """``message`` as a :class:`RedisMessage` (None: nothing to publish)."""
    if message is None:
        return None
    return RedisMessage(message)


class RedisStore:
    """The publisher's logic: the channels of an audience, and publishing to them.

    ``connection`` is a redis-py client; by default the process's shared one, built on
    first use from the settings (:mod:`ws4tx._sync_redis`).
    """

    def __init__(self, connection: Optional[redis.Redis] = None) -> None:
        self._own_connection = connection
        #: The channels a message is published to (ws4redis's name).
        self._publishers: list[str] = []
        #: The facility published to (None: not known yet).
        self.facility: Optional[str] = None
        #: On a facility with history: channel -> the position of the last message
        #: :meth:`publish_message` published there.
        self.positions: dict[str, history.Position] = {}

    @property
    def _connection(self) -> redis.Redis:
        """The redis-py client this store talks to."""
        if self._own_connection is not None:
            return self._own_connection
        return _sync_redis.client()

    @_connection.setter
    def _connection(self, connection: Optional[redis.Redis]) -> None:
        self._own_connection = connection

    @staticmethod
    def get_prefix() -> str:
        """The prefix of channel names, with its colon (``ws4tx:``), or ``""`` for none."""
        prefix = _django_settings.prefix()
        return f"{prefix}:" if prefix else ""

    @property
    def channels(self) -> list[str]:
        """The channels :meth:`publish_message` publishes to."""
        return list(self._publishers)

    def _get_message_channels(
        self,
        request: Any = None,
        facility: Optional[str] = None,
        broadcast: bool = False,
        groups: Any = (),
        users: Any = (),
        sessions: Any = (),
    ) -> list[str]:
        """The channels of an audience of ``facility`` (SELF resolved from ``request``)."""
        users_ = _audience.users(users, request)
        groups_ = _audience.groups(groups, request)
        sessions_ = _audience.sessions(sessions, request)
        if not (broadcast or users_ or groups_ or sessions_):
            return []
        if facility is None:
            raise ValueError("a facility is needed to publish")
        naming.check_facility(facility)
        return naming.channels_for(_django_settings.prefix(), facility, broadcast=broadcast,
                                   users=users_, groups=groups_, sessions=sessions_)

    def publish_message(self, message: Any, expire: Optional[int] = None,
                        key: Optional[str] = None) -> Sent:
        """Publish ``message`` to this store's channels, and store it for ``expire`` seconds
        (default: setting ``EXPIRE``, 3600; 0 stores nothing), in one round trip.

        ``message`` is a :class:`RedisMessage`, a str or bytes. A heartbeat or empty message
        is not published. Returns how many Redis subscribers received it (with ws4tx, the
        server processes subscribed to a channel, not browsers), as a :class:`Sent`;
        raises :class:`PublishError` when Redis is unreachable or refuses the PUBLISH
        (nothing was delivered nor stored), after at most ``PUBLISH_TIMEOUT``, and
        :class:`NotStored` when the message was delivered but Redis refused to store it.

        ``key`` (an idempotency key) publishes it once: a publish of the same key to a
        channel within its history's ttl (at least a day) stores and
        delivers nothing and gives the first publish's position (see :class:`Sent`).
        """
        from ws4tx import _ops

        expire = _django_settings.expire() if expire is None else _arguments.expire(expire)
        if key is not None:
            naming.check_key(key)
        sent = _ops.run(_ops.publish(self._publishers, self.facility, as_message(message),
                                     expire, key, self._cluster()), self._execute)
        if sent.positions:
            self.positions = dict(sent.positions)
        return sent

    def _execute(self, batch: Any) -> Any:
        """Run a :class:`ws4tx._ops.Batch` (one round trip per shard concerned, every one
        even after another failed) and give its :class:`ws4tx._ops.Replies`."""
        from ws4tx import _ops

        calls = batch.calls
        if self._own_connection is not None:
            shards: tuple[redis.Redis, ...] = (self._own_connection,)
        else:
            shards = _clients()
        replies = _ops.Replies([None] * len(calls), [""] * len(calls))
        for shard, indices in _ops.shard_groups(calls, len(shards), _sync_redis.shard_index):
            connection = shards[shard]
            where = self._where(connection)
            answered: Any
            try:
                answered = _ops.execute(connection, [calls[i] for i in indices],
                                        _is_cluster_client(connection),
                                        raise_on_error=not batch.errors_as_replies)
            except (RedisError, RedisClusterException) as e:
                answered = e
            _ops.record(replies, batch, indices, where, answered)
        return _ops.finished(replies, batch)

    def _get_first(self, channels: Sequence[str]) -> Optional[bytes]:
        """The first non-empty value stored under ``channels`` (one round trip per
        shard)."""
        if not channels:
            return None
        def _read(connection: redis.Redis, names: list[str]) -> list[Any]:
            if _is_cluster_client(connection):
                return list(connection.mget_nonatomic(  # type: ignore[attr-defined]
                    [naming.cluster_channel(name) for name in names]))
            return list(connection.mget(names))

        values = self._call_each("read from", channels, _read)
        # The client is made without decode_responses: its replies are bytes.
        return next((value for value in values if isinstance(value, bytes) and value), None)

    def _cluster(self) -> Callable[[Optional[str]], bool]:
        """Whether a channel or key (None: the first shard's registry and control
        channel) lives on a Redis Cluster, where it is published with ``SPUBLISH`` under
        its cluster name: a property of its shard (:func:`ws4tx._sync_redis.on_cluster`),
        or of the connection this store was given."""
        if self._own_connection is not None:
            own = _is_cluster_client(self._own_connection)
            return lambda name: own
        return _sync_redis.on_cluster

    def _by_shard(self, names: Sequence[str]) -> list[tuple[redis.Redis, list[int]]]:
        """The client of each shard that holds some of ``names``, with the indices (in
        ``names``) of those it holds, in the order of their first name."""
        if self._own_connection is not None:
            return [(self._own_connection, list(range(len(names))))]
        shards = _clients()
        if len(shards) == 1:
            return [(shards[0], list(range(len(names))))]
        groups: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(_sync_redis.shard_index(name), []).append(i)
        return [(shards[shard], indices) for shard, indices in groups.items()]

    def _call_each(self, action: str, names: Sequence[str],
                   run: Callable[[redis.Redis, list[str]], list[Any]],
                   failures: Optional[list[PublishError]] = None) -> list[Any]:
        """``run(client, names of its shard)`` for each shard concerned (every one, even
        after another failed); the replies in the order of ``names``. Raises
        :class:`PublishError` naming the first shard that failed, or, given a
        ``failures`` list, adds each to it and leaves None as those names' replies."""
        replies: list[Any] = [None] * len(names)
        found: list[PublishError] = [] if failures is None else failures
        for connection, indices in self._by_shard(names):
            if not indices:
                continue
            try:
                answered = run(connection, [names[i] for i in indices])
            except (RedisError, RedisClusterException) as e:
                failure = PublishError(
                    f"could not {action} Redis at {self._where(connection)}: {e}")
                failure.__cause__ = e
                found.append(failure)
                continue
            for i, reply in zip(indices, answered, strict=True):
                replies[i] = reply
        if found and failures is None:
            raise found[0]
        return replies

    def _call(self, action: str, run: Callable[[redis.Redis], T],
              name: Optional[str] = None) -> T:
        """``run(client)`` on this store's client, or (with shards) on the client of the
        shard of channel or key ``name`` (the first shard's without a name)."""
        if self._own_connection is not None:
            connection = self._own_connection
        elif name is None:
            connection = _clients()[0]
        else:
            _clients()
            connection = _sync_redis.client_for(name)
        try:
            return run(connection)
        except (RedisError, RedisClusterException) as e:
            raise PublishError(
                f"could not {action} Redis at {self._where(connection)}: {e}") from e

    def _where(self, connection: redis.Redis) -> str:
        if connection is not self._own_connection:
            found = _sync_redis.address_of(connection)
            return (found or _sync_redis.address()).safe_url
        kwargs = connection.connection_pool.connection_kwargs
        try:
            return RedisAddress(
                host=str(kwargs.get("host", "localhost")),
                port=int(kwargs.get("port", 6379)),
                db=int(kwargs.get("db", 0)),
                password=kwargs.get("password"),
                unix_socket_path=kwargs.get("path"),
            ).safe_url
        except (TypeError, ValueError):
            return "the given connection"


def _is_cluster_client(connection: redis.Redis) -> bool:
    """Whether ``connection`` is a cluster client (each call alone, cluster names)."""
    return isinstance(connection, redis.RedisCluster)


def _clients() -> tuple[redis.Redis, ...]:
    """The process's clients; :class:`PublishError` naming the address when they cannot
    be built (redis-py's cluster client connects as it is built)."""
    try:
        return _sync_redis.clients()
    except (RedisError, RedisClusterException) as e:
        raise PublishError(
            f"could not reach Redis at {_sync_redis.address().safe_url}: {e}") from e
