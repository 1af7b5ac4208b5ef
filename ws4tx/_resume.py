"""Resume tokens: what lets a client reconnect without authenticating anew (no database
query), on any node of the site.

Once an authenticated event client's connection is open, its node sends it a resume token
(the ``ws4tx.session`` event). The token is signed with the site's ``SECRET_KEY``
(``django.core.signing``, salt ``ws4tx.resume``: it is valid for nothing else) over:

- the identity (user name, group names, session channel id), as authentication gave it;
- the facility and the flags the connection was admitted with, after the site's hooks
  (``ALLOWED_CHANNELS`` narrowing them): a resume re-admits those channels and no others,
  without running the hooks again (they approved them at connect);
- the value the user's revocation counter (:func:`ws4tx.naming.revocation_key`) had;
- when the connection's own credential ends (a ``token`` connection), if it does.

It is valid ``RESUME_TTL`` seconds (default 300) after it was signed; the node sends a
fresh one half-way. A node refuses a resume token whose signature or age is wrong, or whose
counter value is not the counter's value now: logout, a password change, a deactivation or
a deletion bumps the counter. A refused resume falls back to the handshake's own
credentials (the cookie, a ``token``). Like a token it is signed, not encrypted, and whoever
holds it can reconnect as its user until it expires: it only ever travels inside the
user's own WebSocket connection and the URL of its reconnection.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from ws4tx._refusal import Refusal
from ws4tx.naming import Flags, Identity, flag_names, parse_flags

#: The salt of resume tokens: neither a connection token nor anything else of the site
#: verifies as one.
SALT = "ws4tx.resume"

#: Longest resume token accepted (the query string is capped anyway).
MAX_LENGTH = 2048

_FIELDS = frozenset({"u", "g", "c", "f", "l", "n", "x", "a"})

#: How many ``RESUME_TTL`` periods a chain of renewed resume tokens may last after the
#: identity was last really authenticated (an hour by default): a session that ended, a
#: group left or a ban a hook applies is seen at the latest then, when the client
#: authenticates anew.
CHAIN = 12


class InvalidResume(Refusal):
    """A resume token that cannot be used; ``expired`` tells an old one from a forged or
    malformed one."""


@dataclass(frozen=True)
class Claim:
    """What a valid resume token says."""

    identity: Identity
    facility: str
    flags: Flags
    #: The user's revocation counter when the token was made.
    counter: int
    #: When the connection's credential (a token) ends, Unix seconds; None: never.
    credential_expires: Optional[float]
    #: When its identity was last really authenticated (a cookie, a token; not a resume),
    #: Unix seconds: renewals keep it, and no token is valid :data:`CHAIN` times
    #: ``RESUME_TTL`` after it. None: now (a token signed at connect).
    authenticated: Optional[float] = None


def sign(claim: Claim, now: Optional[float] = None) -> tuple[str, float]:
    """The resume token of ``claim``, and when it expires (Unix seconds)."""
    identity = claim.identity
    if identity.user is None:
        raise ValueError("resume tokens are for authenticated users")
    payload: dict[str, Any] = {"u": identity.user, "f": claim.facility,
                               "l": flag_names(claim.flags), "n": claim.counter}
    if identity.groups:
        payload["g"] = sorted(identity.groups)
    if identity.session is not None:
        payload["c"] = identity.session
    if claim.credential_expires is not None:
        payload["x"] = claim.credential_expires
    signed_at = time.time() if now is None else now
    authenticated = signed_at if claim.authenticated is None else claim.authenticated
    payload["a"] = int(authenticated)
    signer, ttl = _current()
    token = signer.sign_object(payload, compress=True, timestamp=int(signed_at))
    return token, min(int(signed_at) + ttl, int(authenticated) + CHAIN * ttl)


def ttl() -> float:
    """``RESUME_TTL`` (0: resuming is off), as :func:`sign` and :func:`verify` use it."""
    return _current()[1]


#: The settings resume tokens depend on: a change (``override_settings``) makes the next
#: :func:`_current` read them anew.
WATCHED_SETTINGS = frozenset({"SECRET_KEY", "SECRET_KEY_FALLBACKS", "WS4TX_RESUME_TTL",
                              "WS4REDIS_RESUME_TTL"})

#: Bumped by a change of a watched setting; each thread keeps its signer and
#: ``RESUME_TTL`` with the generation they were read in.
_generation = 0
_local = threading.local()


def _current() -> tuple[Any, float]:
    """This thread's signer and ``RESUME_TTL``, read once per settings generation: a
    storm of resumed reconnections costs neither a settings read, nor the signer's
    construction (its keys read from the settings) per token (Django is imported here:
    the Twisted side imports :class:`Claim` without it)."""
    cached = getattr(_local, "cached", None)
    if cached is not None and cached[0] == _generation:
        return cached[1], cached[2]
    from ws4tx import _django_settings

    _django_settings.on_change(WATCHED_SETTINGS, _setting_changed, "ws4tx._resume")
    generation = _generation
    resume_ttl = _django_settings.resume_ttl()
    signer = _signer_class()()
    _local.cached = (generation, signer, resume_ttl)
    return signer, resume_ttl


def _setting_changed() -> None:
    global _generation
    _generation += 1


_SIGNER_CLASS: Any = None


def _signer_class() -> Any:
    """Django's TimestampSigner with ws4tx's salt, signing at a given time (one instance
    per thread: :meth:`sign_object` keeps that time on it)."""
    global _SIGNER_CLASS
    if _SIGNER_CLASS is not None:
        return _SIGNER_CLASS
    from django.core import signing

    class Signer(signing.TimestampSigner):
        def __init__(self) -> None:
            super().__init__(salt=SALT)
            self.at = 0

        def sign_object(self, obj: Any, *args: Any, timestamp: int = 0,
                        **kwargs: Any) -> str:
            self.at = timestamp
            result: str = super().sign_object(obj, *args, **kwargs)
            return result

        def timestamp(self) -> str:
            return signing.b62_encode(self.at)

    _SIGNER_CLASS = Signer
    return Signer


def verify(token: str) -> Claim:
    """The claim of ``token``, once its signature and age are right (no database, no
    Redis: the caller compares the counter). Raises :class:`InvalidResume`."""
    from django.core import signing

    signer, ttl = _current()
    if not isinstance(token, str) or not token or len(token) > MAX_LENGTH:
        raise InvalidResume("malformed")
    try:
        payload = signer.unsign_object(token, max_age=timedelta(seconds=ttl))
    except signing.SignatureExpired:
        raise InvalidResume(f"expired (resume tokens are valid for {ttl} s)",
                            expired=True) from None
    except signing.BadSignature:
        raise InvalidResume("bad signature (tampered with or malformed)") from None
    except (ValueError, TypeError):
        raise InvalidResume("malformed payload") from None
    claim = _claim(payload)
    assert claim.authenticated is not None  # _claim requires it
    if time.time() > claim.authenticated + CHAIN * ttl:
        raise InvalidResume(f"expired (a chain of resume tokens lasts {CHAIN * ttl:.0f} s "
                            "after the last authentication)", expired=True)
    return claim


def _claim(payload: Any) -> Claim:
    if not isinstance(payload, dict) or set(payload) - _FIELDS:
        raise InvalidResume("malformed payload")
    user, groups, session = payload.get("u"), payload.get("g", []), payload.get("c")
    facility, flags, counter = payload.get("f"), payload.get("l"), payload.get("n")
    expires, authenticated = payload.get("x"), payload.get("a")
    if not (isinstance(authenticated, int) and not isinstance(authenticated, bool)
            and isinstance(user, str) and user and isinstance(groups, list)
            and all(isinstance(g, str) and g for g in groups)
            and (session is None or isinstance(session, str))
            and isinstance(facility, str) and isinstance(flags, list)
            and all(isinstance(f, str) for f in flags)
            and isinstance(counter, int) and not isinstance(counter, bool)
            and (expires is None or isinstance(expires, (int, float)))):
        raise InvalidResume("malformed payload")
    return Claim(Identity(user=user, groups=frozenset(groups), session=session), facility,
                 parse_flags("&".join(flags)), counter,
                 None if expires is None else float(expires), float(authenticated))


def counter_value(stored: Optional[bytes | str | int]) -> int:
    """A counter as Redis gives it (None: never bumped, 0)."""
    if stored is None:
        return 0
    return int(stored)
