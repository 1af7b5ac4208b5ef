"""The Twisted side's one door to Django: settings, the WSGI site, and authentication of
handshakes from the Django session (in a thread, never in the reactor thread).

Nothing else under the Twisted side imports Django; this module imports it lazily so that
``twistd ws4tx`` without ``--django-settings`` never loads it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Optional, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from ws4tx import _settings
from ws4tx.auth import HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.naming import ANONYMOUS, Identity
from ws4tx.redis_address import RedisAddress

T = TypeVar("T")
log = Logger()


def setup(settings_module: str) -> Any:
    """Configure Django from ``settings_module`` and return its settings."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django
    from django.conf import settings

    try:
        django.setup()
    except ImportError as e:
        raise ValueError(f"django-settings: cannot import {settings_module!r}: {e}") from None
    return settings


def options_from_settings(settings: Any) -> dict[str, Any]:
    """The server options the Django settings give (only those that are set)."""
    found: dict[str, Any] = {}
    if hasattr(settings, "WEBSOCKET_URL"):
        found["websocket_url"] = settings.WEBSOCKET_URL
    for name in ("PREFIX", "EXPIRE", "HEARTBEAT", "MAX_MESSAGE_SIZE", "PING_INTERVAL",
                 "PING_TIMEOUT", "MAX_CONNECTIONS", "ALLOWED_ORIGINS", "HANDLERS"):
        value = _settings.lookup(settings, name, _UNSET)
        if value is not _UNSET:
            found[name.lower()] = value
    return found


_UNSET = object()


def redis_address(settings: Any) -> RedisAddress:
    """Where the Django settings (or the environment) say Redis is."""
    return _settings.redis_address(settings)


def share_redis_with_publishers(url: str) -> None:
    """Make the Django-side publishers of this process use ``url`` (the server's Redis)."""
    from ws4tx import _sync_redis

    _sync_redis.use_url(url)


def wsgi_resource(dotted_path: str, reactor: Any) -> Any:
    """A twisted.web resource serving the WSGI application at ``dotted_path`` in the
    reactor's thread pool."""
    from twisted.web.wsgi import WSGIResource

    module_name, _, name = dotted_path.rpartition(".")
    try:
        app = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"wsgi: cannot import {dotted_path!r}: {e}") from None
    return WSGIResource(reactor, reactor.getThreadPool(), app)


def _with_db_hygiene(f: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    from django.db import close_old_connections

    close_old_connections()
    try:
        return f(*args, **kwargs)
    finally:
        close_old_connections()


def run_in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> "defer.Deferred[T]":
    """Run ``f`` in the thread pool with Django's connection hygiene around it."""
    return threads.deferToThread(_with_db_hygiene, f, *args, **kwargs)


def _session_identity(session_key: Optional[str]) -> Identity:
    """The identity of a Django session (runs in a thread)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import get_user

    if not session_key:
        return ANONYMOUS
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key)

    class _Request:  # what get_user() reads
        pass

    request = _Request()
    request.session = session  # type: ignore[attr-defined]
    user = get_user(request)
    if not user.is_authenticated:
        # A session without a user still has its own session channel.
        return Identity(session=session_key if session.exists(session_key) else None)
    groups = frozenset(user.groups.values_list("name", flat=True))
    return Identity(user=user.get_username(), groups=groups, session=session_key)


@implementer(IAuthenticator)
class SessionAuthenticator:
    """Identity from the Django session cookie, or from a signed ``token`` query parameter
    (``ws4tx.tokens``) for sites whose WebSocket host cannot see the cookie."""

    def authenticate(self, request: HandshakeRequest) -> "defer.Deferred[Identity]":
        tokens = request.params.get("token")
        if tokens:
            return defer.maybeDeferred(self._fromToken, tokens[0])
        from django.conf import settings

        key = request.cookies.get(settings.SESSION_COOKIE_NAME)
        return run_in_thread(_session_identity, key)

    def _fromToken(self, token: str) -> Identity:
        from ws4tx import tokens

        try:
            return tokens.read_token(token)
        except tokens.InvalidToken as e:
            raise HandshakeDenied(f"invalid token: {e}") from None
