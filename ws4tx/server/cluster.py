"""Redis Cluster building blocks for the Twisted side: sharded pub/sub on txredisapi.

txredisapi speaks neither Redis Cluster nor sharded pub/sub: its subscriber knows
``message`` and ``pmessage`` pushes only, and an ``smessage`` would land in its command
reply queue and shift every later reply. This module adds what a Cluster broker needs,
without leaving txredisapi:

- :class:`ShardSubscriberProtocol`, a ``SubscriberProtocol`` that sends ``SSUBSCRIBE`` /
  ``SUNSUBSCRIBE`` (one channel per command, as ws4tx subscribes), hands each ``smessage``
  to :meth:`~ShardSubscriberProtocol.shardMessageReceived`, and reports a ``sunsubscribe``
  that nobody asked for (Redis sends one to every subscriber of a slot the node lost to a
  migration or a failover) to :meth:`~ShardSubscriberProtocol.shardChannelLost`, so that
  the channel can be subscribed again where its slot went;
- :class:`SlotMap`, which node serves which hash slot (from ``CLUSTER SLOTS``), and
  :func:`moved`, where a ``-MOVED`` error says a slot went.

Not wired to ``--redis`` yet (see docs/scaling.md): a Cluster broker also needs per-node
command connections that follow ``MOVED``, and channel and key names whose Lua scripts'
keys share one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import txredisapi
from twisted.internet import defer

from ws4tx.sharding import CLUSTER_SLOTS, key_slot

#: (host, port) of a cluster node.
Node = tuple[str, int]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ShardSubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """A txredisapi subscriber that also speaks sharded pub/sub (Redis >= 7)."""

    _sub_unsub_reponses = txredisapi.SubscriberProtocol._sub_unsub_reponses | {
        "ssubscribe", "sunsubscribe", b"ssubscribe", b"sunsubscribe"}

    def shardMessageReceived(self, channel: bytes, message: bytes) -> None:
        """A message arrived on the shard channel ``channel``. Override."""

    def shardChannelLost(self, channel: bytes) -> None:
        """The node unsubscribed ``channel`` by itself: its slot moved. Override."""

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[-3]
            if kind in ("smessage", b"smessage"):
                self.shardMessageReceived(reply[-2], reply[-1])
                return
            if kind in ("sunsubscribe", b"sunsubscribe") and not self.replyQueue.waiting:
                self.shardChannelLost(reply[-2])
                return
        super().replyReceived(reply)

    def ssubscribe(self, channel: str) -> defer.Deferred[Any]:
        """``SSUBSCRIBE channel``: fails with ``txredisapi.ResponseError`` (``MOVED ...``)
        when this node does not serve the channel's slot."""
        d: defer.Deferred[Any] = self.execute_command("SSUBSCRIBE", channel,
                                                      apply_timeout=False)
        return d

    def sunsubscribe(self, channel: str) -> defer.Deferred[Any]:
        """``SUNSUBSCRIBE channel``."""
        d: defer.Deferred[Any] = self.execute_command("SUNSUBSCRIBE", channel)
        return d


@dataclass(frozen=True)
class SlotMap:
    """Which node serves each hash slot: ``ranges`` of (first slot, last slot, node)."""

    ranges: tuple[tuple[int, int, Node], ...]

    @classmethod
    def from_cluster_slots(cls, reply: Sequence[Any]) -> SlotMap:
        """From the reply of ``CLUSTER SLOTS`` (each entry: first, last, then the master's
        host, port and id, then its replicas')."""
        ranges = []
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            ranges.append((first, last, (_text(master[0]), int(master[1]))))
        return cls(tuple(sorted(ranges)))

    def node_of_slot(self, slot: int) -> Optional[Node]:
        """The node serving ``slot``, or None when no node does (a broken cluster)."""
        for first, last, node in self.ranges:
            if first <= slot <= last:
                return node
        return None

    def node_for(self, name: str | bytes) -> Optional[Node]:
        """The node serving key or shard channel ``name``."""
        return self.node_of_slot(key_slot(name))

    def nodes(self) -> list[Node]:
        """Every node that serves slots, once each."""
        return list(dict.fromkeys(node for _, _, node in self.ranges))

    @property
    def complete(self) -> bool:
        """Whether every slot has a node."""
        covered = sum(last - first + 1 for first, last, _ in self.ranges)
        return covered == CLUSTER_SLOTS


def moved(error: str) -> Optional[tuple[int, Node]]:
    """(slot, node) from a ``MOVED <slot> <host>:<port>`` error, or None for another."""
    parts = error.split()
    if len(parts) != 3 or parts[0] != "MOVED":
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return int(parts[1]), (host.strip("[]"), int(port))
    except ValueError:
        return None
