"""Signed subscribe grants: what lets an event client add a facility's channels to its
connection (a ``subscribe`` frame) without the server asking the database.

A page asks Django for a grant (:func:`grant_for_request`, ``ws4tx.api.grant``, or
``{% ws4tx_grant "notes" "broadcast" "user" %}`` after ``{% load ws4tx %}``) and hands it to
the client, which puts it in its ``subscribe`` frame (``"grant": "<grant>"``). A grant
says, signed with the site's ``SECRET_KEY`` (``django.core.signing`` as connection tokens,
salt ``ws4tx.grant``: no token, resume token or other signature of the site verifies as
one):

- whose it is: the user name, and the session's channel id when the request has a saved
  session (:func:`ws4tx.naming.session_channel_id`, one-way: never the session key; nothing
  on a site with ``SESSION_CHANNELS = "key"``);
- the facility and the audiences it allows (``broadcast``, ``user``, ``group``,
  ``session``), and for ``group`` the group names;
- when it expires: ``max_age`` seconds after it was made (default ``TOKEN_MAX_AGE``, 300).

The site's ``ALLOWED_CHANNELS`` runs when the grant is made, on the request (its path that
of the WebSocket URL of the facility, as the server's hook request has): an audience it
drops is not granted, its ``PermissionDenied`` is raised. The server then checks the
signature, the expiry (by its clock), that the grant's user and session are the
connection's and that the frame asks for no audience or group beyond the grant; the
channels are named from the connection's identity. ``PROCESS_REQUEST``, which identifies a
WebSocket handshake, does not run: the request a grant is made for was already
authenticated by the site.

A grant is signed, not encrypted: it holds nothing that authenticates to Django, and it
gives nothing on a connection of another user or session. Whoever holds one can subscribe
the channels it names on a connection of its own identity until it expires, so keep
``max_age`` short (it is checked when the client subscribes, not afterwards: use
``ws4tx.api.unsubscribe`` or ``disconnect`` to end a subscription).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ws4tx import naming
from ws4tx._refusal import Refusal

#: The salt of grants: they verify as nothing else, and nothing else as a grant.
SALT = "ws4tx.grant"

#: Longest grant accepted in a subscribe frame.
MAX_GRANT_LENGTH = 2048

#: The audiences a grant may allow (the URL's flags without ``subscribe-``).
AUDIENCES = (naming.BROADCAST, naming.USER, naming.GROUP, naming.SESSION)

_FIELDS = frozenset({"u", "c", "f", "a", "g", "x"})


class InvalidGrant(Refusal):
    """A grant that cannot be used; ``reason`` says why (never anything secret)."""


@dataclass(frozen=True)
class Claim:
    """What a valid grant says."""

    #: Whose it is: the user name (None: anonymous) and session channel id (None: any).
    user: Optional[str]
    session: Optional[str]
    facility: str
    audiences: frozenset[str]
    groups: frozenset[str]
    #: When it expires, Unix seconds.
    expires: float


def make_grant(
    facility: str,
    audiences: Iterable[str],
    *,
    user: Optional[str] = None,
    groups: Iterable[str] = (),
    session_key: Optional[str] = None,
    max_age: Optional[float] = None,
    now: Optional[float] = None,
) -> str:
    """A grant of ``facility``'s ``audiences`` (names of :data:`AUDIENCES`) to ``user``
    (a user name; None: anonymous) in the session ``session_key``, of the groups
    ``groups`` for the ``group`` audience, valid ``max_age`` seconds (default
    ``TOKEN_MAX_AGE``) from ``now`` (default: the time now).

    The site vouches for what it grants: no hook runs here (:func:`grant_for_request`
    runs ``ALLOWED_CHANNELS``). ValueError for a bad facility or an audience the identity
    has no name in (``user`` or ``group`` without a user, ``session`` without a session
    channel)."""
    from django.core import signing

    from ws4tx import _django_settings

    facility = naming.check_facility(facility)
    chosen = sorted(frozenset(audiences))
    unknown = [a for a in chosen if a not in AUDIENCES]
    if unknown or not chosen:
        raise ValueError(f"grant audiences are some of {', '.join(AUDIENCES)}, not "
                         f"{unknown or chosen!r}")
    if user is not None and (not isinstance(user, str) or not user):
        raise ValueError(f"a user name must be a non-empty string: {user!r}")
    group_names = sorted(frozenset(groups))
    if any(not isinstance(g, str) or not g for g in group_names):
        raise ValueError(f"group names must be non-empty strings: {group_names!r}")
    session: Optional[str] = None
    if (session_key is not None
            and _django_settings.session_channels() == _django_settings.SESSION_CHANNELS_ID):
        session = _django_settings.session_channel(session_key)
    if user is None and (naming.USER in chosen or naming.GROUP in chosen):
        raise ValueError("the user and group audiences need a user")
    if naming.GROUP in chosen and not group_names:
        raise ValueError("the group audience needs group names")
    if naming.SESSION in chosen and session is None:
        raise ValueError("the session audience needs a session key (and SESSION_CHANNELS "
                         "= 'id')")
    if max_age is None:
        max_age = _django_settings.token_max_age()
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"f": facility, "a": chosen, "x": int(issued + max_age)}
    if user is not None:
        payload["u"] = user
    if session is not None:
        payload["c"] = session
    if naming.GROUP in chosen:
        payload["g"] = group_names
    return signing.dumps(payload, salt=SALT, compress=True)


def grant_for_request(request: Any, facility: str, audiences: Iterable[str],
                      groups: Optional[Iterable[str]] = None,
                      max_age: Optional[float] = None) -> str:
    """A grant of ``facility``'s ``audiences`` for the request's identity (its user, its
    session), of its groups (those of ``groups`` only, when given: each must be one of the
    user's), after the site's ``ALLOWED_CHANNELS`` (which may drop audiences, or refuse
    with ``PermissionDenied``). An audience the identity has no name in (an anonymous
    user's ``user``) is not granted. ValueError when nothing is left to grant."""
    from ws4tx import _audience

    facility = naming.check_facility(facility)
    asked = frozenset(audiences)
    identity = _audience.identity(request)
    mine = identity.groups
    chosen = mine if groups is None else frozenset(groups)
    foreign = sorted(chosen - mine)
    if foreign:
        raise ValueError(f"{foreign[0]!r} is not one of the user's groups")
    allowed = frozenset(a for a in asked if a == naming.BROADCAST or (
        a == naming.GROUP and chosen) or (a != naming.GROUP and identity.names(a)))
    allowed = _allowed_channels(request, facility, allowed)
    if not allowed:
        raise ValueError(f"nothing of {sorted(asked)} of {facility!r} can be granted to "
                         "this request")
    return make_grant(facility, allowed, user=identity.user,
                      groups=chosen if naming.GROUP in allowed else (),
                      session_key=_audience.session_key(request), max_age=max_age)


def _allowed_channels(request: Any, facility: str,
                      audiences: frozenset[str]) -> frozenset[str]:
    """What the site's ``ALLOWED_CHANNELS`` leaves of ``audiences``, asked on a copy of
    ``request`` whose path is the WebSocket URL of ``facility`` (as on the server)."""
    import copy
    import importlib

    from django.conf import settings

    from ws4tx import _django_settings, schema

    hook = schema.lookup(settings, "ALLOWED_CHANNELS")
    if not hook or not audiences:
        return audiences
    if not callable(hook):
        module, _, name = str(hook).rpartition(".")
        hook = getattr(importlib.import_module(module), name)
    flags = naming.Flags(subscribe=audiences)
    asked = copy.copy(request)
    asked.path = asked.path_info = _django_settings.websocket_url() + facility
    left = naming.parse_flags("&".join(hook(asked, naming.flag_names(flags)) or ()))
    return audiences & left.subscribe


def read_grant(grant: str, now: Optional[float] = None) -> Claim:
    """The claim of ``grant`` once its signature is right and it has not expired at
    ``now`` (default: the time now). No database. Raises :class:`InvalidGrant`."""
    if not isinstance(grant, str) or not grant:
        raise InvalidGrant("malformed: no grant")
    if len(grant) > MAX_GRANT_LENGTH:
        raise InvalidGrant("malformed: too long")
    try:
        payload = _verifier().loads(grant)
    except _BadSignature:
        raise InvalidGrant("bad signature (tampered with or malformed)") from None
    except (ValueError, TypeError, zlib.error):  # a signed payload that does not decode
        raise InvalidGrant("malformed payload") from None
    claim = _claim(payload)
    if (time.time() if now is None else now) >= claim.expires:
        raise InvalidGrant("expired", expired=True)
    return claim


class _BadSignature(Exception):
    """No key of the site signed it."""


class _Verifier:
    """What ``django.core.signing.loads(grant, salt=SALT)`` checks and decodes (a
    ``TimestampSigner``'s HMAC-SHA256 of the payload and its timestamp, with the key
    Django derives from the salt and each of ``keys``: the site's ``SECRET_KEY``, then
    its ``SECRET_KEY_FALLBACKS``), with each key's HMAC derived once instead of on
    every read: a subscribe with a grant costs its server a signature check, and
    Django's derives the key again and builds a signer each time. Signatures are
    compared in constant time; the format is Django's (:func:`make_grant` signs with
    it)."""

    def __init__(self, keys: tuple[Any, ...]) -> None:
        self.keys = keys
        salt = (SALT + "signer").encode()
        self._macs = [hmac.new(hashlib.sha256(salt + _bytes(key)).digest(),
                               digestmod=hashlib.sha256) for key in keys]

    def loads(self, signed: str) -> Any:
        """The payload of ``signed``; :class:`_BadSignature` when no key signed it,
        ValueError (or TypeError, zlib.error) when it does not decode."""
        if ":" not in signed:
            raise _BadSignature()
        value, signature = signed.rsplit(":", 1)
        data = value.encode()
        given = signature.encode()
        for mac in self._macs:
            expected = mac.copy()
            expected.update(data)
            if hmac.compare_digest(given, base64.urlsafe_b64encode(
                    expected.digest()).rstrip(b"=")):
                break
        else:
            raise _BadSignature()
        encoded, timestamp = value.rsplit(":", 1)
        _b62_check(timestamp)
        compressed = encoded[:1] == "."
        body = (encoded[1:] if compressed else encoded).encode()
        raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        if compressed:
            raw = zlib.decompress(raw)
        return json.loads(raw.decode("latin-1"))


_BASE62 = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _b62_check(timestamp: str) -> None:
    """ValueError unless ``timestamp`` is what Django's ``b62_decode`` reads (its
    value is not used: a grant expires by its own ``x``)."""
    digits = timestamp[1:] if timestamp[:1] == "-" else timestamp
    if not set(digits) <= _BASE62:
        raise ValueError("malformed timestamp")


def _bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


_verifiers: list[_Verifier] = []


def _verifier() -> _Verifier:
    """The verifier of the site's keys now (made again when the settings change them:
    a rotated ``SECRET_KEY`` takes effect at once)."""
    from django.conf import settings

    keys = (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS)
    if not _verifiers or _verifiers[0].keys != keys:
        _verifiers[:] = [_Verifier(keys)]
    return _verifiers[0]


def _claim(payload: Any) -> Claim:
    if not isinstance(payload, dict) or set(payload) - _FIELDS:
        raise InvalidGrant("malformed payload")
    user, session, facility = payload.get("u"), payload.get("c"), payload.get("f")
    audiences, groups, expires = payload.get("a"), payload.get("g", []), payload.get("x")
    if not ((user is None or (isinstance(user, str) and user))
            and (session is None or (isinstance(session, str) and session))
            and isinstance(facility, str) and facility
            and isinstance(audiences, list) and audiences
            and all(a in AUDIENCES for a in audiences)
            and isinstance(groups, list) and all(isinstance(g, str) and g for g in groups)
            and isinstance(expires, int) and not isinstance(expires, bool)):
        raise InvalidGrant("malformed payload")
    return Claim(user, session, facility, frozenset(audiences), frozenset(groups),
                 float(expires))
