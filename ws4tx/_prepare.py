"""The arguments of ``ws4tx.api``'s functions, checked and turned into what their Redis
operations (:mod:`ws4tx._ops`) take: one implementation for the synchronous functions and
their asynchronous twins (``apublish``, ...). No Redis I/O; ``SELF`` in ``groups`` reads the
request's groups from the database, so the asynchronous API runs this in a thread when it
has a request (:func:`needs_thread`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ws4tx import _arguments, _audience, _django_settings, control, naming, presence as _presence
from ws4tx.publisher import RedisPublisher, event_message
from ws4tx.redis_store import as_message


def needs_thread(request: Any) -> bool:
    """Whether preparing arguments with ``request`` may touch the database (its user and
    groups are loaded lazily): then an async caller prepares them in a thread."""
    return request is not None


def publisher(facility: str, broadcast: bool, users: Any, groups: Any, sessions: Any,
              request: Any) -> RedisPublisher:
    """The audience's channels, in a publisher (ValueError for none at all)."""
    _arguments.audience(facility, broadcast, users, groups, sessions)
    return RedisPublisher(
        request=request, facility=facility, broadcast=broadcast,
        users=users, groups=groups, sessions=sessions,
    )


@dataclass(frozen=True)
class Publish:
    """A checked publish: the channels (in ``publisher``), the payload (None: nothing to
    publish), seconds to store it, its idempotency key."""

    publisher: RedisPublisher
    data: Optional[bytes]
    expire: int
    key: Optional[str]


def publish(facility: str, message: Any, broadcast: bool, users: Any, groups: Any,
            sessions: Any, request: Any, expire: Optional[int],
            key: Optional[str]) -> Publish:
    """``ws4tx.api.publish``'s arguments, checked."""
    audience = publisher(facility, broadcast, users, groups, sessions, request)
    data = as_message(message)
    seconds = _django_settings.expire() if expire is None else _arguments.expire(expire)
    return Publish(audience, data, seconds, None if key is None else naming.check_key(key))


def emit(facility: str, event: str, data: Any, broadcast: bool, users: Any, groups: Any,
         sessions: Any, request: Any, expire: int, key: Optional[str]) -> Publish:
    """``ws4tx.api.emit``'s arguments, checked: the event's envelope as the payload."""
    audience = publisher(facility, broadcast, users, groups, sessions, request)
    text = event_message(event, data)
    seconds = _arguments.expire(expire)
    return Publish(audience, as_message(text), seconds,
                   None if key is None else naming.check_key(key))


def disconnect(users: Any, sessions: Any, facility: Optional[str], code: int, reason: str,
               request: Any) -> control.Command:
    """``ws4tx.api.disconnect``'s command."""
    return control.disconnect(
        users=_audience.users(users, request), sessions=_audience.sessions(sessions, request),
        facility=facility, code=code, reason=reason)


def unsubscribe(users: Any, sessions: Any, facility: Optional[str], audiences: Any,
                groups: Any, reason: str, request: Any) -> control.Command:
    """``ws4tx.api.unsubscribe``'s command."""
    return control.unsubscribe(
        users=_audience.users(users, request), sessions=_audience.sessions(sessions, request),
        facility=facility, audiences=audiences,
        groups=None if groups is None else [getattr(g, "name", g) for g in groups],
        reason=reason)


def subscribe(facility: str, users: Any, sessions: Any, groups: Any, audiences: Any,
              reason: str, request: Any) -> control.Command:
    """``ws4tx.api.subscribe``'s command."""
    return control.subscribe(
        facility, users=_audience.users(users, request),
        sessions=_audience.sessions(sessions, request),
        groups=_audience.groups(groups, request), audiences=audiences, reason=reason)


def presence(facility: str, what: str, broadcast: bool, users: Any, groups: Any,
             sessions: Any, request: Any) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of a presence read (``what``: "list" or "stats")."""
    audience = _arguments.presence(
        _django_settings.presence(), facility, broadcast, _audience.users(users, request),
        _audience.groups(groups, request), _audience.sessions(sessions, request))
    keys, args = _presence.read_args(
        naming.presence_keys(_django_settings.prefix(), facility), what, audience)
    return list(keys), list(args)


def presence_list(reply: Any) -> list[dict[str, Any]]:
    """``ws4tx.api.presence``'s result from the read."""
    return [e.as_dict() for e in _presence.parse_entries(reply)]


def presence_stats(reply: Any) -> dict[str, int]:
    """``ws4tx.api.presence_stats``'s result from the read."""
    stats = _presence.parse_stats(reply)
    return {"clients": stats.clients, "users": stats.users}
