"""The asynchronous twins of ``ws4tx.api``'s functions, for Django's async views (and any
asyncio code): ``await api.apublish(...)`` takes the same arguments as ``api.publish``,
gives the same result and raises the same errors, on redis-py's asyncio client
(:mod:`ws4tx._async_redis`), without blocking the event loop.

The arguments are checked by the functions the synchronous API uses (:mod:`ws4tx._prepare`)
and the Redis work is the same operation (:mod:`ws4tx._ops`): only the I/O differs. With a
``request`` the arguments are prepared in a thread (``sync_to_async``), since its user and
``SELF``'s groups come from the database; ``on_commit=True`` runs the synchronous function
in a thread, where Django's transactions are.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from asgiref.sync import sync_to_async

from ws4tx import _async_redis, _commit, _ops, _prepare, closecodes, control, naming
from ws4tx.history import History, Position
from ws4tx.redis_store import Sent

T = TypeVar("T")


async def _prepared(request: Any, prepare: Callable[..., T], *args: Any) -> T:
    if _prepare.needs_thread(request):
        return await sync_to_async(prepare)(*args)
    return prepare(*args)


async def _send(prepared: _prepare.Publish, on_commit: bool) -> Optional[Sent]:
    """Publish ``prepared`` now, or, ``on_commit``, as the synchronous API does (through
    the outbox, in the transaction's thread: None then)."""
    if on_commit:
        return await sync_to_async(_commit.publish)(prepared, True)
    audience = prepared.publisher
    sent = await _ops.arun(
        _ops.publish(audience.channels, audience.facility, prepared.data, prepared.expire,
                     prepared.key, _async_redis.on_cluster), _async_redis.execute)
    if sent.positions:
        audience.positions = dict(sent.positions)
    return sent


async def apublish(
    facility: str,
    message: Any,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    expire: Optional[int] = None,
    on_commit: bool = False,
    key: Optional[str] = None,
) -> Optional[Sent]:
    """``await``-able :func:`ws4tx.api.publish`."""
    prepared = await _prepared(request, _prepare.publish, facility, message, broadcast,
                               users, groups, sessions, request, expire, key)
    return await _send(prepared, on_commit)


async def aemit(
    facility: str,
    event: str,
    data: Any = None,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    expire: int = 0,
    on_commit: bool = False,
    key: Optional[str] = None,
) -> Optional[Sent]:
    """``await``-able :func:`ws4tx.api.emit`."""
    prepared = await _prepared(request, _prepare.emit, facility, event, data, broadcast,
                               users, groups, sessions, request, expire, key)
    return await _send(prepared, on_commit)


async def ahistory(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
    since: Optional[int] = None,
    limit: Optional[int] = None,
) -> History:
    """``await``-able :func:`ws4tx.api.history`."""
    audience = await _prepared(request, _prepare.publisher, facility, broadcast, users,
                               groups, sessions, request)
    return await _ops.arun(_ops.history(audience.channels, audience.facility, since, limit,
                                        _async_redis.on_cluster), _async_redis.execute)


async def aposition(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> dict[str, Position]:
    """``await``-able :func:`ws4tx.api.position`."""
    audience = await _prepared(request, _prepare.publisher, facility, broadcast, users,
                               groups, sessions, request)
    return await _ops.arun(_ops.positions(audience.channels, audience.facility,
                                          _async_redis.on_cluster), _async_redis.execute)


async def _read_presence(facility: str, what: str, broadcast: bool, users: Any,
                         groups: Any, sessions: Any, request: Any) -> Any:
    keys, args = await _prepared(request, _prepare.presence, facility, what, broadcast,
                                 users, groups, sessions, request)
    return await _ops.arun(_ops.presence(keys, args), _async_redis.execute)


async def apresence(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> list[dict[str, Any]]:
    """``await``-able :func:`ws4tx.api.presence`."""
    return _prepare.presence_list(await _read_presence(
        facility, "list", broadcast, users, groups, sessions, request))


async def apresence_stats(
    facility: str,
    *,
    broadcast: bool = False,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    request: Any = None,
) -> dict[str, int]:
    """``await``-able :func:`ws4tx.api.presence_stats`."""
    return _prepare.presence_stats(await _read_presence(
        facility, "stats", broadcast, users, groups, sessions, request))


async def _command(command: control.Command, on_commit: bool) -> Optional[int]:
    """Send ``command`` to the nodes now, or, ``on_commit``, as the synchronous API does
    once the transaction commits (in the transaction's thread: None then)."""
    if on_commit:
        return await sync_to_async(_commit.command)(command, True)
    return await _ops.arun(_ops.command(command, _async_redis.on_cluster),
                           _async_redis.execute)


async def adisconnect(
    *,
    users: Any = (),
    sessions: Any = (),
    facility: Optional[str] = None,
    code: int = closecodes.CLOSED_BY_SITE,
    reason: str = control.DEFAULT_REASON,
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """``await``-able :func:`ws4tx.api.disconnect`."""
    command = await _prepared(request, _prepare.disconnect, users, sessions, facility, code,
                              reason, request)
    return await _command(command, on_commit)


async def aunsubscribe(
    *,
    users: Any = (),
    sessions: Any = (),
    facility: Optional[str] = None,
    audiences: Any = naming.AUDIENCES,
    groups: Any = None,
    reason: str = "",
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """``await``-able :func:`ws4tx.api.unsubscribe`."""
    command = await _prepared(request, _prepare.unsubscribe, users, sessions, facility,
                              audiences, groups, reason, request)
    return await _command(command, on_commit)


async def asubscribe(
    facility: str,
    *,
    users: Any = (),
    groups: Any = (),
    sessions: Any = (),
    audiences: Any = naming.AUDIENCES,
    reason: str = "",
    request: Any = None,
    on_commit: bool = False,
) -> Optional[int]:
    """``await``-able :func:`ws4tx.api.subscribe`."""
    command = await _prepared(request, _prepare.subscribe, facility, users, sessions,
                              groups, audiences, reason, request)
    return await _command(command, on_commit)
