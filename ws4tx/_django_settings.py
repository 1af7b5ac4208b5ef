"""The Django side's settings, read from ``django.conf.settings`` when asked (never at import
time, so ``override_settings`` and late configuration work) and checked, with errors that
name the setting. Each setting is read as :mod:`ws4tx.schema` declares it (``WS4TX_<NAME>``,
then ``WS4REDIS_<NAME>``), exactly as the server reads it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Callable, Optional

from django.core.exceptions import ImproperlyConfigured

from ws4tx import history as _history, naming, schema

DEFAULT_EXPIRE: int = schema.get("expire").default
DEFAULT_PUBLISH_TIMEOUT: float = schema.get("publish_timeout").default
DEFAULT_TOKEN_MAX_AGE: float = schema.get("token_max_age").default
DEFAULT_WEBSOCKET_URL: str = schema.get("websocket_url").default


def django_settings() -> Any:
    """Django's settings object (imported here so that importing ws4tx needs no settings);
    in a process that has no Django settings at all (a script, a shell), an empty one, so
    that every setting takes its default and the Redis address comes from
    ``$WS4TX_REDIS_URL``."""
    from django.conf import settings

    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return _NO_SETTINGS
    return settings


#: What a process without Django settings reads its settings from: nothing.
_NO_SETTINGS = SimpleNamespace()

#: The ``HISTORY`` a process without Django settings took from the live nodes.
_adopted_history: Optional[tuple[_history.Rule, ...]] = None


def configured() -> bool:
    """Whether this process has Django settings (a site), not a plain script or shell."""
    return django_settings() is not _NO_SETTINGS


def adopt_history(rules: Optional[tuple[_history.Rule, ...]]) -> None:
    """Take ``rules`` as ``HISTORY`` in a process without Django settings (None: forget)."""
    global _adopted_history
    _adopted_history = rules


def _value(key: str) -> Any:
    """Setting ``key`` as :mod:`ws4tx.schema` reads it (as the server does), or its default;
    a bad value raises ImproperlyConfigured naming the setting."""
    try:
        return schema.read(django_settings(), key)
    except schema.SettingError as e:
        raise ImproperlyConfigured(str(e)) from None


def prefix() -> Optional[str]:
    """The channel name prefix: ``PREFIX``, default ``ws4tx``; ``""`` or None for none."""
    result: Optional[str] = _value("prefix")
    return result


def expire() -> int:
    """Seconds a published message is stored for replay: ``EXPIRE``, default 3600."""
    result: int = _value("expire")
    return result


def heartbeat() -> Optional[str]:
    """The ws4redis heartbeat string (``HEARTBEAT``), or None when unset or ``""``.

    None too when Django is not configured at all, so that a :class:`RedisMessage` can be
    made by a script that never set Django up.
    """
    try:
        settings = django_settings()
        getattr(settings, "WS4TX_HEARTBEAT", None)
    except ImproperlyConfigured:
        return None
    result: Optional[str] = _value("heartbeat")
    return result


def history() -> tuple[_history.Rule, ...]:
    """The facilities that keep a history: setting ``HISTORY`` (as the server reads it),
    in its order; none by default. A process without Django settings has the live nodes'
    once it has read them (:mod:`ws4tx._history_check`)."""
    if _adopted_history is not None and not configured():
        return _adopted_history
    result: tuple[_history.Rule, ...] = _value("history")
    return result


def history_for(facility: str) -> Optional[_history.Retention]:
    """The history ``facility`` keeps under :func:`history`, or None when it keeps none."""
    return _history.history_for(history(), facility)


def presence() -> tuple[str, ...]:
    """The facilities (globs) that keep a presence: setting ``PRESENCE``; none by default."""
    result: tuple[str, ...] = _value("presence")
    return result


def publish_timeout() -> float:
    """Bound in seconds on connecting to Redis and on each of its answers:
    ``PUBLISH_TIMEOUT``, default 5."""
    result: float = _value("publish_timeout")
    return result


def token_max_age() -> float:
    """Seconds a connection token stays valid: ``TOKEN_MAX_AGE``, default 300."""
    result: float = _value("token_max_age")
    return result


def resume_ttl() -> float:
    """Seconds a resume token stays valid: ``RESUME_TTL``, default 300 (0: off)."""
    result: float = _value("resume_ttl")
    return result


#: ``SESSION_CHANNELS`` values: session channels named by a derived id (the default) or,
#: like ws4redis, by the session key itself.
SESSION_CHANNELS_ID = "id"
SESSION_CHANNELS_KEY = "key"


def session_channels() -> str:
    """How session channels are named: ``SESSION_CHANNELS``, ``"id"`` (default: a keyed
    one-way id of the session key, :func:`ws4tx.naming.session_channel_id`) or ``"key"``
    (the raw session key, as ws4redis: only to share Redis names with a running ws4redis;
    live session keys are then visible to every Redis client, and connection tokens carry no
    session)."""
    value: str = _value("session_channels")
    return value


def session_channel(session_key: str) -> str:
    """The name of the session ``session_key`` in channel names (see
    :func:`session_channels`)."""
    if session_channels() == SESSION_CHANNELS_KEY:
        return session_key
    secret = getattr(django_settings(), "SECRET_KEY", "")
    if not secret:
        raise ImproperlyConfigured("session channels need the setting SECRET_KEY")
    return naming.session_channel_id(secret, session_key)


def disconnect_on_logout() -> bool:
    """Whether a logout, a password change or a deactivation closes the connections
    concerned on every node: ``DISCONNECT_ON_LOGOUT``, default True."""
    result: bool = _value("disconnect_on_logout")
    return result


def websocket_url() -> str:
    """The path WebSocket URLs start with: ``WEBSOCKET_URL`` (ws4redis's name, unprefixed),
    default ``/ws/``."""
    result: str = _value("websocket_url")
    return result


#: The ``dispatch_uid`` of every :func:`on_change` watch already connected.
_watching: set[str] = set()


def on_change(names: frozenset[str], callback: Callable[[], None], uid: str) -> None:
    """Call ``callback`` whenever one of the settings ``names`` changes (Django's
    ``setting_changed``, which ``override_settings`` sends), for whoever keeps what it read
    of them; a second call with the same ``uid`` is a no-op."""
    if uid in _watching:
        return
    from django.core.signals import setting_changed

    def changed(setting: str = "", **kwargs: Any) -> None:
        if setting in names:
            callback()

    setting_changed.connect(changed, weak=False, dispatch_uid=uid)
    _watching.add(uid)
