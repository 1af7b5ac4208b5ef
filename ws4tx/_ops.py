"""The Django side's Redis operations, written once for the synchronous API (redis-py) and
the asynchronous one (redis.asyncio): only the I/O differs.

An operation is a generator: it yields the :class:`Batch` of Redis calls it needs next (a
script of ``ws4tx/lua`` or a command, each with the channel or key that places it on its
shard) and receives their :class:`Replies`; what it returns is the API's result. It does no
I/O itself: :func:`run` drives it with a synchronous executor (:class:`ws4tx.redis_store.
RedisStore`), :func:`arun` with an asynchronous one (:mod:`ws4tx._async_redis`). Both
executors send a shard's calls in one round trip (a pipeline; on a Redis Cluster each call
to the node of its slot) with :func:`execute` / :func:`aexecute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generator, Optional, Sequence, TypeVar, Union

from redis.exceptions import RedisClusterException, RedisError

from ws4tx import (
    _arguments,
    _django_settings,
    _history_check,
    control,
    history as _history,
    naming,
    presence as _presence,
)
from ws4tx._results import PublishError, Sent
from ws4tx.history import NotStored

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One Redis call: the script ``script`` (a file of ``ws4tx/lua``) with ``keys`` and
    ``args``, or else the command ``command``; run on the shard of channel or key ``name``
    (None: the first shard, where the node registry and the control channel live)."""

    name: Optional[str]
    command: tuple[Any, ...] = ()
    script: Optional[str] = None
    keys: tuple[Any, ...] = ()
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Batch:
    """Calls to send together (one round trip per shard). ``action`` names them in errors
    ("could not <action> Redis at ..."). A shard that fails does not stop the others; then
    with ``partial`` its calls' replies are None and its failure is in
    :attr:`Replies.failures`, with ``errors_as_replies`` its calls' replies are the errors,
    else the executor raises the first :class:`~ws4tx.PublishError`."""

    action: str
    calls: tuple[Call, ...]
    partial: bool = False
    errors_as_replies: bool = False


@dataclass
class Replies:
    """The replies of a :class:`Batch`, in the order of its calls, and where each call ran
    (a Redis address, password masked); the failures of a ``partial`` batch."""

    values: list[Any]
    where: list[str]
    failures: list[PublishError] = field(default_factory=list)


#: An operation: yields batches, receives their replies, returns its result.
Op = Generator[Batch, Replies, T]

#: Whether the shard of a channel or key (None: the first shard) is a Redis Cluster,
#: where channels and keys have their cluster names and messages go with ``SPUBLISH``
#: (:func:`ws4tx.naming.cluster_name`). Each shard is one Redis, a Sentinel group or a
#: Cluster of its own.
OnCluster = Callable[[Optional[str]], bool]


def run(op: Op[T], execute: Callable[[Batch], Replies]) -> T:
    """Drive ``op`` with the synchronous ``execute``."""
    try:
        batch = next(op)
        while True:
            batch = op.send(execute(batch))
    except StopIteration as done:
        result: T = done.value
        return result


async def arun(op: Op[T], execute: Callable[[Batch], Awaitable[Replies]]) -> T:
    """Drive ``op`` with the asynchronous ``execute``."""
    try:
        batch = next(op)
        while True:
            batch = op.send(await execute(batch))
    except StopIteration as done:
        result: T = done.value
        return result


def shard_groups(calls: Sequence[Call], shards: int,
                 shard_index: Callable[[str], int]) -> list[tuple[int, list[int]]]:
    """The shards that ``calls`` run on, each with the indices of its calls, in the order
    of their first call."""
    if shards == 1:
        return [(0, list(range(len(calls))))]
    groups: dict[int, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(0 if call.name is None else shard_index(call.name), []).append(i)
    return list(groups.items())


def record(replies: Replies, batch: Batch, indices: Sequence[int], where: str,
           answered: Union[list[Any], RedisError, RedisClusterException]) -> None:
    """Put what the shard at ``where`` answered to ``batch``'s calls at ``indices`` (or the
    error it raised) into ``replies``, as the batch asks errors to be kept."""
    if isinstance(answered, (RedisError, RedisClusterException)):
        if not batch.errors_as_replies:
            failure = PublishError(f"could not {batch.action} Redis at {where}: {answered}")
            failure.__cause__ = answered
            replies.failures.append(failure)
            return
        answered = [answered] * len(indices)
    for i, reply in zip(indices, answered, strict=True):
        replies.values[i] = reply
        replies.where[i] = where


def finished(replies: Replies, batch: Batch) -> Replies:
    """``replies`` once every shard answered: the first failure raised unless the batch
    is ``partial``."""
    if replies.failures and not batch.partial:
        raise replies.failures[0]
    return replies


def execute(connection: Any, calls: Sequence[Call], cluster: bool,
            raise_on_error: bool = True) -> list[Any]:
    """Send ``calls`` with the redis-py client ``connection``: one call alone, several in
    a pipeline; on a cluster each alone (redis-py sends it to its slot's node)."""
    if cluster or len(calls) == 1:
        replies: list[Any] = []
        for call in calls:
            try:
                replies.append(_one(connection, call))
            except (RedisError, RedisClusterException) as e:
                if raise_on_error:
                    raise
                replies.append(e)
        return replies
    pipe = connection.pipeline(transaction=False)
    for call in calls:
        if call.script is None:
            pipe.execute_command(*call.command)
        else:
            connection.register_script(_history.script(call.script))(
                keys=list(call.keys), args=list(call.args), client=pipe)
    return list(pipe.execute(raise_on_error=raise_on_error))


def _one(connection: Any, call: Call) -> Any:
    if call.script is None:
        return connection.execute_command(*call.command)
    script = connection.register_script(_history.script(call.script))
    return script(keys=list(call.keys), args=list(call.args))


async def aexecute(connection: Any, calls: Sequence[Call], cluster: bool,
                   raise_on_error: bool = True) -> list[Any]:
    """:func:`execute` with a redis.asyncio client."""
    if cluster or len(calls) == 1:
        replies: list[Any] = []
        for call in calls:
            try:
                replies.append(await _aone(connection, call))
            except (RedisError, RedisClusterException) as e:
                if raise_on_error:
                    raise
                replies.append(e)
        return replies
    pipe = connection.pipeline(transaction=False)
    for call in calls:
        if call.script is None:
            pipe.execute_command(*call.command)
        else:
            await connection.register_script(_history.script(call.script))(
                keys=list(call.keys), args=list(call.args), client=pipe)
    return list(await pipe.execute(raise_on_error=raise_on_error))


async def _aone(connection: Any, call: Call) -> Any:
    if call.script is None:
        return await connection.execute_command(*call.command)
    script = connection.register_script(_history.script(call.script))
    return await script(keys=list(call.keys), args=list(call.args))


# The operations


def _checked() -> Op[None]:
    """Read the node registry when this site's ``HISTORY`` is still to be compared with
    the nodes' (:mod:`ws4tx._history_check`)."""
    mine = _history_check.pending()
    if mine is None:
        return
    keys, args = _history_check.read_args()
    replies = yield Batch("read the node registry of", (
        Call(None, script=_presence.READ_SCRIPT, keys=tuple(keys), args=tuple(args)),),
        partial=True)
    if replies.failures:
        # The registry's Redis cannot answer (its shard is down): the publish goes on to
        # its own shard, which may well be up; the comparison is made once it answers.
        _history_check.unanswered(mine)
        return
    _history_check.judge(mine, replies.values[0])


def publish(channels: Sequence[str], facility: Optional[str], data: Optional[bytes],
            expire: int, key: Optional[str], cluster: OnCluster) -> Op[Sent]:
    """Publish ``data`` to ``channels`` of ``facility``, stored for ``expire`` seconds,
    once per idempotency ``key`` (None: none); see
    :meth:`ws4tx.redis_store.RedisStore.publish_message`."""
    if not data or not channels:
        return Sent(0)
    yield from _checked()
    prefix = _django_settings.prefix()
    retention = _django_settings.history_for(facility) if facility else None
    if retention is None and key is None:
        return (yield from _publish_plain(channels, data, expire, cluster))
    calls = []
    for channel in channels:
        on_cluster = cluster(channel)
        name = naming.cluster_channel(channel) if on_cluster else channel
        once = None if key is None else (
            naming.cluster_once_key(prefix, channel, key) if on_cluster
            else naming.once_key(prefix, channel, key))
        if retention is not None:
            stream, meta = (naming.cluster_history_keys if on_cluster
                            else naming.history_keys)(prefix, channel)
            keys, args = _history.publish_args(name, name, stream, meta, data, retention,
                                               expire, sharded=on_cluster, once=once)
            script = _history.PUBLISH_SCRIPT
        else:
            assert once is not None
            keys, args = _history.publish_once_args(name, name, once, data, expire,
                                                    sharded=on_cluster)
            script = _history.PUBLISH_ONCE_SCRIPT
        calls.append(Call(channel, script=script, keys=tuple(keys), args=tuple(args)))
    replies = yield Batch("publish to", tuple(calls), partial=True)
    if replies.failures:
        raise replies.failures[0]
    receivers, positions, repeated = 0, {}, True
    for channel, reply in zip(channels, replies.values, strict=True):
        if retention is not None:
            published = _history.parse_published(reply)
            positions[channel] = published.position
            count, again = published.receivers, published.repeated
        else:
            count, again = _history.parse_published_once(reply)
        receivers += count
        repeated = repeated and again
    return Sent(receivers, positions, key is not None and repeated)


def _publish_plain(channels: Sequence[str], data: bytes, expire: int,
                   cluster: OnCluster) -> Op[Sent]:
    """PUBLISH to every channel (SPUBLISH on a cluster), then (``expire`` > 0) SET those
    that were published: what Redis refused to publish is never stored; a refused SET
    after a successful PUBLISH raises :class:`~ws4tx.NotStored`."""
    counts = yield Batch("publish to", tuple(
        Call(channel, ("SPUBLISH", naming.cluster_channel(channel), data) if cluster(channel)
             else ("PUBLISH", channel, data))
        for channel in channels), partial=True)
    receivers = sum(int(count) for count in counts.values if count is not None)
    published = [channel for channel, count in zip(channels, counts.values, strict=True)
                 if count is not None]
    if expire > 0 and published:
        stored = yield Batch("store in", tuple(
            Call(channel, ("SET", naming.cluster_channel(channel) if cluster(channel)
                           else channel,
                           data, "EX", expire))
            for channel in published), errors_as_replies=True)
        refused = [(where, reply) for where, reply in zip(stored.where, stored.values,
                                                          strict=True)
                   if isinstance(reply, Exception)]
        if refused and not counts.failures:
            where, error = refused[0]
            raise NotStored(receivers, f"Redis at {where}: {error}")
    if counts.failures:
        raise counts.failures[0]
    return Sent(receivers)


def _retention(facility: Optional[str]) -> _history.Retention:
    retention = _django_settings.history_for(facility) if facility else None
    if retention is None:
        raise ValueError(f"the facility {facility!r} keeps no history (setting "
                         "WS4TX_HISTORY)")
    return retention


def history(channels: Sequence[str], facility: Optional[str], since: Optional[int],
            limit: Optional[int], cluster: OnCluster) -> Op[_history.History]:
    """The history of the one channel of ``channels``; see
    :meth:`ws4tx.publisher.RedisPublisher.history`."""
    if facility is None:
        raise ValueError("a facility is needed to read a history")
    yield from _checked()  # a script without settings takes the nodes' HISTORY first
    retention = _arguments.history(_django_settings.history(), facility, channels, since,
                                   limit)
    channel = channels[0]
    keys_of = naming.cluster_history_keys if cluster(channel) else naming.history_keys
    stream, meta = keys_of(_django_settings.prefix(), channel)
    keys, args = _history.history_args(stream, meta, retention, since, limit)
    # placed by the channel: a cluster's history keys carry its partition's tag instead
    replies = yield Batch("read from", (Call(channel, script=_history.HISTORY_SCRIPT,
                                             keys=tuple(keys), args=tuple(args)),))
    return _history.parse_history(replies.values[0])


def positions(channels: Sequence[str], facility: Optional[str],
              cluster: OnCluster) -> Op[dict[str, _history.Position]]:
    """Where each of ``channels`` (of a facility with history) stands: its epoch and last
    offset, read in one round trip per shard (one call per channel on a cluster), without
    payloads. A channel without an epoch gets one (as a history read gives it)."""
    yield from _checked()  # a script without settings takes the nodes' HISTORY first
    retention = _retention(facility)
    if not channels:
        return {}
    prefix = _django_settings.prefix()
    calls = []
    for channel in channels:
        keys_of = naming.cluster_history_keys if cluster(channel) else naming.history_keys
        stream, meta = keys_of(prefix, channel)
        keys, args = _history.position_args(stream, meta, retention)
        calls.append(Call(channel, script=_history.POSITION_SCRIPT, keys=tuple(keys),
                          args=tuple(args)))
    replies = yield Batch("read from", tuple(calls))
    return {channel: _history.parse_position(reply)
            for channel, reply in zip(channels, replies.values, strict=True)}


def presence(keys: Sequence[Any], args: Sequence[Any]) -> Op[Any]:
    """A presence read (``presence_read.lua``), on the shard of its first key."""
    replies = yield Batch("read from", (Call(str(keys[0]), script=_presence.READ_SCRIPT,
                                             keys=tuple(keys), args=tuple(args)),))
    return replies.values[0]


def revoke(users: Sequence[str], cluster: OnCluster) -> Op[None]:
    """Bump the revocation counter of each of ``users``: every resume token made before is
    refused by every node from then on. The key is named as the nodes read it (its
    cluster name on a cluster)."""
    prefix = _django_settings.prefix()
    calls = []
    for user in users:
        key = naming.revocation_key(prefix, user)
        calls.append(Call(key, ("INCR", naming.cluster_name(prefix, key) if cluster(key)
                                else key)))
    if calls:
        yield Batch("revoke the resume tokens at", tuple(calls))


def command(order: control.Command, cluster: OnCluster) -> Op[int]:
    """Publish the control command ``order`` on the control channel (SPUBLISH in the
    registry's slot of a cluster); how many nodes got it. A disconnect of users first
    bumps their revocation counters (with ``RESUME_TTL``): their connections come back
    authenticated anew, not on a resume token made before."""
    prefix = _django_settings.prefix()
    if isinstance(order, control.Disconnect) and order.users \
            and _django_settings.resume_ttl():
        yield from revoke(sorted(order.users), cluster)
    payload = control.encode(order)
    channel = naming.control_channel(prefix)
    sent = ("SPUBLISH", naming.cluster_name(prefix, channel)) if cluster(channel) \
        else ("PUBLISH", channel)
    replies = yield Batch("send a command to", (Call(channel, (*sent, payload)),))
    return int(replies.values[0])
