"""Reading ws4tx settings from a Django-style settings object. Pure: no Django import.

Every setting is looked up as ``WS4TX_<NAME>`` first, then as ws4redis's ``WS4REDIS_<NAME>``,
so an application that moves over from django-websocket-redis keeps its settings.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from ws4tx.redis_address import DEFAULT_URL, InvalidRedisAddress, RedisAddress

#: The environment variable that names the Redis server when no setting does.
REDIS_URL_ENV = "WS4TX_REDIS_URL"

_MISSING = object()


def setting_names(name: str) -> tuple[str, str]:
    """The two names a setting may have, in the order they are looked up."""
    return f"WS4TX_{name}", f"WS4REDIS_{name}"


def lookup(settings: Any, name: str, default: Any = None) -> Any:
    """The value of setting ``name`` (``WS4TX_name``, else ``WS4REDIS_name``, else ``default``)."""
    for full in setting_names(name):
        value = getattr(settings, full, _MISSING)
        if value is not _MISSING:
            return value
    return default


def redis_address(
    settings: Any, environ: Optional[Mapping[str, str]] = None
) -> RedisAddress:
    """Where Redis is, for a process configured by ``settings``.

    In order: the ``WS4TX_REDIS_URL`` setting, the ``CONNECTION`` setting (a ws4redis
    dictionary), the ``WS4TX_REDIS_URL`` environment variable, ``redis://localhost:6379/0``.
    A bad value raises :class:`InvalidRedisAddress` naming the setting it came from.
    """
    environ = os.environ if environ is None else environ
    url = getattr(settings, REDIS_URL_ENV, None)
    if url:
        return _parse(url, f"setting {REDIS_URL_ENV}")
    connection = lookup(settings, "CONNECTION")
    if connection:
        try:
            return RedisAddress.from_connection(connection)
        except InvalidRedisAddress as e:
            raise InvalidRedisAddress(
                f"setting {'/'.join(setting_names('CONNECTION'))}: {e}"
            ) from None
    url = environ.get(REDIS_URL_ENV)
    if url:
        return _parse(url, f"environment variable {REDIS_URL_ENV}")
    return RedisAddress.from_url(DEFAULT_URL)


def _parse(url: str, origin: str) -> RedisAddress:
    try:
        return RedisAddress.from_url(url)
    except InvalidRedisAddress as e:
        raise InvalidRedisAddress(f"{origin}: {e}") from None
