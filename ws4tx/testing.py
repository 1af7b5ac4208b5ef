"""Test doubles for applications' own tests: an in-memory broker and a fixed authenticator.

``MemoryBroker`` behaves like the Redis broker (subscriptions, publish, a last-message store
with expiry on an injected clock) without any I/O, so routing can be tested without sockets
or Redis. Several brokers may share one :class:`MemoryBus` to stand for several ws4tx nodes
on one Redis.

Like Redis, the bus delivers a message on a later reactor turn, never inside ``publish``:
it schedules the delivery with its clock's ``callLater(0, ...)``. With the default clock (a
:class:`twisted.internet.task.Clock`) a test delivers what was published by advancing it,
``bus.clock.advance(0)``; a bus on the real reactor (``MemoryBus(reactor)``) delivers by
itself. Messages are delivered in the order they were published.
"""

from __future__ import annotations

import fnmatch
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ws4tx import history as _history, presence as _presence
from ws4tx.naming import ANONYMOUS, Identity, PresenceKeys
from ws4tx.server.auth import HandshakeRequest, IAuthenticator
from ws4tx.server.broker import (
    BrokerUnavailable,
    IBroker,
    IBrokerListener,
    NotStored,
    SubscriptionRefused,
)

#: What Redis answers to a SUBSCRIBE its ACL does not allow (and what the double says).
NOPERM = "NOPERM this user has no permissions to access one of the channels used as arguments"
#: What Redis answers to a SET past ``maxmemory`` (the default reason of a refused store).
OOM = "OOM command not allowed when used memory > 'maxmemory'."


@dataclass
class _Stream:
    """One channel's history on a :class:`MemoryBus`, as publish.lua keeps it in Redis."""

    epoch: str
    offset: int = 0
    entries: deque[_history.Publication] = field(default_factory=deque)
    #: When the meta hash and the stream expire (clock seconds).
    meta_deadline: float = 0.0
    stream_deadline: float = 0.0


class MemoryBus:
    """What several :class:`MemoryBroker` share: the brokers, the stored messages, and
    the messages published but not delivered yet.

    ``clock`` schedules deliveries (``callLater(0, ...)``: the next reactor turn) and dates
    the stored messages; by default a :class:`~twisted.internet.task.Clock` that the test
    advances.
    """

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        from twisted.internet.task import Clock

        self.clock: IReactorTime = clock if clock is not None else Clock()
        self.brokers: list[MemoryBroker] = []
        self._store: dict[str, tuple[bytes, float]] = {}
        #: (broker, its connection, channel, payload) waiting for the next turn; a
        #: barrier's Deferred in place of the channel and payload.
        self._pending: deque[tuple[MemoryBroker, int, Any, Any]] = deque()
        self._delivery: Optional[IDelayedCall] = None
        self._store_refusal: Optional[str] = None
        #: channel -> its history.
        self._streams: dict[str, _Stream] = {}
        #: Presence (MemoryBroker.updatePresence): connections key -> {id: entry JSON}.
        self.presence: dict[str, dict[str, str]] = {}

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> int:
        """Publish ``payload`` to every broker subscribed to ``channel`` now, as another
        process on the same Redis would, and store it if asked (``expire`` > 0). Returns
        how many brokers it will be delivered to, on the next turn of the clock; raises
        :class:`~ws4tx.server.broker.NotStored` if stores are refused (see
        :meth:`refuseStores`)."""
        receivers = 0
        for broker in self.brokers:
            if broker.connected and channel in broker.subscribed:
                receivers += 1
                self._pending.append((broker, broker._connection, channel, payload))
        if receivers and self._delivery is None:
            self._delivery = self.clock.callLater(0, self._deliver)
        if expire > 0:
            if self._store_refusal is not None:
                raise NotStored(receivers, self._store_refusal)
            self._store[channel] = (payload, self.clock.seconds() + expire)
        return receivers

    def publishWithHistory(self, channel: str, payload: bytes,
                           retention: _history.Retention,
                           expire: int = 0) -> _history.Published:
        """What ``ws4tx/lua/publish.lua`` does on Redis: the next offset of ``channel``
        (a new epoch if it has none, or it expired), its stream trimmed to
        ``retention.size``, both kept ``retention.ttl`` seconds, the replay store, and the
        publish of the payload behind its position. With stores refused
        (:meth:`refuseStores`) nothing is done: ``RuntimeError`` with the refusal, as
        Redis refuses the whole script."""
        if self._store_refusal is not None:
            raise RuntimeError(self._store_refusal)
        stream = self._stream(channel, create=True)
        assert stream is not None
        now = self.clock.seconds()
        stream.offset += 1
        stream.entries.append(_history.Publication(stream.offset, payload))
        while len(stream.entries) > retention.size:
            stream.entries.popleft()
        stream.meta_deadline = stream.stream_deadline = now + retention.ttl
        position = _history.Position(stream.offset, stream.epoch)
        receivers = self.publish(channel, _history.with_position(payload, position), expire)
        if expire > 0:
            self._store[channel] = (payload, now + expire)
        return _history.Published(receivers, position)

    def history(self, channel: str, retention: _history.Retention,
                since: Optional[int] = None, limit: Optional[int] = None) -> _history.History:
        """What ``ws4tx/lua/history.lua`` reads on Redis of ``channel`` (and makes: a
        channel without an epoch gets one)."""
        _history.check_range(since, limit)  # the same checks
        stream = self._stream(channel, create=True)
        assert stream is not None
        stream.meta_deadline = self.clock.seconds() + retention.ttl
        entries = list(stream.entries)
        if since is not None:
            entries = [e for e in entries if e.offset > since][:limit]
        elif limit:
            entries = entries[-limit:]
        return _history.History(stream.epoch, stream.offset, entries)

    def _stream(self, channel: str, create: bool = False) -> Optional[_Stream]:
        now = self.clock.seconds()
        stream = self._streams.get(channel)
        if stream is not None and now >= stream.meta_deadline:
            stream = None
        if stream is not None and now >= stream.stream_deadline:
            stream.entries.clear()
        if stream is None and create:
            stream = self._streams[channel] = _Stream(_history.new_epoch(),
                                                    meta_deadline=now, stream_deadline=now)
        return stream

    def flush(self) -> None:
        """Forget everything stored, as FLUSHDB (or a Redis restarted without
        persistence) does: histories start again at offset 1 in a new epoch."""
        self._store.clear()
        self._streams.clear()

    def _deliver(self) -> None:
        """Deliver what was published before this turn, in order. A broker that lost its
        connection since loses the message, as a Redis subscriber does; what listeners
        publish meanwhile waits for the next turn."""
        self._delivery = None
        batch, self._pending = self._pending, deque()
        for broker, connection, channel, payload in batch:
            if isinstance(channel, defer.Deferred):
                if broker.connected and broker._connection == connection:
                    channel.callback(None)
                else:
                    channel.errback(BrokerUnavailable("lost the connection"))
            elif broker.connected and broker._connection == connection:
                assert broker.listener is not None
                broker.listener.messageReceived(channel, payload)

    def barrier(self, broker: MemoryBroker) -> defer.Deferred[None]:
        """Fires once what was published before it reached ``broker``'s listener."""
        d: defer.Deferred[None] = defer.Deferred()
        self._pending.append((broker, broker._connection, d, None))
        if self._delivery is None:
            self._delivery = self.clock.callLater(0, self._deliver)
        return d

    @property
    def undelivered(self) -> int:
        """How many deliveries wait for the next turn of the clock."""
        return len(self._pending)

    def refuseStores(self, reason: Optional[str] = OOM) -> None:
        """Refuse every store from now on, as a Redis out of memory refuses SET: a publish
        with ``expire`` is delivered but fails with :class:`~ws4tx.server.broker.NotStored`.
        ``refuseStores(None)`` accepts stores again."""
        self._store_refusal = reason

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
    """An :class:`~ws4tx.server.broker.IBroker` in memory, one node on a :class:`MemoryBus`.

    ``disconnect()`` and ``reconnect()`` simulate an outage: while down, subscribe, publish
    and fetch fail with :class:`~ws4tx.server.broker.BrokerUnavailable`, unsubscribe succeeds (there
    is nothing to unsubscribe), and messages are lost, as with Redis pub/sub; on
    reconnection the listener's wanted channels are subscribed again. ``refuse(pattern)``
    refuses channels as a Redis ACL does. Messages are delivered on a later turn of the
    bus's clock (see the module's docstring).
    """

    def __init__(self, bus: Optional[MemoryBus] = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.listener: Optional[IBrokerListener] = None
        self.subscribed: set[str] = set()
        self.connected = False
        #: Channel patterns (fnmatch/Redis glob style) this broker may not subscribe.
        self.refused: list[str] = []
        #: Every publish made through this broker: (channel, payload, expire).
        self.published: list[tuple[str, bytes, int]] = []
        # Counts connections: a message published before a reconnection is lost.
        self._connection = 0

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
        """Simulate a new connection: resubscribe whatever the listener wants, reporting
        the refused channels to it (``subscriptionRefused``) before ``brokerConnected``."""
        assert self.listener is not None
        self.connected = True
        self._connection += 1
        wanted = set(self.listener.wantedChannels())
        refused = sorted(c for c in wanted if self._isRefused(c))
        self.subscribed = wanted.difference(refused)
        for channel in refused:
            self.listener.subscriptionRefused(channel, NOPERM)
        self.listener.brokerConnected()

    def refuse(self, pattern: str) -> None:
        """Refuse to subscribe the channels matching ``pattern`` (``*``, ``?``, ``[...]``,
        as Redis ACL channel patterns) from now on: ``subscribe`` fails with
        :class:`~ws4tx.server.broker.SubscriptionRefused`. Like Redis narrowing a user's ACL, a
        connected broker subscribed to such a channel is disconnected, then reconnects,
        and its listener is told which wanted channels were refused."""
        self.refused.append(pattern)
        if self.connected and any(self._isRefused(c) for c in self.subscribed):
            self.disconnect()
            self.reconnect()

    def _isRefused(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, p) for p in self.refused)

    def _check(self) -> None:
        if not self.connected:
            raise BrokerUnavailable("the memory broker is disconnected")

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        def subscribe() -> None:
            if self._isRefused(channel):
                raise SubscriptionRefused(channel, NOPERM)
            self.subscribed.add(channel)

        return self._run(subscribe)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        self.subscribed.discard(channel)
        return defer.succeed(None)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        def publish() -> int:
            self.published.append((channel, payload, expire))
            return self.bus.publish(channel, payload, expire)

        return self._run(publish)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._run(self.bus.get, key)

    def fetchMany(self, keys: Sequence[str]) -> list[defer.Deferred[Optional[bytes]]]:
        return [self.fetch(key) for key in keys]

    def barrier(self) -> defer.Deferred[None]:
        try:
            self._check()
        except BrokerUnavailable:
            return defer.fail()
        return self.bus.barrier(self)

    def publishWithHistory(self, channel: str, payload: bytes,
                           retention: _history.Retention,
                           expire: int = 0) -> defer.Deferred[_history.Published]:
        def publish() -> _history.Published:
            self.published.append((channel, payload, expire))
            return self.bus.publishWithHistory(channel, payload, retention, expire)

        return self._run(publish)

    def history(self, channel: str, retention: _history.Retention,
                since: Optional[int] = None,
                limit: Optional[int] = None) -> defer.Deferred[_history.History]:
        return self._run(self.bus.history, channel, retention, since, limit)

    def histories(self, reads: Sequence[_history.HistoryRead]
                  ) -> list[defer.Deferred[_history.History]]:
        return [self.history(*read) for read in reads]

    def updatePresence(self, keys: PresenceKeys, ttl: float,
                       changes: list[tuple[str, str, Optional[str], str]],
                       audiences: Optional[dict[str, tuple[str, ...]]] = None,
                       ) -> defer.Deferred[list[str]]:
        """Keep the presence in :attr:`MemoryBus.presence` (connection id -> entry JSON,
        per connections key, and per audience head + ``:c``), without expiry."""
        def update() -> list[str]:
            present = self.bus.presence.setdefault(keys.connections, {})
            for op, conn, _, info in changes:
                if op == _presence.LEAVE:
                    present.pop(conn, None)
                    for others in self.bus.presence.values():
                        others.pop(conn, None)
                    continue
                if info or conn not in present:
                    present[conn] = info
                for audience in (audiences or {}).get(conn, ()):
                    self.bus.presence.setdefault(keys.audience(audience) + ":c", {})[conn] = \
                        present[conn]
            return []

        return self._run(update)

    def readPresence(self, keys: PresenceKeys, what: str,
                     audience: Optional[str] = None) -> defer.Deferred[Any]:
        """Read what :meth:`updatePresence` kept, as Redis's script answers."""
        def read() -> Any:
            key = keys.connections if audience is None else keys.audience(audience) + ":c"
            present = self.bus.presence.get(key, {})
            if what == "stats":
                users = {json.loads(info).get("user") for info in present.values() if info}
                return [len(present), len(users - {None})]
            return [info for info in present.values() if info]

        return self._run(read)

    def _run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        try:
            self._check()
            return defer.succeed(f(*args))
        except Exception:  # noqa: BLE001 - any error is the Deferred's failure
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
