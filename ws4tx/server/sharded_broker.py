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

from typing import Any, Hashable, Optional, Sequence

from twisted.internet import defer
from zope.interface import implementer

from ws4tx import naming
from ws4tx.history import History, HistoryRead, Published, Retention
from ws4tx.naming import PresenceKeys
from ws4tx.server._composite import Composite
from ws4tx.server.broker import IBroker, IBrokerListener, routed


@implementer(IBroker)
class ShardedBroker(Composite[int, IBroker]):
    """An :class:`~ws4tx.server.broker.IBroker` over ``shards`` (one broker per Redis
    server, in the configured order), channels placed by :func:`ws4tx.naming.shard_of`
    with the channel ``prefix``. The bookkeeping of the members is
    :class:`~ws4tx.server._composite.Composite`'s, shared with the cluster broker."""

    def __init__(self, shards: Sequence[IBroker], prefix: Optional[str]) -> None:
        if len(shards) < 2:
            raise ValueError("sharding needs at least two brokers")
        super().__init__()
        self.shards = tuple(shards)
        self.prefix = prefix
        self.members = dict(enumerate(self.shards))
        self._up = dict.fromkeys(self.members, False)

    def shardOf(self, name: str) -> int:
        """The index of the server that holds channel or key ``name``."""
        return naming.shard_of(self.prefix, name, len(self.shards))

    def memberOf(self, channel: str) -> int:
        return self.shardOf(channel)

    def describe(self, key: int) -> str:
        return f"shard {key + 1} of {len(self.shards)}"

    def _of(self, name: str) -> IBroker:
        return self.shards[self.shardOf(name)]

    @property
    def problem(self) -> Optional[str]:
        """Why a server cannot be reached now (the first such server's reason), or None."""
        for number, shard in enumerate(self.shards):
            problem = getattr(shard, "problem", None)
            if problem is not None:
                return f"shard {number}, {problem}"
        return None

    # Lifecycle

    def start(self, listener: IBrokerListener) -> None:
        self._listener = listener
        for index, shard in enumerate(self.shards):
            self._adopt(index, shard)

    def stop(self) -> defer.Deferred[None]:
        return self.stopMembers()

    # IBroker commands, each on its channel's server

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        index = self.shardOf(channel)
        d = self.shards[index].subscribe(channel)
        self._interruptIfDown(not self._up[index], [channel])
        return d

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        return self._of(channel).unsubscribe(channel)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        return self._of(channel).publish(channel, payload, expire)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._of(key).fetch(key)

    def fetchMany(self, keys: Sequence[str]) -> list[defer.Deferred[Optional[bytes]]]:
        """Each server's keys in one batch of its own (one round trip: the servers'
        batches are sent together)."""
        return routed(keys, self.shardOf, self._fetchOn)

    def _fetchOn(self, index: Hashable, keys: list[str]
                 ) -> list[defer.Deferred[Optional[bytes]]]:
        assert isinstance(index, int)
        return self.shards[index].fetchMany(keys)

    def publishWithHistory(self, channel: str, payload: bytes, retention: Retention,
                           expire: int = 0) -> defer.Deferred[Published]:
        return self._of(channel).publishWithHistory(channel, payload, retention, expire)

    def history(self, channel: str, retention: Retention, since: Optional[int] = None,
                limit: Optional[int] = None) -> defer.Deferred[History]:
        # its history keys carry the channel's hash tag: they are on its server
        return self._of(channel).history(channel, retention, since, limit)

    def histories(self, reads: Sequence[HistoryRead]) -> list[defer.Deferred[History]]:
        """Each server's channels in one batch of its own, the servers' batches sent
        together."""
        return routed(reads, lambda read: self.shardOf(read.channel), self._readOn)

    def _readOn(self, index: Hashable, reads: list[HistoryRead]
                ) -> list[defer.Deferred[History]]:
        assert isinstance(index, int)
        return self.shards[index].histories(reads)

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
