"""ws4redis's publisher, for Django code: ``RedisPublisher(facility=..., broadcast=True)
.publish_message(RedisMessage("Hello"))``.

The audience is fixed when the publisher is made (``SELF`` is resolved from the request
then, groups from the database); the publisher can then publish any number of messages.
"""

from __future__ import annotations

from typing import Any, Optional

import redis

from ws4tx import _arguments, _audience, _django_settings, envelope, history as _history, naming
from ws4tx.redis_store import RedisMessage, RedisStore

#: The audiences of :meth:`RedisPublisher.fetch_message`.
FETCH_AUDIENCES = ("broadcast", "group", "user", "session", "any")


def event_message(event: str, data: Any = None) -> str:
    """The envelope of an application event (``ValueError`` for an empty name or one of
    the server's own ``ws4tx.*`` names or for NaN and infinities in ``data``; ``TypeError``
    for data JSON cannot encode)."""
    return envelope.encode_event(envelope.check_event_name(event), data)


class RedisPublisher(RedisStore):
    """Publishes to one facility's audience: everybody (``broadcast``), named ``users``
    (names or User objects), ``groups`` (names or Group objects), ``sessions`` (session
    keys, published to under their session channel ids, see :mod:`ws4tx.naming`); any of
    these lists may hold :data:`~ws4tx.redis_store.SELF`, the ``request``'s own.

    ``connection`` (keyword only here; ws4redis's first argument) is a redis-py client to
    use instead of the process's shared one.
    """

    def __init__(
        self,
        request: Any = None,
        facility: Optional[str] = None,
        broadcast: bool = False,
        users: Any = (),
        groups: Any = (),
        sessions: Any = (),
        *,
        connection: Optional[redis.Redis] = None,
    ) -> None:
        super().__init__(connection)
        self.facility = facility
        self._publishers = self._get_message_channels(
            request=request, facility=facility, broadcast=broadcast,
            users=users, groups=groups, sessions=sessions,
        )

    def emit(self, event: str, data: Any = None, expire: int = 0) -> int:
        """Publish the event ``event`` with JSON ``data`` to this publisher's audience (an
        event envelope, :func:`ws4tx.envelope.encode_event`); ``expire`` > 0 also stores it
        for replay. Returns what :meth:`publish_message` returns."""
        return self.publish_message(event_message(event, data), expire=expire)

    def history(self, since: Optional[int] = None,
                limit: Optional[int] = None) -> _history.History:
        """The history of this publisher's channel (its audience must be one channel, of
        a facility with setting ``HISTORY``): the messages after offset ``since`` (the
        first ``limit`` of them), or without ``since`` the last ``limit`` (all without a
        limit), oldest first, with the channel's current epoch and last offset.

        ``ValueError`` for a facility without history or an audience of several channels;
        :class:`~ws4tx.redis_store.PublishError` when Redis cannot be read.
        """
        if self.facility is None:
            raise ValueError("a facility is needed to read a history")
        retention = _arguments.history(_django_settings.history(), self.facility,
                                       self._publishers, since, limit)
        keys_of = naming.cluster_history_keys if self._cluster() else naming.history_keys
        stream, meta = keys_of(_django_settings.prefix(), self._publishers[0])
        keys, args = _history.history_args(stream, meta, retention, since, limit)

        def _read(connection: redis.Redis) -> Any:
            script = connection.register_script(_history.script(_history.HISTORY_SCRIPT))
            return script(keys=keys, args=args)

        return _history.parse_history(self._call("read from", _read, stream))

    def fetch_message(
        self, request: Any, facility: str, audience: str = "any"
    ) -> Optional[RedisMessage]:
        """The message stored for ``request`` under ``facility`` and ``audience``, or None.

        ``audience`` is ``broadcast``, ``group``, ``user``, ``session`` or ``any`` (the
        first stored among the request's session, its user, its groups, broadcast). Only
        the request's own names are looked at; an anonymous request has no user or group.
        """
        if audience not in FETCH_AUDIENCES:
            raise ValueError(f"audience must be one of {FETCH_AUDIENCES}, not {audience!r}")
        naming.check_facility(facility)
        prefix = _django_settings.prefix()
        channels: list[str] = []
        if audience in ("session", "any"):
            session = _audience.session_channel(request)
            if session:
                channels.append(naming.channel(prefix, naming.SESSION, facility, session))
        if audience in ("user", "any"):
            name = _audience.user_name(request)
            if name:
                channels.append(naming.channel(prefix, naming.USER, facility, name))
        if audience in ("group", "any"):
            channels.extend(naming.channel(prefix, naming.GROUP, facility, group)
                            for group in _audience.group_names(request))
        if audience in ("broadcast", "any"):
            channels.append(naming.broadcast_channel(prefix, facility))
        value = self._get_first(channels)
        return RedisMessage(value) if value else None
