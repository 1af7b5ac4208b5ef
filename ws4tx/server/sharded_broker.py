"""A broker over several independent Redis servers: each channel lives on one of them.

:class:`ShardedBroker` composes one :class:`~ws4tx.server.redis_broker.RedisBroker` per
server (its own subscriber and command connections, its own reconnection, deaf-connection
PING and delivery probe) behind the same :class:`~ws4tx.server.broker.IBroker`, so that the
router and the hub do not know there are several. Every channel and key goes to the server
:func:`ws4tx.naming.shard_of` names, the function the Django side uses too: a channel is
subscribed there, its messages are published and stored there, and so are its history
stream and its facility's presence.

Losing one server interrupts its channels only: the router is told which channels
(:meth:`~ws4tx.server.broker.IShardListener.channelsInterrupted`), so that only their
clients get ``ws4tx.interrupted``, and ``ws4tx.resumed`` once that server is back and
they are resubscribed (and no other of their channels is down); only that server's
channels are then read from their histories (the other servers' clients missed nothing
and are told nothing). The node counts as
delivering while any server is (its health check stays up: every node has the same
servers, so taking nodes out would interrupt every channel), and as connected while every
server is; each server's loss is logged and counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ws4tx import naming
from ws4tx.history import History, Published, Retention
from ws4tx.naming import PresenceKeys
from ws4tx.server._log import observer
from ws4tx.server.broker import IBroker, IBrokerListener, IShardListener


@implementer(IBrokerListener)
class _ShardListener:
    """What one server's broker reports to: the sharded broker, for that server."""

    def __init__(self, owner: ShardedBroker, index: int) -> None:
        self.owner = owner
        self.index = index

    def messageReceived(self, channel: str, payload: bytes) -> None:
        assert self.owner._listener is not None
        self.owner._listener.messageReceived(channel, payload)

    def wantedChannels(self) -> Iterable[str]:
        return self.owner._channelsOf(self.index)

    def subscriptionRefused(self, channel: str, reason: str) -> None:
        assert self.owner._listener is not None
        self.owner._listener.subscriptionRefused(channel, reason)

    def brokerConnected(self) -> None:
        self.owner._shardConnected(self.index)

    def brokerDisconnected(self) -> None:
        self.owner._shardLost(self.index)


@implementer(IBroker)
class ShardedBroker:
    """An :class:`~ws4tx.server.broker.IBroker` over ``shards`` (one broker per Redis
    server, in the configured order), channels placed by :func:`ws4tx.naming.shard_of`
    with the channel ``prefix``."""

    log = Logger(observer=observer)

    def __init__(self, shards: Sequence[IBroker], prefix: Optional[str]) -> None:
        if len(shards) < 2:
            raise ValueError("sharding needs at least two brokers")
        self.shards = tuple(shards)
        self.prefix = prefix
        self._listener: Optional[IBrokerListener] = None
        #: Per server: whether its subscriber is connected (as last reported).
        self._up = [False] * len(self.shards)
        #: The servers lost after they had been connected, not back yet.
        self._lost: set[int] = set()
        #: Counters of this broker itself (each server's are summed in :attr:`stats`).
        self._own_stats = {"shard_outages": 0}

    def shardOf(self, name: str) -> int:
        """The index of the server that holds channel or key ``name``."""
        return naming.shard_of(self.prefix, name, len(self.shards))

    def _of(self, name: str) -> IBroker:
        return self.shards[self.shardOf(name)]

    @property
    def stats(self) -> dict[str, int]:
        """The servers' counters summed (reconnections, deaf connections, messages not
        stored), and ``shard_outages``: how many times a server was lost."""
        total: Counter[str] = Counter(self._own_stats)
        for shard in self.shards:
            total.update(getattr(shard, "stats", {}))
        return dict(total)

    @property
    def connected(self) -> bool:
        """Whether every server's subscriber is connected. A client that joins while one
        is not is told ``ws4tx.interrupted`` (whichever its channels: the cautious side),
        and ``ws4tx.resumed`` once a server comes back and none of its channels' servers
        is down."""
        return all(shard.connected for shard in self.shards)

    @property
    def problem(self) -> Optional[str]:
        """Why a server cannot be reached now (the first such server's reason), or None."""
        for number, shard in enumerate(self.shards):
            problem = getattr(shard, "problem", None)
            if problem is not None:
                return f"shard {number}, {problem}"
        return None

    @property
    def delivering(self) -> bool:
        """Whether any server is known to deliver (see the module's docstring)."""
        return any(shard.delivering for shard in self.shards)

    def isInterrupted(self, channel: str) -> bool:
        """Whether the server of ``channel`` is not connected."""
        return not self._up[self.shardOf(channel)]

    # Lifecycle

    def start(self, listener: IBrokerListener) -> None:
        self._listener = listener
        for index, shard in enumerate(self.shards):
            shard.start(_ShardListener(self, index))

    def stop(self) -> defer.Deferred[None]:
        ds = [defer.maybeDeferred(shard.stop) for shard in self.shards]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # What the servers report

    def _channelsOf(self, index: int) -> list[str]:
        assert self._listener is not None
        return [c for c in self._listener.wantedChannels() if self.shardOf(c) == index]

    def _shardConnected(self, index: int) -> None:
        listener = self._listener
        assert listener is not None
        self._up[index] = True
        was_lost = index in self._lost
        self._lost.discard(index)
        if was_lost and IShardListener.providedBy(listener):
            # only this server's channels missed anything: only they are recovered
            listener.channelsResumed(self._channelsOf(index), self.isInterrupted)
        elif all(self._up):
            listener.brokerConnected()

    def _shardLost(self, index: int) -> None:
        listener = self._listener
        assert listener is not None
        self._up[index] = False
        self._lost.add(index)
        self._own_stats["shard_outages"] += 1
        channels = self._channelsOf(index)
        self.log.warn("lost Redis shard {index} of {n}: its {count} channels are "
                      "interrupted, the others deliver", index=index + 1,
                      n=len(self.shards), count=len(channels))
        if IShardListener.providedBy(listener):
            listener.channelsInterrupted(channels)
        else:
            listener.brokerDisconnected()

    # IBroker commands, each on its channel's server

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        index = self.shardOf(channel)
        d = self.shards[index].subscribe(channel)
        listener = self._listener
        if not self._up[index] and IShardListener.providedBy(listener):
            # Its clients are told, as they would be had the server gone down later.
            listener.channelsInterrupted([channel])
        return d

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        return self._of(channel).unsubscribe(channel)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        return self._of(channel).publish(channel, payload, expire)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._of(key).fetch(key)

    def barrier(self) -> defer.Deferred[None]:
        """Every server's barrier: fires once each has handed over what was published
        on it before; fails if any cannot tell."""
        ds = [shard.barrier() for shard in self.shards]
        return defer.gatherResults(ds, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure)

    def publishWithHistory(self, channel: str, payload: bytes, retention: Retention,
                           expire: int = 0) -> defer.Deferred[Published]:
        return self._of(channel).publishWithHistory(channel, payload, retention, expire)

    def history(self, channel: str, retention: Retention, since: Optional[int] = None,
                limit: Optional[int] = None) -> defer.Deferred[History]:
        # its history keys carry the channel's hash tag: they are on its server
        return self._of(channel).history(channel, retention, since, limit)

    def updatePresence(self, keys: PresenceKeys, ttl: float,
                       changes: list[tuple[str, str, Optional[str], str]],
                       audiences: Optional[dict[str, tuple[str, ...]]] = None,
                       ) -> defer.Deferred[list[str]]:
        # a facility's presence keys share one hash tag: they live on one server
        return self._of(keys.connections).updatePresence(keys, ttl, changes, audiences)

    def readPresence(self, keys: PresenceKeys, what: str,
                     audience: Optional[str] = None) -> defer.Deferred[Any]:
        return self._of(keys.connections).readPresence(keys, what, audience)


def several(brokers: Sequence[IBroker], prefix: Optional[str]) -> IBroker:
    """The one broker when there is one, else a :class:`ShardedBroker` over them."""
    if len(brokers) == 1:
        return brokers[0]
    return ShardedBroker(brokers, prefix)
