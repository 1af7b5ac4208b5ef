"""Short-lived signed connection tokens, for sites whose WebSocket host cannot see the
Django session cookie (another domain or port, a cookie with a narrow path, ...).

A page asks Django for a token (:func:`token_for_request`, or ``{% ws4tx_token %}`` after
``{% load ws4tx %}``) and puts it in the WebSocket URL as the query parameter ``token``::

    ws://push.example.com/ws/foobar?subscribe-user&subscribe-group&token=<token>

The server then reads the identity from the token with :func:`read_token` instead of from
the session cookie: the user name, its group names and the session's channel id, as they
were when the token was made. It is signed with the site's ``SECRET_KEY``
(``django.core.signing``, salt ``ws4tx.token``) and valid for ``TOKEN_MAX_AGE`` seconds
(default 300) after it was made. A connection opened with a token lasts as long as the
token: shortly before it expires the server asks the client for a fresh one (the
``ws4tx.refresh`` event, which ws4tx.js answers with the page's ``token`` function), checks
it as it checked the first (the same hooks, the same identity required) and extends the
connection to the new token's end; a client that sends none is closed with 4002
(:data:`ws4tx.closecodes.TOKEN_EXPIRED`) when the token expires.

A token is signed, not encrypted: whoever sees it (a proxy log, the browser history) can
read it. So it holds nothing that authenticates to Django: never the session key, only
the session's channel id (:func:`ws4tx.naming.session_channel_id`, one-way), which names
the session's channels and nothing else. On a site that set ``SESSION_CHANNELS = "key"``
(ws4redis's names) a token carries no session at all: token connections then have no
session audience. Tokens of the older format that carried the session key are refused.

The site's hooks apply to token connections as to cookie connections: when
``ALLOWED_CHANNELS`` or a custom ``PROCESS_REQUEST`` is set, the server loads the token's
user from the database (in a thread; a deleted or inactive user is refused with 403) and
runs the hooks on a request whose ``user`` is that user and whose session is empty.
``PROCESS_REQUEST`` may refuse (``PermissionDenied``: 403); if it leaves another user in
``request.user`` than the token's, the connection is refused (403) rather than given an
identity the hooks did not approve. ``ALLOWED_CHANNELS`` narrows the flags or refuses,
exactly as for a cookie. Without those hooks reading a token never touches the database.

Anybody who holds a token can connect as its user until it expires: serve it only to that
user (in a page behind login, over HTTPS) and keep ``TOKEN_MAX_AGE`` short.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable, Optional

from django.core import signing

from ws4tx import _audience, _django_settings, naming
from ws4tx._refusal import Refusal

#: The salt of ws4tx's signatures: a token is valid for nothing else in the site.
SALT = "ws4tx.token"

#: The token fields: user name, group names, session channel id.
_FIELDS = frozenset({"u", "g", "c"})

#: Longest token accepted (the server caps query strings anyway).
MAX_TOKEN_LENGTH = 4096


class InvalidToken(Refusal):
    """A token that cannot be used; ``expired`` tells an expired token from a tampered or
    malformed one."""


def make_token(
    user: Any = None,
    groups: Optional[Iterable[Any]] = None,
    session_key: Optional[str] = None,
) -> str:
    """A token for ``user`` (a user name or a User object; None or an anonymous user:
    anonymous), its ``groups`` (names or Group objects; None: none, or for a User object
    its groups from the database) and the session ``session_key``.

    The token carries the session's channel id, never ``session_key`` itself (nothing at
    all for the session when ``SESSION_CHANNELS = "key"``)."""
    name: Optional[str] = None
    if isinstance(user, str):
        if not user:
            raise ValueError("a user name must not be empty")
        name = user
    elif getattr(user, "is_authenticated", False):
        name = user.get_username()
        manager = getattr(user, "groups", None)
        if groups is None and manager is not None:
            groups = manager.values_list("name", flat=True)
    group_names = sorted({getattr(g, "name", g) for g in groups or ()})
    if group_names and name is None:
        raise ValueError("groups need a user: an anonymous connection has no groups")
    if any(not isinstance(g, str) or not g for g in group_names):
        raise ValueError(f"group names must be non-empty strings: {group_names!r}")
    if session_key is not None and (not isinstance(session_key, str) or not session_key):
        raise ValueError(f"session_key must be a non-empty string: {session_key!r}")
    payload: dict[str, Any] = {}
    if name is not None:
        payload["u"] = name
    if group_names:
        payload["g"] = group_names
    if (session_key is not None
            and _django_settings.session_channels() == _django_settings.SESSION_CHANNELS_ID):
        payload["c"] = _django_settings.session_channel(session_key)
    return signing.dumps(payload, salt=SALT, compress=True)


def token_for_request(request: Any) -> str:
    """A token for the request's identity: its user name (if authenticated), the user's
    group names from the database, and its session's channel id (if the session is
    saved)."""
    name = _audience.user_name(request)
    groups = _audience.group_names(request) if name else []
    return make_token(name, groups, _audience.session_key(request))


def read_token(token: str, max_age: Optional[float] = None) -> naming.Identity:
    """The identity in ``token``, verified without the database; ``max_age`` defaults to
    the setting ``TOKEN_MAX_AGE`` (300 s). Raises :class:`InvalidToken`."""
    if max_age is None:
        max_age = _django_settings.token_max_age()
    if not isinstance(token, str) or not token:
        raise InvalidToken("malformed: no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed: too long")
    try:
        payload = signing.loads(token, salt=SALT, max_age=timedelta(seconds=max_age))
    except signing.SignatureExpired:
        reason = f"expired (tokens are valid for {max_age} s)"
        raise InvalidToken(reason, expired=True) from None
    except signing.BadSignature:
        raise InvalidToken("bad signature (tampered with or malformed)") from None
    except (ValueError, TypeError):  # a signed payload that does not decode
        raise InvalidToken("malformed payload") from None
    return _identity(payload)


def expires_at(token: str, max_age: Optional[float] = None) -> float:
    """When ``token`` (one :func:`read_token` accepted) expires: the Unix time it was
    signed plus ``max_age`` (default: setting ``TOKEN_MAX_AGE``)."""
    if max_age is None:
        max_age = _django_settings.token_max_age()
    try:
        signed = signing.b62_decode(token.rsplit(":", 2)[-2])
    except (IndexError, ValueError):
        raise InvalidToken("malformed: no timestamp") from None
    return float(signed) + max_age


def _identity(payload: Any) -> naming.Identity:
    if isinstance(payload, dict) and "s" in payload:
        raise InvalidToken("old token format (it carried a session key): ask for a new token")
    if not isinstance(payload, dict) or set(payload) - _FIELDS:
        raise InvalidToken("malformed payload")
    user, groups, session = payload.get("u"), payload.get("g", []), payload.get("c")
    if not (
        (user is None or (isinstance(user, str) and user))
        and isinstance(groups, list)
        and all(isinstance(g, str) and g for g in groups)
        and (session is None or _is_session_id(session))
        and (user is not None or not groups)
    ):
        raise InvalidToken("malformed payload")
    if _django_settings.session_channels() != _django_settings.SESSION_CHANNELS_ID:
        session = None  # ws4redis's names need the key, which tokens never carry
    return naming.Identity(user=user, groups=frozenset(groups), session=session)


def _is_session_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == naming.SESSION_CHANNEL_ID_LENGTH
            and all(c in "0123456789abcdef" for c in value))
