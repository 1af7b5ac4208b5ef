"""Subscribe grants on the Twisted side: a ``subscribe`` frame that carries a grant of the
site (:mod:`ws4tx.grants`) is admitted from it, by the server's clock, without the
authenticator's work (no thread, no database). What a grant holds and how it is signed:
:mod:`ws4tx.grants`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from zope.interface import Interface

from ws4tx.naming import BROADCAST, GROUP, SESSION, USER, Identity, channels_for
from ws4tx.server.auth import HandshakeDenied


class IGrantReader(Interface):
    """An authenticator that also reads the site's grants (ws4tx's Django
    authenticator)."""

    def readGrant(grant: str, now: float) -> Any:
        """The :class:`ws4tx.grants.Claim` of ``grant`` once its signature is right and it
        has not expired at ``now`` (Unix seconds); raises ValueError (with ``reason``)
        otherwise."""


def granted_channels(reader: Any, grant: str, now: float, prefix: Optional[str],
                     identity: Identity, facility: str, audiences: frozenset[str],
                     groups: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The channels of ``facility``'s ``audiences`` (of ``groups`` only, when it names
    some; else every group of the grant) that ``grant`` gives a connection of
    ``identity``; HandshakeDenied with the reason when it gives none of them: a grant
    that ``reader`` (None: the server reads no grants) refuses, of another user or
    session, of another facility, or without an audience or a group asked."""
    if reader is None or not IGrantReader.providedBy(reader):
        raise HandshakeDenied("invalid grant: this server does not read grants")
    try:
        claim = reader.readGrant(grant, now)
    except ValueError as e:
        raise HandshakeDenied(f"invalid grant: {getattr(e, 'reason', e)}") from None
    if claim.user != identity.user:
        raise HandshakeDenied("invalid grant: it is for another user")
    if claim.session is not None and claim.session != identity.session:
        raise HandshakeDenied("invalid grant: it is for another session")
    if claim.facility != facility:
        raise HandshakeDenied(f"invalid grant: it is for the facility {claim.facility!r}")
    beyond = sorted(audiences - claim.audiences)
    if beyond:
        raise HandshakeDenied(f"invalid grant: it does not allow the {beyond[0]} audience")
    chosen: tuple[str, ...] = ()
    if GROUP in audiences:
        if identity.user is None:
            raise HandshakeDenied(f"not allowed: the group audience of {facility}")
        chosen = tuple(sorted(claim.groups)) if groups is None else tuple(groups)
        foreign = [g for g in chosen if g not in claim.groups]
        if foreign:
            raise HandshakeDenied(f"invalid grant: it does not allow the group "
                                  f"{foreign[0]!r}")
    names = {a: identity.names(a) if a in audiences else () for a in (USER, SESSION)}
    for audience in (USER, SESSION):
        if audience in audiences and not names[audience]:
            raise HandshakeDenied(f"not allowed: the {audience} audience of {facility}")
    return tuple(channels_for(prefix, facility, broadcast=BROADCAST in audiences,
                              users=names[USER], groups=chosen, sessions=names[SESSION]))
