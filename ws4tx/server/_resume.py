"""Resumable sessions on the Twisted side: a handshake that presents a resume token
(``resume=`` in its URL) is admitted from the token and one Redis read, or falls back to
the authenticator; an open connection is handed a token and a fresh one before it
expires. What a token holds and how it is signed: :mod:`ws4tx._resume`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from ws4tx._resume import Claim, counter_value
from ws4tx.naming import Flags, revocation_key
from ws4tx.server._log import observer
from ws4tx.server.auth import Grant, HandshakeRequest
from ws4tx.server.broker import IBroker

log = Logger(observer=observer)


class IResumer(Interface):
    """An authenticator that also signs and reads resume tokens (ws4tx's Django
    authenticator)."""

    def issueResume(claim: Claim) -> Optional[tuple[str, float]]:
        """The resume token of ``claim`` and when it expires; None: resuming is off."""

    def readResume(token: str) -> Claim:
        """The claim of ``token`` once its signature and age are right; raises
        ValueError otherwise."""


def resume(resumer: Any, broker: IBroker, prefix: Optional[str],
           handshake: HandshakeRequest, token: str, now: float,
           outcomes: Counter[str]) -> defer.Deferred[Optional[tuple[Grant, int, float]]]:
    """The grant a resume token gives ``handshake`` (with the counter value and when its
    identity was last really authenticated), after one read of the user's revocation
    counter; None when the token does not resume this handshake (then the handshake
    authenticates as usual). ``outcomes`` counts why."""
    def refused(why: str) -> defer.Deferred[Optional[tuple[Grant, int, float]]]:
        outcomes[why] += 1
        return defer.succeed(None)

    try:
        claim: Claim = resumer.readResume(token)
    except ValueError as e:
        return refused("expired" if getattr(e, "expired", False) else "invalid")
    if claim.facility != handshake.facility:
        return refused("other facility")
    if claim.credential_expires is not None and claim.credential_expires <= now:
        return refused("credential expired")
    asked = handshake.flags
    flags = Flags(asked.subscribe & claim.flags.subscribe,
                  asked.publish & claim.flags.publish, asked.echo and claim.flags.echo)
    user = claim.identity.user
    assert user is not None  # a claim always names its user

    def compared(stored: Any) -> Optional[tuple[Grant, int, float]]:
        if counter_value(stored) != claim.counter:
            outcomes["revoked"] += 1
            return None
        outcomes["resumed"] += 1
        authenticated = now if claim.authenticated is None else claim.authenticated
        return (Grant(claim.identity, flags, claim.credential_expires), claim.counter,
                authenticated)

    def unread(failure: Failure) -> None:
        outcomes["unreadable"] += 1
        log.debug("resume: the revocation counter could not be read ({e}); the handshake "
                  "authenticates as usual", e=failure.getErrorMessage())
        return None

    return broker.fetch(revocation_key(prefix, user)).addCallbacks(compared, unread)


def read_counter(broker: IBroker, prefix: Optional[str],
                 user: str) -> defer.Deferred[int]:
    """The user's revocation counter now."""
    return broker.fetch(revocation_key(prefix, user)).addCallback(counter_value)


class Renewal:
    """Hands a connection its resume token, and a fresh one half-way to each expiry:
    ``issue()`` signs one (None: resuming is off), ``send(token, expires)`` emits it."""

    def __init__(self, clock: IReactorTime,
                 issue: Callable[[], Optional[tuple[str, float]]],
                 send: Callable[[str, float], None]) -> None:
        self._clock = clock
        self._issue = issue
        self._send = send
        self._next: Optional[IDelayedCall] = None

    def start(self) -> None:
        """Send a token now and schedule the next one."""
        self._next = None
        issued = self._issue()
        if issued is None:
            return
        token, expires = issued
        left = expires - self._clock.seconds()
        if left < 1:  # the chain is over: the client authenticates anew next time
            return
        self._send(token, expires)
        self._next = self._clock.callLater(left / 2, self.start)

    def stop(self) -> None:
        """Send nothing more (the connection closed)."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
