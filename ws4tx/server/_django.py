"""The Twisted side's one door to Django: settings, the WSGI site, and authentication of
handshakes from the Django session (in a thread, never in the reactor thread).

Nothing else under the Twisted side imports Django; this module imports it lazily so that
``twistd ws4tx`` without ``--django-settings`` never loads it.
"""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from ws4tx import _audience, schema
from ws4tx.naming import ANONYMOUS, Flags, Identity, flag_names, parse_flags
from ws4tx.server._authgate import AuthGate
from ws4tx.server._grants import IGrantReader
from ws4tx.server._log import observer
from ws4tx.server._resume import IResumer
from ws4tx.server.auth import Grant, HandshakeDenied, HandshakeRequest, IAuthenticator

T = TypeVar("T")
log = Logger(observer=observer)


def setup(settings_module: str) -> Any:
    """Configure Django from ``settings_module`` and return its settings."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django
    from django.conf import settings

    try:
        django.setup()
    except ImportError as e:
        raise ValueError(f"--django-settings {settings_module!r} does not import "
                         f"({type(e).__name__}: {e}); check the module's name and "
                         "PYTHONPATH") from None
    return settings


def options_from_settings(settings: Any) -> dict[str, Any]:
    """The server settings the Django settings give (only those that are set), read and
    checked as :mod:`ws4tx.schema` says (the Django side reads them the same way); a bad
    one raises :class:`ws4tx.schema.SettingError` naming it."""
    found: dict[str, Any] = {}
    for setting in schema.SETTINGS:
        if setting.where == schema.DJANGO or not setting.setting_names:
            continue
        value = schema.read(settings, setting.key, _UNSET)
        if value is not _UNSET:
            found[setting.key] = value
    return found


_UNSET = object()


def share_redis_with_publishers(url: str) -> None:
    """Make the Django-side publishers of this process use ``url`` (the server's Redis;
    several URLs separated by spaces: its shards, in order)."""
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


def run_in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Run ``f`` in the thread pool with Django's connection hygiene around it."""
    return threads.deferToThread(_with_db_hygiene, f, *args, **kwargs)


def _import(value: Any, setting: str) -> Optional[Callable[..., Any]]:
    """A callable setting given as a callable or a dotted path (ws4redis accepts both)."""
    if not value:
        return None
    if callable(value):
        function: Callable[..., Any] = value
        return function
    module_name, _, name = str(value).rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
        return function
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"setting {setting}: cannot import {value!r}: {e}") from None


def _http_request(handshake: HandshakeRequest) -> Any:
    """A Django HttpRequest for the handshake, as ws4redis's hooks expect one: ``path``,
    ``GET``, ``COOKIES``, ``META`` (with HTTP_* headers), later ``session`` and ``user``.

    A header whose name has ``_`` is dropped, as Django's own servers do: ``X_Remote_User``
    would otherwise become the same ``HTTP_X_REMOTE_USER`` as a proxy's ``X-Remote-User``
    and could override it.
    """
    from django.http import HttpRequest, QueryDict

    request = HttpRequest()
    request.method = handshake.method
    if handshake.secure:  # as a WSGI request over TLS says (HttpRequest's is plain)
        setattr(request, "_get_scheme", lambda: "https")  # noqa: B010
    request.path = request.path_info = handshake.path
    request.GET = QueryDict(handshake.query)
    request.COOKIES = dict(handshake.cookies)
    request.META = {
        "REQUEST_METHOD": handshake.method,
        "PATH_INFO": handshake.path,
        "QUERY_STRING": handshake.query,
        "REMOTE_ADDR": handshake.peer.split(":")[1] if handshake.peer.count(":") >= 2 else "",
        "SERVER_NAME": handshake.host,
        "SERVER_PORT": "",
    }
    for name, value in handshake.headers.items():
        if "_" in name:
            continue
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


def _no_view(request: Any) -> Any:
    """What Django's CSRF check is told it guards (a view that is not exempt)."""
    return None


def _check_csrf(request: Any) -> None:
    """Django's CSRF check of a POST, by Django's own middleware (its settings:
    ``CSRF_COOKIE_NAME``, ``CSRF_HEADER_NAME``, ``CSRF_USE_SESSIONS``,
    ``CSRF_TRUSTED_ORIGINS``; the Origin, on HTTPS the Referer, then the token):
    HandshakeDenied (403, with Django's reason) when it fails, 400 for a Host that
    ``ALLOWED_HOSTS`` does not name (Django's ``DisallowedHost``)."""
    from django.core.exceptions import SuspiciousOperation
    from django.middleware.csrf import CsrfViewMiddleware

    class Check(CsrfViewMiddleware):
        def _reject(self, request: Any, reason: str) -> Any:
            # Instead of Django's failure page (and its log line): the refusal.
            raise HandshakeDenied(f"CSRF verification failed: {reason}")

    check = Check(_no_view)
    try:
        check.process_request(request)
        check.process_view(request, _no_view, (), {})
    except SuspiciousOperation as e:
        raise HandshakeDenied(f"refused by Django: {e}", 400) from None


def _token_user(name: Optional[str]) -> Any:
    """The user a token names, from the database (AnonymousUser for an anonymous token);
    HandshakeDenied when it no longer exists or is inactive."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    if name is None:
        return AnonymousUser()
    model = get_user_model()
    try:
        user = model._default_manager.get_by_natural_key(name)
    except model.DoesNotExist:
        raise HandshakeDenied("invalid token: its user no longer exists") from None
    if not getattr(user, "is_active", True):
        raise HandshakeDenied("invalid token: its user is inactive")
    return user


def _empty_session() -> Any:
    """A session of the site's engine with no key: a token connection has no session."""
    from django.conf import settings

    return importlib.import_module(settings.SESSION_ENGINE).SessionStore()


def _header(headers: Mapping[str, str], meta_name: str) -> Optional[str]:
    """The header Django calls ``meta_name`` (``HTTP_X_FORWARDED_PROTO``), by its real name
    (``x-forwarded-proto``; never one spelt with ``_``)."""
    if not meta_name.startswith("HTTP_"):
        return None
    return headers.get(meta_name[5:].lower().replace("_", "-"))


class _OriginPolicy:
    """Which Origins may open a connection that carries cookies: the site's own origin
    (exactly: scheme, host and port of the handshake itself, ``wss``/TLS being ``https``,
    Django's ``SECURE_PROXY_SSL_HEADER`` and ``USE_X_FORWARDED_HOST`` honoured),
    ``CSRF_TRUSTED_ORIGINS`` (Django's format, ``https://*.example.com``) and
    ``ALLOWED_ORIGINS``. Only http(s) origins match the site's own; ``ALLOWED_HOSTS`` does
    not widen the check (it says which Host headers Django serves, not which pages may use
    its cookies).

    This is what stops cross-site WebSocket hijacking: another site's page would otherwise
    connect with the user's cookies (the session cookie, or whatever cookie a custom
    ``PROCESS_REQUEST`` authenticates from).
    """

    def __init__(self, settings: Any) -> None:
        trusted = list(getattr(settings, "CSRF_TRUSTED_ORIGINS", ()) or ())
        allowed = schema.lookup(settings, "ALLOWED_ORIGINS", ()) or ()
        trusted += [allowed] if isinstance(allowed, str) else list(allowed)
        self.trusted = tuple(trusted)
        self.proxy_ssl_header: Optional[tuple[str, str]] = getattr(
            settings, "SECURE_PROXY_SSL_HEADER", None)
        self.forwarded_host = bool(getattr(settings, "USE_X_FORWARDED_HOST", False))

    def site_origin(self, request: HandshakeRequest) -> str:
        """The origin the handshake came to: ``scheme://host[:port]``."""
        host = request.headers.get("host", "")
        if self.forwarded_host:
            forwarded = request.headers.get("x-forwarded-host")
            if forwarded:
                host = forwarded.split(",")[0].strip()
        return f"{'https' if self._secure(request) else 'http'}://{host}"

    def _secure(self, request: HandshakeRequest) -> bool:
        if self.proxy_ssl_header:
            header, secure_value = self.proxy_ssl_header
            value = _header(request.headers, header)
            if value is not None:
                return value.split(",", 1)[0].strip() == secure_value
        return request.secure

    def allows(self, origin: str, request: HandshakeRequest) -> bool:
        """Whether a page of ``origin`` may open ``request`` with its cookies."""
        from ws4tx.server._origin import origin_allowed, same_origin

        return same_origin(origin, self.site_origin(request)) or origin_allowed(
            origin, self.trusted)


@implementer(IAuthenticator, IResumer, IGrantReader)
class SessionAuthenticator:
    """ws4redis's authentication: the Django session cookie (or a custom
    ``PROCESS_REQUEST``), then ``ALLOWED_CHANNELS``; or a signed ``token`` query parameter
    (:mod:`ws4tx.tokens`) for sites whose WebSocket host cannot see the cookie.

    The site's hooks apply however a connection authenticates: for a token connection
    ``request.user`` is the token's user from the database, ``PROCESS_REQUEST`` (when the
    site set one) may refuse and must not name another user, and ``ALLOWED_CHANNELS``
    narrows the flags or refuses, as for a cookie.

    Everything that touches the database runs in a thread, through ``gate``
    (:class:`~ws4tx.server._authgate.AuthGate`: at most ``AUTH_CONCURRENCY`` at once, at
    most ``AUTH_QUEUE`` waiting, 503 past it); a token without hooks, and a GET without
    a session cookie when no hook is set (anonymous: the thread would find no session),
    need no thread and do not wait. A handshake that carries any
    cookie from a foreign Origin is refused with 403 (see :class:`_OriginPolicy`); a token
    handshake is not checked, since the token, which a foreign page cannot get, is its
    credential.

    It reads the site's subscribe grants (:mod:`ws4tx.grants`): a ``subscribe`` frame
    that carries one is admitted without a thread or the database.

    It signs and reads resume tokens (:mod:`ws4tx._resume`): a resumed connection gets the
    channels its token's connection was admitted to, which the hooks approved then; they do
    not run again.
    """

    def __init__(self, settings: Any, check_origin: bool = True,
                 gate: Optional[AuthGate] = None) -> None:
        self._custom_process = _import(schema.lookup(settings, "PROCESS_REQUEST"),
                                       "WS4TX_PROCESS_REQUEST")
        self._process = self._custom_process or _process_request
        self._allowed_channels = _import(schema.lookup(settings, "ALLOWED_CHANNELS"),
                                         "WS4TX_ALLOWED_CHANNELS")
        self._origins = _OriginPolicy(settings) if check_origin else None
        self.gate = gate or AuthGate(schema.get("auth_concurrency").default,
                                     schema.get("auth_queue").default)
        #: The request header a POST carries its CSRF token in (Django's
        #: ``CSRF_HEADER_NAME``, ``HTTP_X_CSRFTOKEN`` -> ``x-csrftoken``): a page of another
        #: Origin may send it (the CORS preflight lists it).
        name = str(getattr(settings, "CSRF_HEADER_NAME", "HTTP_X_CSRFTOKEN"))
        self.csrf_header = name.removeprefix("HTTP_").replace("_", "-").lower()

    def authenticate(self, request: HandshakeRequest) -> Grant | defer.Deferred[Grant]:
        tokens = request.params.get("token")
        if tokens:
            return self._fromToken(request, tokens[0])
        origin = request.origin
        if (self._origins is not None and origin and request.headers.get("cookie", "").strip()
                and not self._origins.allows(origin, request)):
            return defer.fail(HandshakeDenied(
                f"cross-site WebSocket refused: Origin {origin} is not this site's "
                f"({self._origins.site_origin(request)}) nor a trusted one"))
        if self._anonymous(request):
            return _ANONYMOUS
        return self.gate.run(lambda: run_in_thread(self._authorize, request))

    def _anonymous(self, request: HandshakeRequest) -> bool:
        """Whether the thread would find ``request`` anonymous, with nothing for the site's
        code to decide: a GET without a session cookie, and neither hook set (the default
        processing finds no session without its cookie, so no user; a hook is the site's
        code, which may read other headers or the database). Such a handshake is answered
        in the reactor thread, without the gate or a thread: a storm of anonymous clients
        never waits behind cookie ones. A POST still goes to the thread, for the CSRF
        check."""
        from django.conf import settings

        return (request.method == "GET" and self._custom_process is None
                and self._allowed_channels is None
                and not request.cookies.get(settings.SESSION_COOKIE_NAME))

    def issueResume(self, claim: Any) -> Optional[tuple[str, float]]:
        """A resume token of ``claim`` (None when ``RESUME_TTL`` is 0)."""
        from ws4tx import _resume

        if not _resume.ttl():
            return None
        return _resume.sign(claim)

    def readResume(self, token: str) -> Any:
        """The claim of a resume token (ValueError when it is not valid)."""
        from ws4tx import _resume

        if not _resume.ttl():
            raise _resume.InvalidResume("resumable sessions are off (RESUME_TTL = 0)")
        return _resume.verify(token)

    def readGrant(self, grant: str, now: float) -> Any:
        """The claim of a subscribe grant (:mod:`ws4tx.grants`; ValueError when it is not
        valid at ``now``): a signature check, no database."""
        from ws4tx import grants

        return grants.read_grant(grant, now)

    def _fromToken(self, handshake: HandshakeRequest, token: str) -> defer.Deferred[Grant]:
        from ws4tx import tokens

        try:
            identity = tokens.read_token(token)
            expires = tokens.expires_at(token)
        except tokens.InvalidToken as e:
            return defer.fail(HandshakeDenied(f"invalid token: {e}"))
        if self._custom_process is None and self._allowed_channels is None:
            return defer.succeed(Grant(identity, expires=expires))
        return self.gate.run(
            lambda: run_in_thread(self._authorizeToken, handshake, identity)).addCallback(
                lambda grant: Grant(grant.identity, grant.flags, expires))

    def _authorize(self, handshake: HandshakeRequest) -> Grant:
        """The identity the request's cookies give (in a thread), its flags as the hooks
        leave them; a POST must pass Django's CSRF check (a token POST does not come
        here: the token is its credential)."""
        request = _http_request(handshake)
        with _refusals():
            self._process(request)
            if handshake.method == "POST":  # its identity comes from its cookies
                _check_csrf(request)
            return Grant(_audience.identity(request), self._flags(request, handshake))

    def _authorizeToken(self, handshake: HandshakeRequest, identity: Identity) -> Grant:
        """The site's hooks, on a request whose user is the token's (in a thread)."""
        request = _http_request(handshake)
        request.user = _token_user(identity.user)
        request.session = _empty_session()
        with _refusals():
            if self._custom_process is not None:
                self._custom_process(request)
                named = _audience.user_name(request)
                if named != identity.user:
                    raise HandshakeDenied(
                        f"token refused: PROCESS_REQUEST gives user {named!r}, the token "
                        f"{identity.user!r}")
            return Grant(identity, self._flags(request, handshake))

    def _flags(self, request: Any, handshake: HandshakeRequest) -> Optional[Flags]:
        """The flags ALLOWED_CHANNELS leaves (None: the hook is not set)."""
        if self._allowed_channels is None:
            return None
        allowed = self._allowed_channels(request, list(flag_names(handshake.flags)))
        return parse_flags("&".join(allowed or ()))


#: What :meth:`SessionAuthenticator._authorize` gives a request without a session and
#: without hooks: no user, no groups, no session, the flags asked.
_ANONYMOUS = Grant(ANONYMOUS)


@contextmanager
def _refusals() -> Iterator[None]:
    """A hook's PermissionDenied as a 403 refusal."""
    from django.core.exceptions import PermissionDenied

    try:
        yield
    except PermissionDenied as e:
        raise HandshakeDenied(str(e) or "permission denied") from None
