"""Sending without a socket: a ``POST`` to a client's URL carries one message, as one
WebSocket frame would.

An SSE client has no way to send on its stream; it posts each event (an envelope, as a
``ws4tx.v1`` client would send it) or raw message (``publish-*`` flags, ws4redis style)
to the URL it streams from. The POST is admitted as that URL's handshake would be
(:func:`ws4tx.server._verdict.judge`: the limits, the Origin, the authenticator and the
site's hooks), the authenticator told it is a POST: a cookie identity must then pass
Django's CSRF check (see :class:`ws4tx.server._django.SessionAuthenticator`), a token is its
own proof. What it carries goes through the way in of WebSocket frames
(:class:`ws4tx.server._sending.Sender`): the same rate limit (per user, else per address:
a POST has no connection to keep a bucket), handlers, acknowledgements and storage rules.

The answer is JSON: for an envelope, ``200`` and the list of the envelopes a WebSocket
client would have been sent in answer (its acknowledgement or refusal, events a handler
emitted to it); for a raw message, ``200`` and ``{"receivers": N}``. Anything not done is
a ``4xx`` (or ``503`` without Redis) with ``{"ws4tx": "refused", "status": S, "reason": R}``,
as a refused handshake is answered: a body over ``max_message_size`` (413: refused from its
``Content-Length`` before it is read, or as it arrives, by ws4tx's Site; once read, in a Site
of the application's), no CSRF token (403), a URL the
identity may neither publish on nor send events to (403), over the rate limit (429).
Nothing is published then. The whole request must arrive within ``handshake_timeout``
(the Site's deadline: :class:`ws4tx.server.web.HeadDeadlines`).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional
from weakref import WeakKeyDictionary

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from ws4tx import envelope
from ws4tx.naming import ANONYMOUS, Identity
from ws4tx.server import _verdict, admission
from ws4tx.server._log import observer
from ws4tx.server._ratelimit import Budgets
from ws4tx.server._sending import Sender
from ws4tx.server.auth import HandshakeDenied
from ws4tx.server.broker import BrokerUnavailable, CommandRefused, NotStored
from ws4tx.server.events import NOT_PERMITTED, UNAVAILABLE
from ws4tx.server.handlers import EventRefused
from ws4tx.server.node import Node

if TYPE_CHECKING:
    from ws4tx.server.protocol import PushFactory

_log = Logger(observer=observer)

#: The rate limits of posting clients, per node: a bucket per user, else per address.
_budgets: WeakKeyDictionary[Node, Budgets] = WeakKeyDictionary()


def serve(factory: PushFactory, request: Request) -> Any:
    """Answer a POST of a WebSocket URL (see the module's documentation)."""
    _Post(factory, request).admit()
    return NOT_DONE_YET


class _NoSubscriptions:
    """A POST has no connection to add channels to: a subscribe or unsubscribe is
    refused, as a refused one is on a WebSocket."""

    def __init__(self, client: _Post) -> None:
        self._client = client

    def _refuse(self, message: Any) -> None:
        self._client.sendEnvelope(envelope.encode_refused(
            message.id, "subscribe and unsubscribe need a connection: name the channels "
            "in the stream's URL"))

    subscribe = unsubscribe = _refuse

    def of(self, facility: str) -> None:
        """No subscription: an event for another facility than the URL's is refused."""
        return None


class _Refusal(Exception):
    """The POST is refused: its status and reason."""

    def __init__(self, reason: str, status: int, retry_after: Optional[int] = None) -> None:
        super().__init__(reason)
        self.denied = HandshakeDenied(reason, status, retry_after)


class _Post(Sender):
    """One POST: a client for the time of its one message (an
    :class:`~ws4tx.server.events.EventClient` that collects what it is sent)."""

    identity: Identity = ANONYMOUS
    facility: str = ""
    speaks_events = True

    def __init__(self, factory: PushFactory, request: Request) -> None:
        self.factory = factory
        self._request = request
        address = request.getClientAddress()
        self.peer = f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"
        self._admitted: Optional[admission.Admission] = None
        self._channels: tuple[str, ...] = ()
        self._publish_to: tuple[str, ...] = ()
        self._unechoed: Counter[tuple[str, bytes]] = Counter()
        self._over_budget = False
        self._address: Optional[str] = None
        self._finished = False
        self._refusal: Optional[_Refusal] = None
        #: The envelopes it is sent, in order: the answer's body.
        self.replies: list[Any] = []
        self.subscriptions = _NoSubscriptions(self)

    @property
    def node(self) -> Node:
        return self.factory.node

    # Admission

    def admit(self) -> None:
        request, config = self._request, self.factory.config
        request.notifyFinish().addBoth(self._gone)
        _verdict.allow_reading(config, request)
        headers = {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in vs)
                   for name, vs in request.requestHeaders.getAllRawHeaders()}
        peer = getattr(request.getClientAddress(), "host", "")
        self._address = self.node.addresses.client(peer, headers)
        content = request.content
        if content is not None and content.seek(0, 2) > config.max_message_size:
            # Mounted in a Site of its own, nothing capped the body as it came in.
            self._refuse(HandshakeDenied(f"the body is larger than max_message_size "
                                         f"({config.max_message_size} bytes)", 413))
            return
        if content is not None:
            content.seek(0)
        _verdict.judge(config, self.factory.authenticator, request,
                       protocols=(envelope.SUBPROTOCOL,)).addCallback(
            self._judged).addErrback(self._failed)

    def _judged(self, judged: tuple[Any, Any]) -> Optional[defer.Deferred[Any]]:
        if self._finished:
            return None
        handshake, answer = judged
        node, config = self.node, self.factory.config
        handled = node.events.handles(handshake.facility)
        admitted = admission.admit(config, handshake, answer, handled=handled,
                                   protocols=[envelope.SUBPROTOCOL])
        self._admitted = admitted
        self.identity, self.facility = admitted.identity, admitted.facility
        # Its own messages come back on its stream: nothing to skip here.
        self._publish_to = admitted.publish_to
        request = self._request
        body = request.content.read() if request.content is not None else b""
        if not self._publish_to and not handled:
            raise _Refusal("this URL gives your identity nothing to publish on and no "
                           "handler to send events to", 403)
        if not body:
            raise _Refusal("an empty body: POST one message (an event envelope, or a raw "
                           "message with publish-* flags)", 400)
        binary = (request.getHeader(b"content-type") or b"").lower().startswith(
            b"application/octet-stream")
        raw = binary or not envelope.is_envelope(body)
        if raw and not self._publish_to:
            raise _Refusal("this URL gives your identity nothing to publish on: send "
                           "events to its handler in envelopes", 403)
        if not binary:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refusal("the body is not UTF-8 text (send binary messages as "
                               "application/octet-stream)", 400) from None
            if not raw:
                try:
                    envelope.decode(text)
                except envelope.InvalidEnvelope as e:
                    raise _Refusal(f"invalid envelope: {e}", 400) from None
        stats = node.stats
        stats["client_messages"] += 1
        stats["client_bytes"] += len(body)
        handling = self.received(body, binary)
        if self._refusal is not None:
            raise self._refusal
        if handling is None:
            self._answer(200, self.replies)
            return None
        if raw:
            return handling.addCallback(lambda receivers: self._answer(
                200, {"receivers": receivers}))
        return handling.addCallback(lambda _: self._answer(200, self.replies))

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, _Refusal):
            self._refuse(error.denied)
        elif isinstance(error, HandshakeDenied):
            self._refuse(error)
        elif isinstance(error, NotStored):
            self._answer(200, {"receivers": error.receivers, "stored": False,
                               "reason": error.reason})
        elif isinstance(error, EventRefused):
            self._refuse(HandshakeDenied(str(error), 403))
        elif isinstance(error, CommandRefused):
            self._refuse(HandshakeDenied(NOT_PERMITTED, 403))
        elif isinstance(error, BrokerUnavailable):
            self._refuse(HandshakeDenied(UNAVAILABLE, 503, retry_after=1))
        else:
            _log.failure("handling a POST to {uri}", failure, uri=self._request.uri)
            self._refuse(HandshakeDenied("the server failed to handle this message", 500))

    # The way in of frames (ws4tx.server._sending.Sender)

    def withinRate(self) -> bool:
        config = self.factory.config
        if not config.rate_limit:
            return True
        node = self.node
        budgets = _budgets.get(node)
        if budgets is None:
            budgets = _budgets[node] = Budgets(config.rate_limit, config.rate_burst,
                                               node.clock)
        return budgets.take(self.identity.user or ("@", self._address), 1)

    def overLimit(self, text: Optional[bytes]) -> None:
        self.node.stats["rate_limited"] += 1
        self._refusal = _Refusal("rate limit exceeded: message dropped", 429, retry_after=1)

    def closeWith(self, code: int, reason: str) -> None:
        self._refusal = _Refusal(reason, 400)

    # What dispatch and the handlers send it (ws4tx.server.events.EventClient)

    def emit(self, event: str, data: Any = None) -> None:
        self.replies.append(json.loads(envelope.encode_event(event, data)))

    def sendEnvelope(self, text: str) -> None:
        self.replies.append(json.loads(text))

    def refreshToken(self, data: Any) -> defer.Deferred[Any]:
        return defer.fail(EventRefused("a POST has no token to refresh: the next one "
                                       "carries the fresh token in its URL"))

    # Answering

    def _answer(self, status: int, body: Any) -> None:
        if self._finished:
            return
        self._write(status, json.dumps(body, separators=(",", ":")).encode() + b"\n", None)

    def _refuse(self, denied: HandshakeDenied) -> None:
        if self._finished:
            return
        self._write(denied.status, _verdict.refusal_body(denied), denied.retry_after)

    def _write(self, status: int, body: bytes, retry_after: Optional[int]) -> None:
        request = self._request
        self._finished = True
        self.node.stats["posts_ok" if status < 400 else "posts_refused" if status < 500
                        else "posts_failed"] += 1
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        if retry_after is not None:
            request.setHeader(b"retry-after", str(retry_after).encode())
        request.write(body)
        request.finish()

    def _gone(self, result: Any) -> None:
        self._finished = True
