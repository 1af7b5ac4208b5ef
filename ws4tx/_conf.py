"""The Django side's settings, read from ``django.conf.settings`` when asked (never at import
time, so ``override_settings`` and late configuration work) and checked, with errors that
name the setting. Every name is looked up as ``WS4TX_<NAME>``, then ``WS4REDIS_<NAME>``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from django.core.exceptions import ImproperlyConfigured

from ws4tx import _settings, naming

DEFAULT_EXPIRE = 3600
DEFAULT_PUBLISH_TIMEOUT = 5.0
DEFAULT_TOKEN_MAX_AGE = 300
DEFAULT_WEBSOCKET_URL = "/ws/"

_UNSET = object()


def django_settings() -> Any:
    """Django's settings object (imported here so that importing ws4tx needs no settings)."""
    from django.conf import settings

    return settings


def _names(name: str) -> str:
    return "/".join(_settings.setting_names(name))


def _value(name: str, default: Any) -> Any:
    return _settings.lookup(django_settings(), name, default)


def prefix() -> Optional[str]:
    """The channel name prefix: ``PREFIX``, default ``ws4tx``; ``""`` or None for none."""
    value = _value("PREFIX", naming.DEFAULT_PREFIX)
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(f"setting {_names('PREFIX')} must be a string, not {value!r}")
    return value or None


def check_expire(value: Any, origin: str = "expire") -> int:
    """``value`` as a number of seconds to store a message for (0: not stored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{origin} must be a whole number of seconds, not {value!r}")
    if value < 0:
        raise ValueError(f"{origin} must be >= 0 (0 stores nothing), not {value!r}")
    return int(value)


def expire() -> int:
    """Seconds a published message is stored for replay: ``EXPIRE``, default 3600."""
    origin = f"setting {_names('EXPIRE')}"
    try:
        return check_expire(_value("EXPIRE", DEFAULT_EXPIRE), origin)
    except ValueError as e:
        raise ImproperlyConfigured(str(e)) from None


def heartbeat() -> Optional[str]:
    """The ws4redis heartbeat string (``HEARTBEAT``), or None when unset.

    None too when Django is not configured at all, so that a :class:`RedisMessage` can be
    made by a script that never set Django up.
    """
    try:
        value = _value("HEARTBEAT", None)
    except ImproperlyConfigured:
        return None
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(
            f"setting {_names('HEARTBEAT')} must be a string, not {value!r}"
        )
    return value or None


def _positive_seconds(name: str, default: float) -> float:
    value = _value(name, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ImproperlyConfigured(
            f"setting {_names(name)} must be a positive number of seconds, not {value!r}"
        )
    return float(value)


def publish_timeout() -> float:
    """Bound in seconds on connecting to Redis and on each of its answers:
    ``PUBLISH_TIMEOUT``, default 5."""
    return _positive_seconds("PUBLISH_TIMEOUT", DEFAULT_PUBLISH_TIMEOUT)


def token_max_age() -> float:
    """Seconds a connection token stays valid: ``TOKEN_MAX_AGE``, default 300."""
    return _positive_seconds("TOKEN_MAX_AGE", DEFAULT_TOKEN_MAX_AGE)


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
    value = _value("SESSION_CHANNELS", SESSION_CHANNELS_ID)
    if value not in (SESSION_CHANNELS_ID, SESSION_CHANNELS_KEY):
        raise ImproperlyConfigured(
            f"setting {_names('SESSION_CHANNELS')} must be {SESSION_CHANNELS_ID!r} (the "
            f"default) or {SESSION_CHANNELS_KEY!r} (ws4redis's names), not {value!r}"
        )
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


def websocket_url() -> str:
    """The path WebSocket URLs start with: ``WEBSOCKET_URL`` (ws4redis's name, unprefixed),
    default ``/ws/``."""
    value = getattr(django_settings(), "WEBSOCKET_URL", DEFAULT_WEBSOCKET_URL)
    if not isinstance(value, str) or not value.startswith("/"):
        raise ImproperlyConfigured(f"setting WEBSOCKET_URL must be a path, not {value!r}")
    return value
