"""The seam between a WebSocket handshake and an identity.

An authenticator turns the handshake request into an :class:`~ws4tx.naming.Identity` (user,
groups, session key), possibly asynchronously (a database look-up in a thread, say). It may
refuse the connection by raising :class:`HandshakeDenied`, which is answered with that HTTP
status and reason. The identity decides which user, group and session channels a client
gets: a client never names them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from http.cookies import CookieError, SimpleCookie
from typing import Any, Coroutine, Mapping, Union

from twisted.internet import defer
from zope.interface import Interface, implementer

from ws4tx.naming import ANONYMOUS, Flags, Identity


class HandshakeDenied(Exception):
    """Refuse a WebSocket handshake with an HTTP status (403 by default) and a reason;
    ``retry_after`` (seconds) is sent as ``Retry-After`` (a 503 or 429 that will pass)."""

    def __init__(self, reason: str, status: int = 403,
                 retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class HandshakeRequest:
    """What an authenticator knows of a connecting client.

    ``headers`` has lower-case names; ``params`` is the parsed query string (blank values
    kept); ``facility`` and ``flags`` are what the URL asks for; ``secure`` tells whether
    the connection came over TLS (``wss://``) to this server. ``method`` is ``POST`` for a
    message sent without a socket (:mod:`ws4tx.server.posting`): an authenticator that
    takes an identity from cookies must then check the request is no cross-site forgery
    (the Django one applies Django's CSRF check).
    """

    peer: str
    host: str
    path: str
    query: str
    params: Mapping[str, list[str]]
    headers: Mapping[str, str]
    facility: str
    flags: Flags = field(default_factory=Flags)
    secure: bool = False
    method: str = "GET"

    @property
    def origin(self) -> str | None:
        """The Origin header, if the client sent one."""
        return self.headers.get("origin")

    @cached_property
    def cookies(self) -> dict[str, str]:
        """The cookies of the request (empty when the header is missing or malformed)."""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


@dataclass(frozen=True)
class Grant:
    """What an authenticator may return instead of a bare identity: the identity, the
    flags it allows (None: the flags the client asked for) and when it expires."""

    identity: Identity
    flags: Flags | None = None
    #: When the credential expires (Unix seconds; None: never): a token's end. The
    #: connection is then asked for a fresh token, and closed with
    #: :data:`ws4tx.closecodes.TOKEN_EXPIRED` unless it sends one in time.
    expires: float | None = None


#: What an authenticator answers: at once, later (a Deferred, which is invariant, hence its
#: three spellings) or as a coroutine (an ``async def authenticate``).
AuthResult = Union[
    Identity,
    Grant,
    defer.Deferred[Identity],
    defer.Deferred[Grant],
    defer.Deferred[Union[Identity, Grant]],
    Coroutine[Any, Any, Union[Identity, Grant]],
]


class IAuthenticator(Interface):
    """Turns a handshake request into an identity."""

    def authenticate(request: HandshakeRequest) -> AuthResult:
        """The identity behind ``request`` (or a :class:`Grant` that also narrows the
        flags), now or later; may raise or fail with :class:`HandshakeDenied` to refuse
        the connection."""


@implementer(IAuthenticator)
class AnonymousAuthenticator:
    """Every client is anonymous: broadcast channels only. The default without Django."""

    def authenticate(self, request: HandshakeRequest) -> Identity:
        return ANONYMOUS
