"""Test doubles for applications' own tests: an in-memory broker and a fixed authenticator.

``MemoryBroker`` behaves like the Redis broker (subscriptions, publish, a last-message store
with expiry on an injected clock) without any I/O, so routing can be tested without sockets
or Redis. Several brokers may share one :class:`MemoryBus` to stand for several ws4tx nodes
on one Redis.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ws4tx.server.auth import HandshakeRequest, IAuthenticator
from ws4tx.server.broker import BrokerUnavailable, IBroker, IBrokerListener
from ws4tx.naming import ANONYMOUS, Identity


class MemoryBus:
    """What several :class:`MemoryBroker` share: the brokers and the stored messages."""

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        from twisted.internet.task import Clock

        self.clock: IReactorTime = clock if clock is not None else Clock()
        self.brokers: list["MemoryBroker"] = []
        self._store: dict[str, tuple[bytes, float]] = {}

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> int:
        """Deliver ``payload`` to every broker subscribed to ``channel``; store it if asked."""
        receivers = 0
        for broker in list(self.brokers):
            if broker.connected and channel in broker.subscribed:
                receivers += 1
                assert broker.listener is not None
                broker.listener.messageReceived(channel, payload)
        if expire > 0:
            self._store[channel] = (payload, self.clock.seconds() + expire)
        return receivers

    def get(self, key: str) -> Optional[bytes]:
        """The message stored under ``key`` if it has not expired."""
        item = self._store.get(key)
        if item is None:
            return None
        payload, deadline = item
        if self.clock.seconds() >= deadline:
            del self._store[key]
            return None
        return payload


@implementer(IBroker)
class MemoryBroker:
    """An :class:`~ws4tx.server.broker.IBroker` in memory. ``disconnect()`` and ``reconnect()``
    simulate an outage: while down, commands fail with BrokerUnavailable and messages are
    lost, as with Redis pub/sub."""

    def __init__(self, bus: Optional[MemoryBus] = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.listener: Optional[IBrokerListener] = None
        self.subscribed: set[str] = set()
        self.connected = False
        #: Every publish made through this broker: (channel, payload, expire).
        self.published: list[tuple[str, bytes, int]] = []

    @property
    def delivering(self) -> bool:
        return self.connected

    def start(self, listener: IBrokerListener) -> None:
        self.listener = listener
        self.bus.brokers.append(self)
        self.reconnect()

    def stop(self) -> defer.Deferred[None]:
        if self in self.bus.brokers:
            self.bus.brokers.remove(self)
        self.connected = False
        self.subscribed.clear()
        return defer.succeed(None)

    def disconnect(self) -> None:
        """Simulate a lost connection: subscriptions are forgotten, like Redis's."""
        self.connected = False
        self.subscribed.clear()
        if self.listener is not None:
            self.listener.brokerDisconnected()

    def reconnect(self) -> None:
        """Simulate a new connection: resubscribe whatever the listener wants."""
        assert self.listener is not None
        self.connected = True
        self.subscribed = set(self.listener.wantedChannels())
        self.listener.brokerConnected()

    def _check(self) -> None:
        if not self.connected:
            raise BrokerUnavailable("the memory broker is disconnected")

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        return self._run(self.subscribed.add, channel)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        return self._run(self.subscribed.discard, channel)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        def publish() -> int:
            self.published.append((channel, payload, expire))
            return self.bus.publish(channel, payload, expire)

        return self._run(publish)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._run(self.bus.get, key)

    def _run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        try:
            self._check()
            return defer.succeed(f(*args))
        except Exception:
            return defer.fail()


@implementer(IAuthenticator)
class StaticAuthenticator:
    """An authenticator that gives every connection the identity a function returns.

    ``StaticAuthenticator(Identity(user='john', groups=frozenset({'chatusers'})))`` makes
    every client john; ``StaticAuthenticator(lambda request: ...)`` decides per request
    (from a test header, say).
    """

    def __init__(
        self, identity: Identity | Callable[[HandshakeRequest], Identity] = ANONYMOUS
    ) -> None:
        self._identity = identity

    def authenticate(self, request: HandshakeRequest) -> defer.Deferred[Identity]:
        if callable(self._identity):
            return defer.maybeDeferred(self._identity, request)
        return defer.succeed(self._identity)
