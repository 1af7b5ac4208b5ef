"""When a connection's credential runs out: a token's end (see :mod:`ws4tx.tokens`).

:class:`Expiry` asks the client for a fresh token :data:`REFRESH_LEAD` seconds before the
deadline (half-way there when less is left) and expires the connection at the deadline,
unless :meth:`Expiry.extend` moved it later. The connection decides what asking and expiring mean
(the ``ws4tx.refresh`` event; closing with :data:`ws4tx.closecodes.TOKEN_EXPIRED`); time
comes from the clock it is given. :func:`reauthenticate` checks the fresh token a client
sends.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ws4tx.naming import Identity
from ws4tx.server.auth import Grant, HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.server.handlers import EventRefused

#: Seconds before the deadline at which the client is asked for a fresh token: time for a
#: page to fetch one from its site.
REFRESH_LEAD = 30.0


class Expiry:
    """The deadline of one connection, on ``clock``: ``ask(deadline)`` before it,
    ``expire()`` at it."""

    def __init__(self, clock: IReactorTime, deadline: float, ask: Callable[[float], None],
                 expire: Callable[[], None], lead: float = REFRESH_LEAD) -> None:
        self._clock = clock
        self._ask = ask
        self._expire = expire
        self._lead = lead
        self.deadline = deadline
        self._asking: Optional[IDelayedCall] = None
        self._expiring: Optional[IDelayedCall] = None
        self._schedule()

    def _schedule(self, ask: bool = True) -> None:
        now = self._clock.seconds()
        left = max(0.0, self.deadline - now)
        if ask:
            self._asking = self._clock.callLater(left - min(self._lead, left / 2), self._asked)
        self._expiring = self._clock.callLater(left, self._expired)

    def _asked(self) -> None:
        self._asking = None
        self._ask(self.deadline)

    def _expired(self) -> None:
        self._expiring = None
        self.stop()
        self._expire()

    def extend(self, deadline: Optional[float]) -> None:
        """A fresh credential came: the deadline is now ``deadline`` (None: never). One
        that ends no later than the last is not asked to be refreshed again (a client
        would otherwise be asked over and over as the end nears)."""
        self.stop()
        if deadline is not None:
            later = deadline > self.deadline
            self.deadline = deadline
            self._schedule(ask=later)

    def stop(self) -> None:
        """Ask nothing and expire nothing any more (the connection closed)."""
        for call in (self._asking, self._expiring):
            if call is not None and call.active():
                call.cancel()
        self._asking = self._expiring = None


def with_token(handshake: HandshakeRequest, token: str) -> HandshakeRequest:
    """``handshake`` with ``token`` in place of its token: what a refreshed connection
    authenticates as from now on (its subscribes too)."""
    params = {**handshake.params, "token": [token]}
    return replace(handshake, params=params, query=urlencode(params, doseq=True))


def reauthenticate(authenticator: IAuthenticator, handshake: HandshakeRequest, data: Any,
                   identity: Identity) -> defer.Deferred[Optional[float]]:
    """Check the fresh token a client sent (``data``: ``{"token": ...}``) as its first
    was checked: ``authenticator`` on the connection's ``handshake`` with the token in
    place of the old one (the site's hooks run again). Fires with the new deadline (None:
    the credential no longer expires); fails with
    :class:`~ws4tx.server.handlers.EventRefused` when the token is refused or is another
    identity's than ``identity`` (the connection's channels were made for that one)."""
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        return defer.fail(EventRefused('a refresh carries {"token": "<a fresh token>"}'))
    fresh = with_token(handshake, token)
    answer: defer.Deferred[Any] = defer.maybeDeferred(authenticator.authenticate, fresh)
    answer.addCallback(lambda a: defer.ensureDeferred(a) if isinstance(a, Coroutine) else a)

    def checked(granted: Any) -> Optional[float]:
        grant = granted if isinstance(granted, Grant) else Grant(granted)
        if grant.identity != identity:
            raise EventRefused("token refused: it is another identity's than this "
                               "connection's (reconnect with it instead)")
        return grant.expires

    def refused(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, HandshakeDenied):
            raise EventRefused(f"token refused: {error.reason}")
        return failure

    return answer.addCallbacks(checked, refused)
