"""The router: joins the hub (who listens where) to the broker (the message bus).

It subscribes the broker to a channel when the channel gets its first local client and
unsubscribes after its last one leaves; on every message it builds the WebSocket frame once
and writes it to each local member. It is the broker's listener, and the hub is what the
broker resubscribes from after a reconnect.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ws4tx.broker import IBroker, IBrokerListener
from ws4tx.hub import Hub


class Member(Protocol):
    """What the router needs of a client (a :class:`ws4tx.protocol.PushProtocol`)."""

    def deliver(self, prepared: Any, channel: str, payload: bytes) -> None:
        """Write a prepared frame that arrived on ``channel``."""

    def deliveryInterrupted(self) -> None:
        """The broker lost its connection: messages may be missed from now on."""

    def deliveryResumed(self) -> None:
        """The broker is back and resubscribed: delivery goes on."""


def is_text(payload: bytes) -> bool:
    """Whether ``payload`` goes out as a text frame (valid UTF-8) rather than binary."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@implementer(IBrokerListener)
class Router:
    """Routes broker messages to local clients; keeps broker subscriptions = hub channels.

    ``prepare(payload, is_binary)`` builds a frame once for many clients (Autobahn's
    ``factory.prepareMessage``).
    """

    log = Logger()

    def __init__(self, broker: IBroker, prepare: Callable[[bytes, bool], Any],
                 max_size: int = 1024 * 1024) -> None:
        self.hub: Hub[Member] = Hub()
        self.broker = broker
        self._prepare = prepare
        self._max_size = max_size
        #: Counters for health and metrics.
        self.stats = {"messages": 0, "frames": 0, "outages": 0, "oversized": 0}

    # Clients

    def join(self, client: Member, channels: Iterable[str]) -> defer.Deferred[None]:
        """Add ``client`` to ``channels``; fires when every channel is subscribed (or
        failed to be: the broker resubscribes the hub's channels once it reconnects)."""
        opened = self.hub.join(client, channels)
        waits = [self._subscribe(channel) for channel in self.hub.channels_of(client)
                 if channel in opened]
        return defer.gatherResults(waits).addCallback(lambda _: None) if waits \
            else defer.succeed(None)

    def _subscribe(self, channel: str) -> defer.Deferred[None]:
        d = self.broker.subscribe(channel)
        d.addErrback(self._subscribeFailed, channel)
        return d

    def _subscribeFailed(self, failure: Any, channel: str) -> None:
        self.log.debug("subscribing {channel} failed: {error}; it will be resubscribed on "
                       "reconnect", channel=channel, error=failure.getErrorMessage())

    def leave(self, client: Member) -> None:
        """Remove ``client``; unsubscribe the channels nobody here listens to any more."""
        for channel in self.hub.leave(client):
            self.broker.unsubscribe(channel).addErrback(lambda f: None)

    # IBrokerListener

    def wantedChannels(self) -> Iterable[str]:
        return list(self.hub.channels())

    def messageReceived(self, channel: str, payload: bytes) -> None:
        members = self.hub.members(channel)
        self.stats["messages"] += 1
        if not members:
            return
        if len(payload) > self._max_size:
            self.stats["oversized"] += 1
            self.log.warn("dropped a message of {size} bytes on {channel}: over the "
                          "{limit} byte limit", size=len(payload), channel=channel,
                          limit=self._max_size)
            return
        prepared = self._prepare(payload, not is_text(payload))
        self.stats["frames"] += len(members)
        for member in tuple(members):
            member.deliver(prepared, channel, payload)

    def brokerDisconnected(self) -> None:
        self.stats["outages"] += 1
        for member in tuple(self.hub.clients()):
            member.deliveryInterrupted()

    def brokerConnected(self) -> None:
        for member in tuple(self.hub.clients()):
            member.deliveryResumed()

    def memberCount(self) -> int:
        """How many clients have joined."""
        return len(self.hub)
