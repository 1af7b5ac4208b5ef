"""Redis Cluster for the Twisted side: sharded pub/sub on txredisapi (``redis+cluster://``).

txredisapi speaks neither Redis Cluster nor sharded pub/sub: its subscriber knows
``message`` and ``pmessage`` pushes only, and an ``smessage`` would land in its command
reply queue and shift every later reply. This module adds what a Cluster needs, without
leaving txredisapi:

- :class:`ShardSubscriberProtocol`, a ``SubscriberProtocol`` that sends ``SSUBSCRIBE`` /
  ``SUNSUBSCRIBE`` (one channel per command, as ws4tx subscribes), hands each ``smessage``
  to :meth:`~ShardSubscriberProtocol.shardMessageReceived`, and reports a ``sunsubscribe``
  that nobody asked for (Redis sends one to every subscriber of a slot the node lost to a
  migration or a failover) to :meth:`~ShardSubscriberProtocol.shardChannelLost`;
- :class:`SlotMap`, which node serves which hash slot (from ``CLUSTER SLOTS``), and
  :func:`moved`, where a ``-MOVED`` error says a slot went;
- :class:`ClusterBroker`, the broker: one :class:`~ws4tx.server.redis_broker.RedisBroker`
  per primary in sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``), each channel under its
  cluster name (:func:`ws4tx.naming.cluster_channel`: a hash-tag partition in front) on
  the primary of its slot, following slot migrations, ``MOVED`` and new primaries (see
  docs/scaling.md for what it guarantees and what it does not do yet).
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import txredisapi
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx.history import History, HistoryRead, Published, Retention, check_range
from ws4tx.naming import (
    PresenceKeys,
    channel_of_cluster_channel,
    cluster_channel,
    cluster_history_keys,
    cluster_name,
)
from ws4tx.redis_address import RedisAddress
from ws4tx.server._attempts import AttemptLog
from ws4tx.server._composite import Composite
from ws4tx.server._log import observer
from ws4tx.server.broker import (
    BrokerUnavailable,
    IBroker,
    IBrokerListener,
    IShardListener,
    SubscriptionRefused,
    batched,
)
from ws4tx.server.redis_broker import RedisBroker, _counted, _Prepared, _Reads, _surplus
from ws4tx.sharding import CLUSTER_SLOTS, key_slot

#: (host, port) of a cluster node.
Node = tuple[str, int]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


#: Channels per SSUBSCRIBE at most (as Centrifugo batches them).
SUBSCRIBE_BATCH = 512


class ShardSubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """A txredisapi subscriber that also speaks sharded pub/sub (Redis >= 7).

    One ``SSUBSCRIBE`` may name many channels of one slot (:meth:`ssubscribeMany`): Redis
    answers with one confirmation per channel, and txredisapi would give all but the first
    to the commands sent after it; this protocol passes the first to the command and drops
    the others (an error answers the whole command once).

    A ``sunsubscribe`` answers a :meth:`sunsubscribe` of that channel when one is in
    flight; any other is the node's own (the slot moved) and is never taken as the reply of
    whatever command happens to be waiting, which would shift every later reply on the
    connection by one."""

    _sub_unsub_reponses = txredisapi.SubscriberProtocol._sub_unsub_reponses | {
        "ssubscribe", "sunsubscribe", b"ssubscribe", b"sunsubscribe"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per SSUBSCRIBE in flight, in order: its confirmations beyond the first.
        self._extra: deque[int] = deque()
        #: Confirmations of the current SSUBSCRIBE still to drop.
        self._dropping = 0
        #: The channels of the SUNSUBSCRIBEs in flight (a channel may be twice).
        self._unsubscribing: Counter[str] = Counter()

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
            if kind in ("sunsubscribe", b"sunsubscribe"):
                channel = _text(reply[-2])
                if not self._unsubscribing[channel]:
                    self.shardChannelLost(reply[-2])
                    return
                self._unsubscribing[channel] -= 1
                if not self._unsubscribing[channel]:
                    del self._unsubscribing[channel]
            if kind in ("ssubscribe", b"ssubscribe") and _surplus(self):
                return
        super().replyReceived(reply)

    def ssubscribe(self, channel: str) -> defer.Deferred[Any]:
        """``SSUBSCRIBE channel``: fails with ``txredisapi.ResponseError`` (``MOVED ...``)
        when this node does not serve the channel's slot."""
        return self.ssubscribeMany([channel])

    def ssubscribeMany(self, channels: Sequence[str]) -> defer.Deferred[Any]:
        """One ``SSUBSCRIBE`` of ``channels``, all of one slot (else Redis answers
        ``CROSSSLOT``); fires once Redis confirmed the first (the others follow it on
        the connection), or fails as a whole."""
        return _counted(self, "SSUBSCRIBE", channels)

    def sunsubscribe(self, channel: str) -> defer.Deferred[Any]:
        """``SUNSUBSCRIBE channel``."""
        self._unsubscribing[channel] += 1
        d: defer.Deferred[Any] = self.execute_command("SUNSUBSCRIBE", channel)

        def failed(failure: Failure) -> Failure:
            # answered by an error (or never sent): no confirmation of it will come
            self._unsubscribing[channel] -= 1
            if not self._unsubscribing[channel]:
                del self._unsubscribing[channel]
            return failure

        return d.addErrback(failed)


@dataclass(frozen=True)
class SlotMap:
    """Which node serves each hash slot: ``ranges`` of (first slot, last slot, node)."""

    ranges: tuple[tuple[int, int, Node], ...]

    @classmethod
    def from_cluster_slots(cls, reply: Sequence[Any], asked: Optional[Node] = None) -> SlotMap:
        """From the reply of ``CLUSTER SLOTS`` (each entry: first, last, then the master's
        host, port and id, then its replicas') given by node ``asked``.

        An empty or null host is the node that was asked (a node names itself so until
        another node told it its address: a cluster of one); a range whose master has no
        host known (``?``, or empty and ``asked`` unknown) or no port is left out, as if
        no node served it: there is nowhere to connect for it."""
        ranges = []
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = "" if master[0] is None else _text(master[0])
            if not host and asked is not None:
                host = asked[0]
            try:
                port = int(master[1])
            except (TypeError, ValueError):
                port = 0
            if host and host != "?" and 0 < port < 65536:
                ranges.append((first, last, (host, port)))
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


class ClusterDown(Exception):
    """The cluster says it is down (``cluster_state:fail``): it refuses every command on
    a slot until its slots are all served again."""


def cluster_state(info: str | bytes) -> str:
    """The ``cluster_state`` of a node's ``CLUSTER INFO`` (``ok``, ``fail``; ``?`` when
    it has none)."""
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get("cluster_state", "").strip() or "?"


def cluster_down(info: str | bytes, slots: SlotMap) -> Optional[str]:
    """Why the cluster is down, from a node's ``CLUSTER INFO`` and its slot map; None
    when its ``cluster_state`` is ``ok``."""
    state = cluster_state(info)
    if state == "ok":
        return None
    served = sum(last - first + 1 for first, last, _ in slots.ranges)
    if served < CLUSTER_SLOTS:
        fix = (f"only {served} of {CLUSTER_SLOTS} slots are served; give the others to a "
               "primary (redis-cli --cluster fix)")
    else:
        fix = ("a primary is unreachable and no replica has taken over its slots; start it "
               "again")
    return f"cluster down (cluster_state:{state}): {fix}"


@dataclass(frozen=True)
class ClusterView:
    """What one node says of the cluster: its slot map and ``cluster_state``."""

    node: Node
    slots: SlotMap
    state: str
    #: Why the cluster is down, as :func:`cluster_down` says; None when ``state`` is ok.
    down: Optional[str]

    @classmethod
    def of(cls, node: Node, slots_reply: Sequence[Any], info: str | bytes) -> ClusterView:
        """From ``node``'s replies to ``CLUSTER SLOTS`` and ``CLUSTER INFO``."""
        slots = SlotMap.from_cluster_slots(slots_reply, node)
        return cls(node, slots, cluster_state(info), cluster_down(info, slots))


def choose_view(views: Sequence[ClusterView]) -> tuple[ClusterView, list[ClusterView]]:
    """The view to follow of those given (at least one), in the order the nodes were
    asked: the first that says the cluster is ok, else the first (the cluster is down);
    and the views that say it is down while the one followed says it is ok (a node cut
    off from the others, restarted and not back yet, or not in this cluster)."""
    chosen = next((view for view in views if view.down is None), views[0])
    dissent = [view for view in views if chosen.down is None and view.down is not None]
    return chosen, dissent


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


def _tagOf(slots: SlotMap, node: Node) -> Optional[str]:
    """A hash tag whose slot ``node`` serves, or None when it serves none."""
    return next((f"p{i}" for i in range(100_000) if slots.node_for(f"p{i}") == node), None)


# The broker

class _NodeSubscriber(_Prepared, _Reads, ShardSubscriberProtocol):
    """A cluster node broker's subscriber: what RedisBroker subscribes with SUBSCRIBE it
    subscribes with SSUBSCRIBE, the channels asked for in one reactor turn grouped by
    slot (one command per slot and :data:`SUBSCRIBE_BATCH` channels: a resubscription
    after a reconnection takes a command per partition, not per channel), and its
    smessages go where messages go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches: dict[int, list[tuple[str, defer.Deferred[Any]]]] = {}
        self._flushing: Optional[Any] = None

    def subscribe(self, channel: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._batches.setdefault(key_slot(channel), []).append((channel, d))
        if self._flushing is None:
            self._flushing = self.broker.clock.callLater(0, self._flush)
        return d

    #: What RedisBroker's live subscribe asks for: the same turn's batch.
    subscribeSoon = subscribe

    def _flush(self) -> None:
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        batches, self._batches = self._batches, {}
        for items in batches.values():
            for start in range(0, len(items), SUBSCRIBE_BATCH):
                chunk = items[start:start + SUBSCRIBE_BATCH]
                self.ssubscribeMany([channel for channel, _ in chunk]).addBoth(
                    _settle, [d for _, d in chunk])

    def unsubscribe(self, channel: str) -> defer.Deferred[Any]:
        """SUNSUBSCRIBE ``channel`` after the SSUBSCRIBEs asked for before it (a channel
        joined and left in one turn must not end up subscribed with nobody on it)."""
        if self._batches:
            self._flush()
        return self.sunsubscribe(channel)

    #: What RedisBroker's leave asks for.
    unsubscribeSoon = unsubscribe

    def shardMessageReceived(self, channel: bytes, message: bytes) -> None:
        self.broker._messageReceived(channel, message)

    def shardChannelLost(self, channel: bytes) -> None:
        broker = self.broker
        assert isinstance(broker, _NodeBroker)
        if _text(channel) == broker._probe_channel:
            broker._probeSlotLost(self)
            return
        broker.cluster._channelMoved(_text(channel))


def _settle(result: Any, waiting: list[defer.Deferred[Any]]) -> None:
    """Fire each of ``waiting`` with ``result`` (a reply or a Failure)."""
    for d in waiting:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class _NodeBroker(RedisBroker):
    """A RedisBroker on one primary of a cluster, in sharded pub/sub. It names a
    channel's history keys and the name its publish script publishes on as the Django
    side does on a cluster (:func:`~ws4tx.naming.cluster_history_keys`,
    :func:`~ws4tx.naming.cluster_channel`: one slot for all of them)."""

    subscriber_protocol = _NodeSubscriber
    publish_command = "SPUBLISH"

    def __init__(self, cluster: ClusterBroker, node: Node, probe_tag: str) -> None:
        seed = cluster.address
        super().__init__(
            RedisAddress(host=node[0], port=node[1], username=seed.username,
                         password=seed.password),
            cluster.reactor, clock=cluster.clock, ping_interval=cluster.ping_interval,
            timeout=cluster.timeout, prefix=cluster.prefix)
        self.cluster = cluster
        self.node = node
        # on a slot of this node, or SSUBSCRIBE would answer MOVED
        self._probe_channel = f"__ws4tx_probe__:{{{probe_tag}}}:{uuid.uuid4().hex}"

    def _retriesRefusal(self, reason: str) -> bool:
        # a client channel's MOVED goes to the cluster, which follows the slot
        return moved(reason) is None and super()._retriesRefusal(reason)

    def _probeSlotLost(self, proto: Any) -> None:
        """The node unsubscribed the probe channel by itself: its slot left this node (a
        migration). Once the slot map is read again, the probe goes on a slot the node
        serves now; a refusal then is handled as at connection."""

        def again(_: object) -> None:
            sub = self._sub
            if sub is None or sub is not proto or self._stopping:
                return
            old = self._probe_channel
            self._probeMoved()
            if self._probe_channel == old:
                return  # the node serves no slot any more: the cluster leaves it
            subscribed: defer.Deferred[Any] = sub.subscribe(self._probe_channel)

            def refused(failure: Failure) -> None:
                if failure.check(txredisapi.ResponseError):
                    self._probeRefused(Failure(SubscriptionRefused(
                        self._probe_channel, failure.getErrorMessage())))
                    self._scheduleRefusedRetry()

            def done(_: object) -> None:
                self._probeSubscribed(_)
                self.log.info("Redis Cluster node {node}: the delivery probe's slot moved "
                              "away; probing on {channel} now",
                              node=f"{self.node[0]}:{self.node[1]}",
                              channel=self._probe_channel)
                self._probe()

            subscribed.addCallbacks(done, refused)

        self.cluster.refresh().addCallback(again)

    def _probeMoved(self) -> None:
        """The probe's slot left this node: the probe goes on a slot it serves now."""
        slots = self.cluster.slots
        tag = _tagOf(slots, self.node) if slots is not None else None
        if tag is not None:
            self._probe_channel = f"__ws4tx_probe__:{{{tag}}}:{uuid.uuid4().hex}"


    def historyKeys(self, channel: str) -> tuple[str, str]:
        return cluster_history_keys(self.prefix, channel)

    def historyChannel(self, channel: str) -> str:
        return cluster_channel(channel)


@implementer(IBroker)
class ClusterBroker(Composite[Node, _NodeBroker]):
    """An :class:`~ws4tx.server.broker.IBroker` on a Redis Cluster (``redis+cluster://``):
    one :class:`_NodeBroker` (subscriber and command connection, in sharded pub/sub) per
    primary, each channel on the primary of its slot (the bookkeeping of the members is
    :class:`~ws4tx.server._composite.Composite`'s, shared with the sharded broker). The
    slot map is read at start and again at every ping interval, after a ``MOVED`` and when
    a node unsubscribes a channel whose slot moved: channels then follow their slot, and
    primaries that appear (a failover) or vanish get or lose their broker. A channel's
    history keys are on its partition's slot too
    (:func:`~ws4tx.naming.cluster_history_keys`)."""

    log = Logger(observer=observer)

    def __init__(self, address: RedisAddress, reactor: Any = None,
                 clock: Optional[IReactorTime] = None, ping_interval: float = 5.0,
                 timeout: float = 5.0, prefix: Optional[str] = "ws4tx") -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        super().__init__()
        #: The primaries' brokers, by (host, port): the composite's members.
        self.nodes = self.members
        self.address = address
        #: The channel prefix (history keys are found from it).
        self.prefix = prefix
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.ping_interval = ping_interval
        self.timeout = timeout
        self.slots: Optional[SlotMap] = None
        self._refresher: Optional[LoopingCall] = None
        self._refreshing: Optional[defer.Deferred[None]] = None
        #: Who asked for the slot map while a read was under way: they get the next one.
        self._after_read: list[defer.Deferred[None]] = []
        #: The connection asking for the slot map, while it is open.
        self._asking: Optional[Any] = None
        self._stopping = False
        self._ever_connected = False
        #: Why the cluster refuses commands (its ``cluster_state`` is not ``ok``), or None.
        self.down: Optional[str] = None
        #: The nodes said to see the cluster down while another sees it ok.
        self._dissenting: set[Node] = set()
        #: The log of the attempts to read the slot map.
        self.slot_attempts = AttemptLog(self.log, "the Redis Cluster's slot map at "
                                        f"{address.safe_url}", self.clock)

    # state

    @property
    def delivering(self) -> bool:
        # A cluster that says it is down refuses every sharded command, probes or not.
        return self.down is None and super().delivering

    def waiting(self, channel: str) -> bool:
        """Whether ``channel`` is not subscribed now (its primary unknown or down, or it
        refused the channel for now): as one shard among others, the sharded broker asks
        this of its member (:meth:`~ws4tx.server._composite.Composite.isInterrupted`)."""
        return self.isInterrupted(channel)

    def nodeFor(self, channel: str) -> Optional[Node]:
        """The primary that serves ``channel`` (its :func:`~ws4tx.naming.cluster_channel`
        name), as last known."""
        return self._nodeOfKey(self.clusterName(channel))

    def clusterName(self, channel: str) -> str:
        """The name of ``channel`` on the cluster (:func:`~ws4tx.naming.cluster_name`: the
        control and reply channels in the node registry's slot)."""
        return cluster_name(self.prefix, channel)

    # the composite's placement

    def memberOf(self, channel: str) -> Optional[Node]:
        return self.nodeFor(channel)

    def nameOf(self, channel: str) -> str:
        return self.clusterName(channel)

    def channelOfName(self, name: str) -> str:
        return channel_of_cluster_channel(name)

    def describe(self, key: Node) -> str:
        return f"Cluster primary {key[0]}:{key[1]}"

    def _everyMemberUp(self) -> bool:
        return self.connected

    def _refused(self, key: Node, name: str, reason: str) -> None:
        if moved(reason) is not None:
            self._channelMoved(name)
            return
        super()._refused(key, name, reason)

    def _memberWentAway(self, key: Node) -> None:
        self.refresh()  # a failover may have moved its slots to a replica

    def _nodeOfKey(self, key: str) -> Optional[Node]:
        return self.slots.node_for(key) if self.slots is not None else None

    # lifecycle

    def start(self, listener: IBrokerListener) -> None:
        self._listener = listener
        self.slot_attempts.starting()
        self._refresher = LoopingCall(self._readMap)
        self._refresher.clock = self.clock
        self._refresher.start(max(self.ping_interval, 1.0), now=True)
        self.log.info("connecting to the Redis Cluster at {url}", url=self.address.safe_url)

    def stop(self) -> defer.Deferred[None]:
        self._stopping = True
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        ds = [self.stopMembers()]
        if self._asking is not None:
            self._asking.disconnect()
        if self._refreshing is not None:
            ds.append(self._refreshing)
        return defer.gatherResults(ds, consumeErrors=True).addBoth(lambda _: None)

    # the slot map

    def refresh(self) -> defer.Deferred[None]:
        """Read the slot map again and follow what changed; fires once a read that began
        after this call is done. Asked while a read is under way (one at a time), another
        follows it: that one may have had its answer before what made the caller ask (a
        node's own ``sunsubscribe``, a ``MOVED``), and would leave the channel where it
        was until the next periodic read."""
        if self._refreshing is None:
            return self._readMap()
        waiter: defer.Deferred[None] = defer.Deferred()
        self._after_read.append(waiter)
        return waiter

    def _readMap(self) -> defer.Deferred[None]:
        """The read of the slot map under way, or a new one (the periodic read)."""
        if self._refreshing is None:
            self._refreshing = defer.Deferred.fromCoroutine(self._refresh())
            self._refreshing.addErrback(self._refreshFailed).addBoth(self._refreshed)
        return self._refreshing

    def _refreshed(self, _: object) -> None:
        self._refreshing = None
        waiters, self._after_read = self._after_read, []
        if not waiters:
            return

        def tell(_: object) -> None:
            for waiter in waiters:
                waiter.callback(None)

        if self._stopping:
            tell(None)
        else:
            self._readMap().addBoth(tell)

    def _refreshFailed(self, failure: Failure) -> None:
        self.slot_attempts.report(failure, max(self.ping_interval, 1.0))

    @property
    def problem(self) -> Optional[str]:
        """Why the cluster cannot be reached now (its slot map, or a primary's
        connection), or None."""
        if self.slot_attempts.problem is not None:
            return f"slot map: {self.slot_attempts.problem}"
        for node, broker in self.nodes.items():
            if broker.problem is not None:
                return f"{node[0]}:{node[1]} {broker.problem}"
        return None

    async def _refresh(self) -> None:
        seeds = list(self.nodes) + [n for n in self.address.cluster_nodes
                                    if n not in self.nodes]
        last: Optional[BaseException] = None
        views: list[ClusterView] = []
        for host, port in seeds:
            try:
                reply, info = await self._clusterSlots(host, port)
            except Exception as e:  # noqa: BLE001 - any node that answers will do
                last = e
                continue
            views.append(ClusterView.of((host, port), reply, info))
            if views[-1].down is None:
                # A node cut off from the others (or just restarted) says down alone:
                # the first that says ok is followed.
                break
        if not views:
            raise ConnectionError(f"no cluster node answered: {last}")
        chosen, dissent = choose_view(views)
        self._dissented(chosen, dissent, views)
        self._apply(chosen.slots)
        self.down = chosen.down
        if self.down is not None:
            raise ClusterDown(self.down)
        self.slot_attempts.succeeded()

    def _dissented(self, chosen: ClusterView, dissent: list[ClusterView],
                   views: list[ClusterView]) -> None:
        """One warning per node that says the cluster is down while another says it is
        ok (again only after it said ok)."""
        for view in views:
            if view.down is None:
                self._dissenting.discard(view.node)
        for view in dissent:
            if view.node in self._dissenting:
                continue
            self._dissenting.add(view.node)
            self.log.warn("Redis Cluster node {node} says cluster_state:{state} while {ok} "
                          "says ok: {node} is cut off from the other nodes or not in this "
                          "cluster; following {ok} (check it: redis-cli --cluster check "
                          "{node})", node=f"{view.node[0]}:{view.node[1]}", state=view.state,
                          ok=f"{chosen.node[0]}:{chosen.node[1]}")

    async def _clusterSlots(self, host: str, port: int) -> tuple[Any, Any]:
        """``CLUSTER SLOTS`` and ``CLUSTER INFO`` on a short-lived connection (bounded by
        the timeout; closed, and waited for, before this returns)."""
        factory = txredisapi.RedisFactory(
            None, None, 1, isLazy=False, charset=None, password=self.address.password,
            username=self.address.username, convertNumbers=False)
        factory.reconnect = False
        factory.noisy = False
        self._asking = factory
        factory.startConnecting(endpoints.HostnameEndpoint(self.reactor, host, port,
                                                           timeout=self.timeout))
        try:
            handler = await factory.deferred.addTimeout(self.timeout, self.clock)
            asked: defer.Deferred[Any] = handler.execute_command("CLUSTER", "SLOTS")
            slots = await asked.addTimeout(self.timeout, self.clock)
            asked = handler.execute_command("CLUSTER", "INFO")
            return slots, await asked.addTimeout(self.timeout, self.clock)
        finally:
            self._asking = None
            await factory.disconnect()

    def _apply(self, slots: SlotMap) -> None:
        if self._stopping:
            return
        old, self.slots = self.slots, slots
        if old == slots:
            return
        wanted = list(self._listener.wantedChannels()) if self._listener else []
        # the primaries lost and not back: a failover gives their slots to a replica
        lost = set(self._lost)
        for node in slots.nodes():
            if node not in self.nodes:
                tag = _tagOf(slots, node)
                assert tag is not None  # the node serves slots
                self._adopt(node, _NodeBroker(self, node, tag))
        for node in [n for n in self.nodes if n not in slots.nodes()]:
            self.log.warn("Redis Cluster node {node} serves no slots any more; leaving it",
                          node=f"{node[0]}:{node[1]}")
            self._drop(node).stop()
        if old is not None:
            self._follow(old, slots, wanted, lost)

    def _follow(self, old: SlotMap, slots: SlotMap, wanted: list[str],
                lost: set[Node]) -> None:
        """Subscribe the ``wanted`` channels whose slot moved on their new primary. A
        channel moved to a primary not connected yet (a replica promoted by a failover, a
        new primary) is interrupted until that primary connects, which then counts as a
        return (:meth:`_nodeConnected`: its channels only are resumed); one moved from a
        ``lost`` primary to a connected one is resumed once subscribed there."""
        interrupted: list[str] = []
        resumed: list[defer.Deferred[Any]] = []
        resuming: list[str] = []
        for channel in wanted:
            name = self.clusterName(channel)
            before, after = old.node_for(name), slots.node_for(name)
            if before == after or after not in self.nodes:
                continue
            if before in self.nodes:
                self.nodes[before].unsubscribe(name).addErrback(lambda _: None)
            d = self.nodes[after].subscribe(name).addErrback(self._subscribeFailed, name)
            if not self._up.get(after, False):
                self._lost.add(after)
                if before not in lost:
                    interrupted.append(channel)
            elif before in lost:
                resumed.append(d)
                resuming.append(channel)
        listener = self._listener
        if listener is None:
            return
        if interrupted:
            if IShardListener.providedBy(listener):
                listener.channelsInterrupted(interrupted)
            else:
                listener.brokerDisconnected()
        if resuming and IShardListener.providedBy(listener):
            defer.DeferredList(resumed).addCallback(
                lambda _: listener.channelsResumed(resuming, self.isInterrupted))

    def _channelMoved(self, channel: str) -> None:
        """A node unsubscribed ``channel`` by itself or answered MOVED: its slot went
        elsewhere; read the map, which resubscribes it there."""
        self.log.debug("Redis Cluster: the slot of {channel} moved; following it",
                      channel=channel)
        self.refresh()

    def _subscribeFailed(self, failure: Failure, channel: str) -> None:
        if isinstance(failure.value, SubscriptionRefused) and moved(failure.value.reason):
            self._channelMoved(channel)

    # IBroker commands

    def _node(self, channel: str) -> Optional[_NodeBroker]:
        return self._nodeBroker(self.nodeFor(channel))

    def _nodeBroker(self, node: Optional[Node]) -> Optional[_NodeBroker]:
        return self.nodes.get(node) if node is not None else None

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        broker = self._node(channel)
        if broker is None:
            return defer.fail(BrokerUnavailable("the cluster's slot map is not known yet"))
        self._interruptIfDown(not broker.connected, [channel])

        def refused(failure: Failure) -> Any:
            if isinstance(failure.value, SubscriptionRefused) and moved(failure.value.reason):
                self._channelMoved(channel)
                raise BrokerUnavailable(f"the slot of {channel} moved")
            return failure

        return broker.subscribe(self.clusterName(channel)).addErrback(refused)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        broker = self._node(channel)
        return broker.unsubscribe(self.clusterName(channel)) if broker else defer.succeed(None)

    def _onNode(self, key: str, run: Callable[[_NodeBroker], defer.Deferred[Any]]
                ) -> defer.Deferred[Any]:
        """``run`` on the node of ``key`` (a cluster name); after a MOVED, read the map
        and run it once more on the node it names."""
        broker = self._nodeBroker(self._nodeOfKey(key))
        if broker is None:
            return defer.fail(BrokerUnavailable("the cluster's slot map is not known yet"))

        def movedAway(failure: Failure) -> Any:
            if not (failure.check(txredisapi.ResponseError)
                    and moved(failure.getErrorMessage())):
                return failure

            def again(_: object) -> defer.Deferred[Any]:
                retry = self._nodeBroker(self._nodeOfKey(key))
                if retry is None:
                    raise BrokerUnavailable("the cluster's slot map has no node for it")
                return run(retry)

            return self.refresh().addCallback(again)

        return run(broker).addErrback(movedAway)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        """SPUBLISH on the channel's cluster name, and store it under that name (the
        same slot)."""
        name = self.clusterName(channel)
        return self._onNode(name, lambda b: b.publish(name, payload, expire))

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        """The message stored for channel ``key`` (under its cluster name)."""
        name = self.clusterName(key)
        return self._onNode(name, lambda b: b.fetch(name))

    def fetchMany(self, keys: Sequence[str]) -> list[defer.Deferred[Optional[bytes]]]:
        """One ``MGET`` per slot of the keys' cluster names (the keys of one command must
        share a slot), those of one node sent together: one round trip per node."""
        return batched(keys, self._mgetOnSlot, group=lambda key: key_slot(
            self.clusterName(key)))

    def _mgetOnSlot(self, keys: list[str]) -> defer.Deferred[list[Optional[bytes]]]:
        names = [self.clusterName(key) for key in keys]
        return self._onNode(names[0], lambda b: b.mget(names))

    def publishWithHistory(self, channel: str, payload: bytes, retention: Retention,
                           expire: int = 0) -> defer.Deferred[Published]:
        """The publish script on the primary of the channel's partition, which names its
        keys (:meth:`_NodeBroker.historyKeys`) and publishes with SPUBLISH."""
        return self._onNode(self.clusterName(channel), lambda b: b.publishWithHistory(
            channel, payload, retention, expire))

    def history(self, channel: str, retention: Retention, since: Optional[int] = None,
                limit: Optional[int] = None) -> defer.Deferred[History]:
        """The history script on the primary of the channel's partition, which names its
        keys (:meth:`_NodeBroker.historyKeys`)."""
        return self._onNode(self.clusterName(channel), lambda b: b.history(
            channel, retention, since, limit))

    def histories(self, reads: Sequence[HistoryRead]) -> list[defer.Deferred[History]]:
        """One call of the histories script per slot of the channels' history keys (a
        script's keys must share a slot), those of one node sent together: one round
        trip per node."""
        return batched(reads, self._readOnSlot, group=self._historySlot,
                       check=lambda read: check_range(read.since, read.limit))

    def _historySlot(self, read: HistoryRead) -> int:
        return key_slot(cluster_history_keys(self.prefix, read.channel)[0])

    def _readOnSlot(self, reads: list[HistoryRead]) -> defer.Deferred[list[History]]:
        stream, _ = cluster_history_keys(self.prefix, reads[0].channel)
        return self._onNode(stream, lambda b: b.readHistories(reads))

    def updatePresence(self, keys: PresenceKeys, ttl: float,
                       changes: list[tuple[str, str, Optional[str], str]],
                       audiences: Optional[dict[str, tuple[str, ...]]] = None,
                       ) -> defer.Deferred[list[str]]:
        # the presence keys share one hash tag: one slot, one node
        return self._onNode(keys.connections,
                            lambda b: b.updatePresence(keys, ttl, changes, audiences))

    def readPresence(self, keys: PresenceKeys, what: str,
                     audience: Optional[str] = None) -> defer.Deferred[Any]:
        return self._onNode(keys.connections, lambda b: b.readPresence(keys, what, audience))
