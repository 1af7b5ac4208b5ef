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

from ws4tx import (
    _arguments,
    _audience,
    _django_settings,
    _history_check,
    _sync_redis,
    history,
    naming,
)
from ws4tx.history import NotStored as NotStored  # the one class, under ws4redis's path
from ws4tx.redis_address import RedisAddress

#: In ``users``, ``groups`` or ``sessions``: the current request's own user name, groups
#: (from the database) or session. An anonymous request has no user and no groups.
SELF = _audience.SELF

T = TypeVar("T")

#: What a message may be made from.
MessageValue = Union[str, bytes, bytearray, memoryview, Sequence[Any]]


class PublishError(redis.exceptions.ConnectionError):
    """Redis could not be reached or refused the command (it names the Redis address,
    password masked). A subclass of redis-py's ``ConnectionError``, so that code written
    for ws4redis that catches it keeps working."""


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

    def publish_message(self, message: Any, expire: Optional[int] = None) -> int:
        """Publish ``message`` to this store's channels, and store it for ``expire`` seconds
        (default: setting ``EXPIRE``, 3600; 0 stores nothing), in one round trip.

        ``message`` is a :class:`RedisMessage`, a str or bytes. A heartbeat or empty message
        is not published. Returns how many Redis subscribers received it (with ws4tx, the
        server processes subscribed to a channel, not browsers); raises
        :class:`PublishError` when Redis is unreachable or refuses the PUBLISH (nothing
        was delivered nor stored), after at most ``PUBLISH_TIMEOUT``, and
        :class:`NotStored` when the message was delivered but Redis refused to store it.
        """
        expire = _django_settings.expire() if expire is None else _arguments.expire(expire)
        data = as_message(message)
        if not data or not self._publishers:
            return 0
        # This site's HISTORY must be the servers' (ImproperlyConfigured says how not).
        self._call("read the node registry of", _history_check.check)
        retention = _django_settings.history_for(self.facility) if self.facility else None
        if retention is not None:
            return self._send_with_history(self._publishers, data, expire, retention)
        return self._send(self._publishers, data, expire)

    def _send_with_history(self, channels: Sequence[str], data: bytes, expire: int,
                           retention: history.Retention) -> int:
        """Run the publish script (``ws4tx/lua/publish.lua``) for every channel, in one
        round trip per shard; :attr:`positions` has the position of the message on each
        channel."""
        prefix = _django_settings.prefix()

        def _publish(connection: redis.Redis, names: list[str]) -> list[Any]:
            script = connection.register_script(history.script(history.PUBLISH_SCRIPT))
            if self._cluster():
                # each channel's keys on its partition's slot, SPUBLISH (redis-py routes
                # each script by its keys)
                replies = []
                for channel in names:
                    name = naming.cluster_channel(channel)
                    stream, meta = naming.cluster_history_keys(prefix, channel)
                    keys, args = history.publish_args(name, name, stream, meta, data,
                                                      retention, expire, sharded=True)
                    replies.append(script(keys=keys, args=args))
                return replies
            pipe = connection.pipeline(transaction=False)
            for channel in names:
                stream, meta = naming.history_keys(prefix, channel)
                keys, args = history.publish_args(channel, channel, stream, meta, data,
                                                  retention, expire)
                script(keys=keys, args=args, client=pipe)
            return pipe.execute()

        published = [history.parse_published(reply)
                     for reply in self._call_each("publish to", channels, _publish)]
        self.positions = {channel: result.position
                          for channel, result in zip(channels, published, strict=True)}
        return sum(result.receivers for result in published)

    def _send(self, channels: Sequence[str], data: bytes, expire: int) -> int:
        """PUBLISH to every channel in one round trip (per shard), then (``expire`` > 0)
        SET them in a second one: a message Redis refused to publish is never stored, and
        a failed SET after a successful PUBLISH raises :class:`NotStored`, not
        :class:`PublishError`."""
        def _publish(connection: redis.Redis, names: list[str]) -> list[Any]:
            if self._cluster():
                # sharded pub/sub, on the channel's cluster name (its partition's slot)
                return [connection.spublish(naming.cluster_channel(channel), data)
                        for channel in names]
            pipe = connection.pipeline(transaction=False)
            for channel in names:
                pipe.publish(channel, data)
            return pipe.execute()

        failures: list[PublishError] = []
        counts = self._call_each("publish to", channels, _publish, failures)
        receivers = sum(int(count) for count in counts if count is not None)
        if expire > 0:
            # stored where it was published (with shards, a server may have failed)
            published = [c for c, count in zip(channels, counts, strict=True)
                         if count is not None]
            try:
                self._store(published, data, expire, receivers)
            except NotStored:
                if not failures:
                    raise
        if failures:
            raise failures[0]
        return receivers

    def _store(self, channels: Sequence[str], data: bytes, expire: int,
               receivers: int) -> None:
        if not channels:
            return
        problem: Optional[str] = None
        cluster = self._cluster()
        for connection, indices in self._by_shard(channels):
            pipe = connection.pipeline(transaction=False)
            for i in indices:
                key = naming.cluster_channel(channels[i]) if cluster else channels[i]
                pipe.set(key, data, ex=expire)  # SETEX, as redis-py 8 spells it
            try:
                replies = pipe.execute(raise_on_error=False)
            except RedisError as e:
                replies = [e]
            errors = [reply for reply in replies if isinstance(reply, Exception)]
            if errors and problem is None:
                problem = f"Redis at {self._where(connection)}: {errors[0]}"
        if problem is not None:
            raise NotStored(receivers, problem)

    def _get_first(self, channels: Sequence[str]) -> Optional[bytes]:
        """The first non-empty value stored under ``channels`` (one round trip per
        shard)."""
        if not channels:
            return None
        def _read(connection: redis.Redis, names: list[str]) -> list[Any]:
            if self._cluster():
                return list(connection.mget_nonatomic(  # type: ignore[attr-defined]
                    [naming.cluster_channel(name) for name in names]))
            return list(connection.mget(names))

        values = self._call_each("read from", channels, _read)
        # The client is made without decode_responses: its replies are bytes.
        return next((value for value in values if isinstance(value, bytes) and value), None)

    def _cluster(self) -> bool:
        """Whether this store publishes to a Redis Cluster (with ``SPUBLISH``)."""
        if self._own_connection is not None:
            return isinstance(self._own_connection, redis.RedisCluster)
        return _sync_redis.is_cluster()

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


def _clients() -> tuple[redis.Redis, ...]:
    """The process's clients; :class:`PublishError` naming the address when they cannot
    be built (redis-py's cluster client connects as it is built)."""
    try:
        return _sync_redis.clients()
    except (RedisError, RedisClusterException) as e:
        raise PublishError(
            f"could not reach Redis at {_sync_redis.address().safe_url}: {e}") from e
