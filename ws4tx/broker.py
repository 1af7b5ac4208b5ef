"""The broker interface: how the server reaches the message bus (Redis, or memory in tests).

A broker carries messages between ws4tx nodes and the Django publishers. It is told which
channels to subscribe to by the router, calls its listener for every message on them, and
stores the last message of a channel under the channel's name (ws4redis's replay).
"""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface


class BrokerUnavailable(ConnectionError):
    """The broker cannot carry out a command now (Redis is down or does not answer)."""


class IBrokerListener(Interface):
    """What a broker reports to (the router)."""

    def messageReceived(channel: str, payload: bytes) -> None:
        """A message arrived on a subscribed channel."""

    def wantedChannels() -> Iterable[str]:
        """The channels to (re)subscribe after the broker (re)connects."""

    def brokerConnected() -> None:
        """The broker's subscriber is connected and subscribed to the wanted channels."""

    def brokerDisconnected() -> None:
        """The broker's subscriber lost its connection; messages may be missed until
        :meth:`brokerConnected`."""


class IBroker(Interface):
    """A message bus with per-channel subscriptions and a last-message store."""

    connected = Attribute("True while the subscriber is connected and subscribed.")
    delivering = Attribute(
        "True while messages are known to flow (a probe made the whole trip lately).")

    def start(listener: IBrokerListener) -> None:
        """Connect, and report to ``listener`` from now on."""

    def stop() -> "Deferred[None]":  # noqa: F821
        """Disconnect; fires when every connection is closed."""

    def subscribe(channel: str) -> "Deferred[None]":  # noqa: F821
        """Start receiving ``channel``; fires once the subscription is in place."""

    def unsubscribe(channel: str) -> "Deferred[None]":  # noqa: F821
        """Stop receiving ``channel``."""

    def publish(channel: str, payload: bytes, expire: int = 0) -> "Deferred[int]":  # noqa: F821
        """Publish ``payload`` on ``channel`` and, when ``expire`` > 0, store it under the
        channel's name for ``expire`` seconds. Fires with the number of receivers, or fails
        with :class:`BrokerUnavailable` within a bounded time."""

    def fetch(key: str) -> "Deferred[Optional[bytes]]":  # noqa: F821
        """The message stored under ``key``, or None."""


def publish_to(
    broker: IBroker, channels: Iterable[str], payload: bytes, expire: int = 0
) -> "defer.Deferred[int]":
    """Publish ``payload`` on each of ``channels``; fires with the total number of
    receivers, or fails with the first failure (BrokerUnavailable, say)."""
    d = defer.gatherResults([broker.publish(c, payload, expire) for c in channels],
                            consumeErrors=True)

    def first(failure: Failure) -> Failure:
        return failure.value.subFailure if failure.check(defer.FirstError) else failure

    return d.addCallbacks(sum, first)
