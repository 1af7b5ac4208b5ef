"""What a client is told of its delivery, whatever carries it (a WebSocket, an SSE
stream): ``ws4tx.interrupted`` once when the server lost Redis, ``ws4tx.resumed`` once it
is back, ``ws4tx.dropped`` with how many messages the server fell behind by.

:class:`DeliveryEvents` is mixed into the member of the hub; that class says how an
event is sent (its :meth:`emit`) and sets ``_interrupted`` to False when it starts."""

from __future__ import annotations

from typing import Any

from ws4tx import envelope


class DeliveryEvents:
    #: Whether the client was told of an interruption and not yet of its end.
    _interrupted: bool

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this client. Override."""
        raise NotImplementedError

    def deliveryInterrupted(self) -> None:
        """The server lost Redis: said once until it is back."""
        if not self._interrupted:
            self._interrupted = True
            self.emit(envelope.INTERRUPTED_EVENT)

    def deliveryResumed(self) -> None:
        if self._interrupted:
            self._interrupted = False
            self.emit(envelope.RESUMED_EVENT)

    def messagesDropped(self, count: int) -> None:
        """The server fell behind and dropped ``count`` messages meant for this client."""
        self.emit(envelope.DROPPED_EVENT, {"messages": count})
