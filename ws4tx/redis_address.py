"""Where Redis is: one value that both halves of ws4tx understand.

A :class:`RedisAddress` is parsed from a URL (``redis://``, ``rediss://``, ``unix://``) or
from a ws4redis ``CONNECTION`` dictionary, and turned back into a URL that redis-py
(the Django side) accepts. The Twisted side builds its endpoints from the same fields. Pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_URL = "redis://localhost:6379/0"


class InvalidRedisAddress(ValueError):
    """A Redis URL or connection dictionary that cannot be used."""


@dataclass(frozen=True)
class RedisAddress:
    """A Redis server and database, with optional credentials and TLS."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    unix_socket_path: Optional[str] = None
    ssl: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
        ``unix:///path/redis.sock[?db=N]``."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            query = parse_qs(parts.query)
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
            if scheme == "unix":
                if not parts.path:
                    raise InvalidRedisAddress("a unix:// URL needs a socket path")
                return cls(
                    db=_db(query.get("db", ["0"])[0]),
                    username=username,
                    password=password,
                    unix_socket_path=unquote(parts.path),
                )
            if scheme not in ("redis", "rediss"):
                raise InvalidRedisAddress(
                    f"unknown scheme {parts.scheme!r}: use redis://, rediss:// or unix://"
                )
            path = parts.path.strip("/")
            return cls(
                host=parts.hostname or "localhost",
                port=parts.port or 6379,
                db=_db(path or query.get("db", ["0"])[0]),
                username=username,
                password=password,
                ssl=scheme == "rediss",
            )
        except InvalidRedisAddress:
            raise
        except ValueError as e:  # a bad port, say
            raise InvalidRedisAddress(str(e)) from None

    @classmethod
    def from_connection(cls, connection: Mapping[str, Any]) -> RedisAddress:
        """Read a ws4redis ``CONNECTION`` dictionary (``host``, ``port``, ``db``,
        ``username``, ``password``, ``unix_socket_path``, ``ssl``)."""
        unknown = set(connection) - {
            "host", "port", "db", "username", "password", "unix_socket_path", "ssl",
        }
        if unknown:
            raise InvalidRedisAddress(f"unknown keys {sorted(unknown)}")
        try:
            return cls(
                host=str(connection.get("host") or "localhost"),
                port=int(connection.get("port") or 6379),
                db=_db(connection.get("db") or 0),
                username=connection.get("username") or None,
                password=connection.get("password") or None,
                unix_socket_path=connection.get("unix_socket_path") or None,
                ssl=bool(connection.get("ssl", False)),
            )
        except (TypeError, ValueError) as e:
            raise InvalidRedisAddress(str(e)) from None

    @property
    def url(self) -> str:
        """This address as a URL, credentials included (never log it: see :meth:`safe_url`)."""
        return self._url(self.password)

    @property
    def safe_url(self) -> str:
        """This address as a URL with the password masked, for logs and messages."""
        return self._url("***" if self.password else None, masked=True)

    def _url(self, password: Optional[str], masked: bool = False) -> str:
        auth = ""
        if self.username or password:
            auth = quote(self.username or "", safe="")
            if password:
                auth += ":" + (password if masked else quote(password, safe=""))
            auth += "@"
        if self.unix_socket_path:
            return f"unix://{auth}{quote(self.unix_socket_path)}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


def _db(value: Any) -> int:
    try:
        db = int(value)
    except (TypeError, ValueError):
        raise InvalidRedisAddress(f"the database number {value!r} is not an integer") from None
    if db < 0:
        raise InvalidRedisAddress(f"the database number {db} is negative")
    return db


#: The environment variable that names the Redis server when no setting does.
REDIS_URL_ENV = "WS4TX_REDIS_URL"


def from_settings(
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
    names = ("WS4TX_CONNECTION", "WS4REDIS_CONNECTION")
    connection = next((getattr(settings, n) for n in names if hasattr(settings, n)), None)
    if connection:
        try:
            return RedisAddress.from_connection(connection)
        except InvalidRedisAddress as e:
            raise InvalidRedisAddress(
                f"setting WS4TX_CONNECTION/WS4REDIS_CONNECTION: {e}"
            ) from None
    url = environ.get(REDIS_URL_ENV)
    if url:
        return _parse(url, f"environment variable {REDIS_URL_ENV}")
    return RedisAddress()


def _parse(url: str, origin: str) -> RedisAddress:
    try:
        return RedisAddress.from_url(url)
    except InvalidRedisAddress as e:
        raise InvalidRedisAddress(f"{origin}: {e}") from None
