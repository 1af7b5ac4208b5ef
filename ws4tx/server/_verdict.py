"""The admission verdict of a WebSocket URL, for a plain GET of it (no Upgrade).

A browser cannot read the HTTP status of a refused WebSocket handshake: its page only sees
the socket close (1006) before it opened. ws4tx.js learns why by fetching the same URL
without Upgrade: the server runs the same checks as for the handshake (the limits, the URL,
the Origin, the recovery positions, the authenticator) and answers a refusal with its status
and a JSON body ``{"ws4tx": "refused", "status": S, "reason": R}``; an admissible URL gets
None here (the caller then answers "upgrade to WebSocket"). The answer is readable by the
pages of the Origins the handshake would accept (CORS, with credentials).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Coroutine, Optional
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.util import peer2str
from twisted.internet import defer
from twisted.web.server import Request

from ws4tx.envelope import SUBPROTOCOL
from ws4tx.history import parse_recover
from ws4tx.naming import Identity
from ws4tx.server import admission
from ws4tx.server._origin import origin_allowed
from ws4tx.server.auth import Grant, HandshakeDenied, HandshakeRequest, IAuthenticator
from ws4tx.server.config import ServerConfig


def verdict(config: ServerConfig, authenticator: IAuthenticator,
            request: Request) -> defer.Deferred[Optional[HandshakeDenied]]:
    """The refusal the handshake of ``request``'s URL would get (None: admitted), judged
    as an event client's (ws4tx.js asks it: its bare URL is admitted). A URL that carries a
    resume token gets no final 401 or 403: the token may still admit it."""
    resuming = "resume" in parse_qs(urlsplit(request.uri.decode("latin-1")).query)

    def refused(failure: Any) -> Optional[HandshakeDenied]:
        denied = _refusal(failure)
        if resuming and denied is not None and denied.status in (401, 403):
            return None
        return denied

    return judge(config, authenticator, request, protocols=(SUBPROTOCOL,)).addCallbacks(
        lambda _: None, refused)


def judge(config: ServerConfig, authenticator: IAuthenticator, request: Request,
          protocols: tuple[str, ...] = ()
          ) -> defer.Deferred[tuple[HandshakeRequest, Identity | Grant]]:
    """The checks of a handshake, for a plain HTTP request of a WebSocket URL (the limits,
    the URL, the Origin, the recovery positions, then the authenticator): the handshake
    as the authenticator saw it and its answer, or a failure with
    :class:`HandshakeDenied`. The way in of a plain GET's verdict and of an SSE stream."""
    uri = request.uri.decode("latin-1")
    headers = {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
               for name, values in request.requestHeaders.getAllRawHeaders()}
    peer = peer2str(request.transport) if request.transport is not None else ""
    parts = urlsplit(uri)
    try:
        handshake = admission.check_request(
            config, peer=peer, host=headers.get("host", ""), path=parts.path,
            query=parts.query, headers=headers, secure=request.isSecure(),
            protocols=protocols)
        if request.method != b"GET":
            handshake = replace(handshake, method=request.method.decode("ascii", "replace"))
        try:
            parse_recover(handshake.params.get("recover", []))
        except ValueError as e:
            raise HandshakeDenied(str(e), 400) from None
        answer: Any = authenticator.authenticate(handshake)
    except HandshakeDenied:
        return defer.fail()
    if isinstance(answer, Coroutine):
        answer = defer.Deferred.fromCoroutine(answer)
    return defer.maybeDeferred(lambda: answer).addCallback(lambda a: (handshake, a))


def _refusal(failure: Any) -> Optional[HandshakeDenied]:
    if failure.check(HandshakeDenied):
        denied: HandshakeDenied = failure.value
        return denied
    return failure  # type: ignore[no-any-return]


def allow_reading(config: ServerConfig, request: Request) -> None:
    """Let the page of the request's Origin read the answer, when the handshake would
    accept that Origin (CORS, with credentials: the cookies decide as for the handshake)."""
    request.setHeader(b"vary", b"Origin")
    origin = (request.getHeader(b"origin") or b"").decode("latin-1")
    if origin and (not config.allowed_origins
                   or origin_allowed(origin, config.allowed_origins)):
        request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        request.setHeader(b"access-control-allow-credentials", b"true")


def refusal_body(denied: HandshakeDenied) -> bytes:
    """The JSON body of a refusal."""
    return json.dumps({"ws4tx": "refused", "status": denied.status,
                       "reason": denied.reason}).encode() + b"\n"
