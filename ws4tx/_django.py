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

from ws4tx import _audience, _settings
from ws4tx.auth import Grant, HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.naming import flag_names, parse_flags
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
                 "PING_TIMEOUT", "MAX_CONNECTIONS", "ALLOWED_ORIGINS", "HANDLERS",
                 "ANONYMOUS_PUBLISH", "MAX_LAG"):
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


def _import(value: Any, setting: str) -> Optional[Callable[..., Any]]:
    """A callable setting given as a callable or a dotted path (ws4redis accepts both)."""
    if not value:
        return None
    if callable(value):
        return value
    module_name, _, name = str(value).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"setting {setting}: cannot import {value!r}: {e}") from None


def _http_request(handshake: HandshakeRequest) -> Any:
    """A Django HttpRequest for the handshake, as ws4redis's hooks expect one: ``path``,
    ``GET``, ``COOKIES``, ``META`` (with HTTP_* headers), later ``session`` and ``user``."""
    from django.http import HttpRequest, QueryDict

    request = HttpRequest()
    request.method = "GET"
    request.path = request.path_info = handshake.path
    request.GET = QueryDict(handshake.query)
    request.COOKIES = dict(handshake.cookies)
    request.META = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": handshake.path,
        "QUERY_STRING": handshake.query,
        "REMOTE_ADDR": handshake.peer.split(":")[1] if handshake.peer.count(":") >= 2 else "",
        "SERVER_NAME": handshake.host,
        "SERVER_PORT": "",
    }
    for name, value in handshake.headers.items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        request.META[key] = value
    return request


def _process_request(request: Any) -> None:
    """ws4redis's default request processing: the session from its cookie, then the user."""
    from django.conf import settings
    from django.contrib.auth import get_user

    engine = importlib.import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    request.user = get_user(request)


class _OriginPolicy:
    """Which Origins may open a cookie-authenticated connection when no ALLOWED_ORIGINS is
    set: the site's own hosts (ALLOWED_HOSTS, as Django validates Host) and
    CSRF_TRUSTED_ORIGINS. This is what stops cross-site WebSocket hijacking: another site's
    page would otherwise connect with the user's session cookie."""

    def __init__(self, settings: Any) -> None:
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = [".localhost", "127.0.0.1", "[::1]"]
        self.hosts = hosts
        self.trusted = tuple(getattr(settings, "CSRF_TRUSTED_ORIGINS", ()))

    def allows(self, origin: str, host_header: str) -> bool:
        from django.http.request import split_domain_port, validate_host
        from urllib.parse import urlsplit

        from ws4tx._origin import origin_allowed

        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            return False
        if netloc and netloc == host_header.lower():
            return True  # same origin
        domain, _ = split_domain_port(netloc)
        if domain and validate_host(domain, self.hosts):
            return True
        return origin_allowed(origin, self.trusted)


@implementer(IAuthenticator)
class SessionAuthenticator:
    """ws4redis's authentication: the Django session cookie (or a custom
    ``PROCESS_REQUEST``), then ``ALLOWED_CHANNELS``; or a signed ``token`` query parameter
    (:mod:`ws4tx.tokens`) for sites whose WebSocket host cannot see the cookie.

    Everything that touches the database runs in a thread. A connection that carries the
    session cookie from a foreign Origin is refused with 403.
    """

    def __init__(self, settings: Any, check_origin: bool = True) -> None:
        self._cookie = settings.SESSION_COOKIE_NAME
        self._process = _import(_settings.lookup(settings, "PROCESS_REQUEST"),
                                "WS4TX_PROCESS_REQUEST") or _process_request
        self._allowed_channels = _import(_settings.lookup(settings, "ALLOWED_CHANNELS"),
                                         "WS4TX_ALLOWED_CHANNELS")
        self._origins = _OriginPolicy(settings) if check_origin else None

    def authenticate(self, request: HandshakeRequest) -> "defer.Deferred[Grant]":
        tokens = request.params.get("token")
        if tokens:
            return defer.maybeDeferred(self._fromToken, tokens[0])
        origin = request.origin
        if (self._origins is not None and origin and self._cookie in request.cookies
                and not self._origins.allows(origin, request.headers.get("host", ""))):
            return defer.fail(HandshakeDenied(
                f"cross-site WebSocket refused: Origin {origin} is not one of this site's"))
        return run_in_thread(self._authorize, request)

    def _fromToken(self, token: str) -> Grant:
        from ws4tx import tokens

        try:
            return Grant(tokens.read_token(token))
        except tokens.InvalidToken as e:
            raise HandshakeDenied(f"invalid token: {e}") from None

    def _authorize(self, handshake: HandshakeRequest) -> Grant:
        from django.core.exceptions import PermissionDenied

        request = _http_request(handshake)
        try:
            self._process(request)
            flags = handshake.flags
            if self._allowed_channels is not None:
                requested = flag_names(flags)
                allowed = self._allowed_channels(request, list(requested))
                flags = parse_flags("&".join(allowed or ()))
            return Grant(_audience.identity(request), flags)
        except PermissionDenied as e:
            raise HandshakeDenied(str(e) or "permission denied") from None
