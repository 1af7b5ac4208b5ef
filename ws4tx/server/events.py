"""Dispatch of the events event clients send: to the facility's handler, or published on
the client's own channels; every event that carries an id is acknowledged.

The protocol hands each envelope a client sent to :meth:`Events.dispatch`; what the
handlers answer (values, Deferreds, coroutines; :class:`~ws4tx.server.handlers.EventRefused`)
becomes the acknowledgement, or a ``ws4tx.error`` event when there was no id.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import envelope
from ws4tx.naming import Identity
from ws4tx.server._log import observer
from ws4tx.server.broker import BrokerUnavailable, CommandRefused, NotStored
from ws4tx.server.handlers import EventHandler, EventRefused, ServerAPI, handler_method

_log = Logger(observer=observer)

#: The error a client gets when Redis cannot take what it sent. The broker's own message
#: (which names the Redis address) goes to the log, never to browsers.
UNAVAILABLE = "the server cannot reach Redis right now: try again in a moment"
#: The error a client gets when Redis's ACL refuses what it sent (a PUBLISH to a channel
#: the server's Redis user may not use); the details go to the log.
NOT_PERMITTED = "not permitted by Redis ACL"


class EventClient(Protocol):
    """What dispatch needs of a connection (a :class:`~ws4tx.server.protocol.PushProtocol`)."""

    identity: Identity
    facility: str
    #: Autobahn's description of the peer (None before the connection is made).
    peer: Optional[str]

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client alone."""

    def sendEnvelope(self, text: str) -> None:
        """Send an envelope (an acknowledgement) to this client alone."""

    def mayPublish(self) -> bool:
        """Whether the client has channels to publish to."""

    def publish(self, payload: bytes) -> defer.Deferred[int]:
        """Publish ``payload`` on the client's publish channels."""

    def refreshToken(self, data: Any) -> defer.Deferred[Any]:
        """The client sent a fresh token (``ws4tx.refresh``)."""

    @property
    def subscriptions(self) -> Any:
        """Its :class:`~ws4tx.server.subscriptions.Subscriptions` (subscribe frames)."""


class Events:
    """The event handlers of one node, one instance per facility, and the dispatch of
    what event clients send."""

    def __init__(self, handlers: Iterable[type[EventHandler]], server: ServerAPI) -> None:
        self.handlers: dict[str, EventHandler] = {h.facility: h(server) for h in handlers}

    def handles(self, facility: str) -> bool:
        """Whether a server-side handler speaks for ``facility``."""
        return facility in self.handlers

    def connected(self, client: EventClient) -> None:
        """``client`` joined: its facility's handler's ``on_connect``."""
        handler = self.handlers.get(client.facility)
        if handler is not None:
            self.call(client, handler.on_connect, None, client)

    def closed(self, client: EventClient) -> None:
        """``client`` went away: its facility's handler's ``on_close``."""
        handler = self.handlers.get(client.facility)
        if handler is not None:
            self.call(client, handler.on_close, None, client)

    def presenceInfo(self, client: Any) -> Optional[defer.Deferred[Any]]:
        """The site's info about ``client`` for its presence entry: its facility's
        handler's ``presence_info`` (None when no handler speaks for the facility)."""
        handler = self.handlers.get(client.facility)
        if handler is None:
            return None
        d = defer.maybeDeferred(handler.presence_info, client)
        return d.addCallback(lambda r: defer.ensureDeferred(r) if inspect.iscoroutine(r) else r)

    def dispatch(self, client: EventClient, payload: bytes) -> Optional[defer.Deferred[None]]:
        """Handle an envelope ``client`` sent: a subscribe or unsubscribe (its
        subscriptions answer it); a fresh token (``ws4tx.refresh``); the handler's
        ``on_<event>``; else, on a connection with publish flags, publish the event (never
        a ``ws4tx.*`` one); else refuse it. A Deferred that fires once the answer is sent,
        for an envelope answered later; None once it is answered."""
        try:
            message = envelope.decode(payload)
        except envelope.InvalidEnvelope as e:
            if e.id is not None and e.kind in (envelope.SUBSCRIBE, envelope.UNSUBSCRIBE):
                client.sendEnvelope(envelope.encode_refused(e.id, f"invalid envelope: {e}"))
            elif e.id is not None:
                client.sendEnvelope(envelope.encode_ack(e.id, error=f"invalid envelope: {e}"))
            else:
                client.emit(envelope.ERROR_EVENT, {"message": f"invalid envelope: {e}"})
            return None
        if isinstance(message, envelope.Subscribe):
            client.subscriptions.subscribe(message)
            return None
        if isinstance(message, envelope.Unsubscribe):
            client.subscriptions.unsubscribe(message)
            return None
        if not isinstance(message, envelope.Event):
            client.emit(envelope.ERROR_EVENT, {"message": "clients may only send events"})
            return None
        if message.event == envelope.REFRESH_EVENT:
            return self.answer(client, client.refreshToken(message.data), message.id)
        if message.facility is not None and message.facility != client.facility:
            return self.dispatchFor(client, message)
        method = handler_method(self.handlers.get(client.facility), message.event)
        if method is not None:
            return self.call(client, method, message.id, client, message.data)
        if envelope.is_reserved(message.event):
            return self.answer(client, defer.fail(EventRefused(
                f"event names starting with {envelope.RESERVED_PREFIX!r} are the "
                "server's")), message.id)
        if client.mayPublish():
            forwarded = envelope.encode_event(message.event, message.data).encode()
            return self.answer(client, client.publish(forwarded).addCallbacks(
                lambda _: None, _notStored), message.id)
        return self.answer(client, defer.fail(EventRefused(
            f"no handler for event {message.event!r}")), message.id)

    def dispatchFor(self, client: EventClient,
                    message: envelope.Event) -> Optional[defer.Deferred[None]]:
        """An event for another facility than the URL's (``message.facility``): to that
        facility's handler, as its subscriber (what the handler emits to it names the
        facility), only when the connection holds a subscription of it; else refused.
        Never published: a subscription has no publish channels."""
        facility = message.facility
        assert facility is not None
        subscription = client.subscriptions.of(facility)
        if subscription is None:
            return self.answer(client, defer.fail(EventRefused(
                f"not subscribed to {facility!r}: an event for a facility needs a "
                "subscription to it")), message.id)
        method = handler_method(self.handlers.get(facility), message.event)
        if method is not None:
            return self.call(subscription, method, message.id, subscription, message.data)
        if envelope.is_reserved(message.event):
            refusal = (f"event names starting with {envelope.RESERVED_PREFIX!r} are the "
                       "server's")
        else:
            refusal = f"no handler for event {message.event!r} of {facility!r}"
        return self.answer(subscription, defer.fail(EventRefused(refusal)), message.id)

    def call(self, client: EventClient, method: Callable[..., Any], ack_id: Optional[int],
             *args: Any) -> defer.Deferred[None]:
        """Call a handler method (a value, a Deferred or a coroutine) and answer
        ``ack_id`` with its result."""
        d = defer.maybeDeferred(method, *args)
        d.addCallback(lambda r: defer.ensureDeferred(r) if inspect.iscoroutine(r) else r)
        return self.answer(client, d, ack_id)

    def answer(self, client: EventClient, d: defer.Deferred[Any],
               ack_id: Optional[int]) -> defer.Deferred[None]:
        """Acknowledge ``ack_id`` with what ``d`` gives; a failure is an error ack (or a
        ``ws4tx.error`` event without an id): the refusal's message, :data:`UNAVAILABLE`
        when Redis could not be reached, :data:`NOT_PERMITTED` when its ACL refused (the
        details logged), or ``internal error`` (logged) for anything else."""
        def ok(result: Any) -> None:
            if ack_id is not None:
                client.sendEnvelope(envelope.encode_ack(ack_id, result))  # may raise: failed

        def failed(failure: Failure) -> None:
            if failure.check(EventRefused):
                message = str(failure.value)
            elif failure.check(CommandRefused):
                _log.warn("event from {peer} not published: {error}", peer=client.peer,
                          error=failure.value)
                message = NOT_PERMITTED
            elif failure.check(BrokerUnavailable):
                _log.info("event from {peer} not handled: {error}", peer=client.peer,
                          error=failure.value)
                message = UNAVAILABLE
            else:
                _log.failure("event handler failed for {peer}", failure, peer=client.peer)
                message = "internal error"
            if ack_id is not None:
                client.sendEnvelope(envelope.encode_ack(ack_id, error=message))
            else:
                client.emit(envelope.ERROR_EVENT, {"message": message})

        return d.addCallback(ok).addErrback(failed).addErrback(
            lambda f: _log.failure("answering {peer} failed", f, peer=client.peer))


def _notStored(failure: Failure) -> dict[str, Any] | Failure:
    """A forwarded event that was delivered but not stored is acknowledged (not an error:
    a retry would deliver it twice) with ``{"stored": false, "reason": ...}``."""
    error = failure.value
    if isinstance(error, NotStored):
        return {"stored": False, "reason": error.reason}
    return failure
