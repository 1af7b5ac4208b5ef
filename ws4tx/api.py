"""Plain functions to push from Django: the API for new code.

::

    from ws4tx import api

    api.publish("foobar", "Hello, everybody", broadcast=True)
    api.emit("orders", "order.paid", {"id": 7}, users=[order.owner], on_commit=True)

``on_commit=True`` publishes only once the current database transaction commits (and not at
all if it rolls back): a message that announces a database change must not reach a browser
that would then read the database before the change is there. Outside a transaction it
publishes at once. The audience (``SELF`` included) is resolved when the function is called.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ws4tx import _django_settings
from ws4tx.publisher import RedisPublisher, event_message
from ws4tx.redis_store import SELF, NotStored, PublishError, RedisMessage, as_message

__all__ = ["SELF", "NotStored", "PublishError", "RedisMessage", "emit", "publish"]


def _publisher(
    facility: str, broadcast: bool, users: Any, groups: Any, sessions: Any, request: Any
) -> RedisPublisher:
    if not (broadcast or users or groups or sessions):
        raise ValueError("no audience: give broadcast=True, users, groups or sessions")
    return RedisPublisher(
        request=request, facility=facility, broadcast=broadcast,
        users=users, groups=groups, sessions=sessions,
    )


def _run(send: Callable[[], int], on_commit: bool) -> Optional[int]:
    if not on_commit:
        return send()
    from django.db import transaction

    transaction.on_commit(send)
    return None


def publish(
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
) -> Optional[int]:
    """Publish ``message`` (str or bytes) to an audience of ``facility``, storing it for
    ``expire`` seconds (default: setting ``EXPIRE``; 0 stores nothing).

    Returns the number of Redis subscribers that got it, or None when ``on_commit`` defers
    it. Raises :class:`PublishError` when Redis is unreachable or refused to publish (with
    ``on_commit``, from the commit), and :class:`NotStored` (with ``.receivers``) when the
    message was delivered but could not be stored: do not retry that one.
    """
    publisher = _publisher(facility, broadcast, users, groups, sessions, request)
    data = as_message(message)
    seconds = _django_settings.expire() if expire is None else _django_settings.check_expire(expire)
    return _run(lambda: publisher.publish_message(data, expire=seconds), on_commit)


def emit(
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
) -> Optional[int]:
    """Send the event ``event`` with JSON ``data`` to an audience of ``facility`` (clients
    of ``ws4tx.js`` receive it with ``on(event, ...)``); ``expire`` > 0 also stores it.

    Returns as :func:`publish` does.
    """
    publisher = _publisher(facility, broadcast, users, groups, sessions, request)
    text = event_message(event, data)
    seconds = _django_settings.check_expire(expire)
    return _run(lambda: publisher.publish_message(text, expire=seconds), on_commit)
