"""What a broker over several Redis brokers keeps, whatever places its channels: the
sharded broker (:mod:`ws4tx.server.sharded_broker`, a fixed list of servers, placement by
jump hash) and the cluster broker (:mod:`ws4tx.server.cluster`, one broker per primary,
placement by the slot map) differ only in where a channel lives, what it is called there
and how their members come and go.

:class:`Composite` holds the members (each an :class:`~ws4tx.server.broker.IBroker`, by
key), listens to each through a :class:`_MemberListener`, and keeps what the node asks of
the whole: which members are up, which were lost and not back, the summed counters, the
``connected`` and ``delivering`` flags, which channels a member's loss interrupts and its
return resumes (its own only: the others missed nothing), and the barrier over all. A
subclass says where a channel lives (:meth:`Composite.memberOf`) and, when its members
know a channel by another name, which (:meth:`Composite.nameOf` and
:meth:`Composite.channelOfName`).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Generic, Hashable, Iterable, Optional, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ws4tx.server._log import observer
from ws4tx.server.broker import (
    BrokerUnavailable,
    IBroker,
    IBrokerListener,
    IReadListener,
    IShardListener,
)

#: A member's key (a shard's index, a primary's address) and the member broker's type.
K = TypeVar("K", bound=Hashable)
B = TypeVar("B", bound=IBroker)


@implementer(IShardListener, IReadListener)
class _MemberListener(Generic[K, B]):
    """What one member reports to: the composite, for that member."""

    def __init__(self, owner: Composite[K, B], key: K) -> None:
        self.owner = owner
        self.key = key

    def messageReceived(self, channel: str, payload: bytes) -> None:
        listener = self.owner._listener
        assert listener is not None
        listener.messageReceived(self.owner.channelOfName(channel), payload)

    def readStarted(self) -> None:
        listener = self.owner._listener
        if IReadListener.providedBy(listener):
            listener.readStarted()

    def readEnded(self) -> None:
        listener = self.owner._listener
        if IReadListener.providedBy(listener):
            listener.readEnded()

    def wantedChannels(self) -> Iterable[str]:
        owner = self.owner
        return [owner.nameOf(c) for c in owner._channelsOf(self.key)]

    def subscriptionRefused(self, channel: str, reason: str) -> None:
        self.owner._refused(self.key, channel, reason)

    def brokerConnected(self) -> None:
        self.owner._memberConnected(self.key)

    def channelsInterrupted(self, channels: Iterable[str]) -> None:
        """Channels of this member that Redis refused for now (its other channels are
        subscribed)."""
        listener = self.owner._listener
        if IShardListener.providedBy(listener):
            listener.channelsInterrupted([self.owner.channelOfName(c) for c in channels])

    def channelsResumed(self, channels: Iterable[str],
                        interrupted: Callable[[str], bool]) -> None:
        """Channels of this member refused for now before are subscribed now."""
        listener = self.owner._listener
        if IShardListener.providedBy(listener):
            listener.channelsResumed([self.owner.channelOfName(c) for c in channels],
                                     self.owner.isInterrupted)

    def brokerDisconnected(self) -> None:
        self.owner._memberLost(self.key)


class Composite(Generic[K, B]):
    """The bookkeeping of a broker over ``members`` (key -> broker; a subclass may add
    and remove members, see :meth:`_adopt` and :meth:`_drop`)."""

    log = Logger(observer=observer)

    def __init__(self) -> None:
        self.members: dict[K, B] = {}
        self._listener: Optional[IBrokerListener] = None
        #: Per member: whether its subscriber is connected (as last reported).
        self._up: dict[K, bool] = {}
        #: The members lost after they had been connected, not back yet.
        self._lost: set[K] = set()
        #: Counters of the composite itself (each member's are summed in :attr:`stats`).
        self._own_stats = {"shard_outages": 0}

    # Placement: the subclass's

    def memberOf(self, channel: str) -> Optional[K]:
        """The key of the member that holds ``channel`` (None: none known yet)."""
        raise NotImplementedError

    def nameOf(self, channel: str) -> str:
        """The name ``channel`` has on its member (itself, unless the subclass says)."""
        return channel

    def channelOfName(self, name: str) -> str:
        """The channel a member's ``name`` stands for (:meth:`nameOf` undone)."""
        return name

    def describe(self, key: K) -> str:
        """The member ``key`` in the log (``shard 2 of 3``, ``primary host:port``)."""
        return str(key)

    # Members

    def _adopt(self, key: K, broker: B) -> None:
        """Make ``broker`` the member ``key`` and start it (not up until it says so)."""
        self.members[key] = broker
        self._up[key] = False
        broker.start(_MemberListener(self, key))

    def _drop(self, key: K) -> B:
        """Forget the member ``key`` (the caller stops it)."""
        self._up.pop(key, None)
        self._lost.discard(key)
        return self.members.pop(key)

    # What the node asks of the whole

    @property
    def stats(self) -> dict[str, int]:
        """The members' counters summed (reconnections, deaf connections, messages not
        stored), and ``shard_outages``: how many times a member was lost."""
        total: Counter[str] = Counter(self._own_stats)
        for member in self.members.values():
            total.update(getattr(member, "stats", {}))
        return dict(total)

    @property
    def connected(self) -> bool:
        """Whether every member's subscriber is connected (and there is one). A client
        that joins while one is not is told ``ws4tx.interrupted`` (whichever its
        channels: the cautious side), and ``ws4tx.resumed`` once a member comes back and
        none of its channels' members is down."""
        return bool(self.members) and all(m.connected for m in self.members.values())

    @property
    def delivering(self) -> bool:
        """Whether any member is known to deliver: every node has the same members, so
        taking nodes out of a load balancer would interrupt every channel."""
        return any(m.delivering for m in self.members.values())

    def isInterrupted(self, channel: str) -> bool:
        """Whether ``channel`` misses its messages now: its member is unknown or not
        connected, or refused it for now (a cluster down, its slot migrating)."""
        key = self.memberOf(channel)
        if key is None or not self._up.get(key, False):
            return True
        waiting = getattr(self.members.get(key), "waiting", None)
        return waiting is not None and bool(waiting(self.nameOf(channel)))

    def barrier(self) -> defer.Deferred[None]:
        """Every member's barrier: fires once each has handed over what was published
        on it before; fails if any cannot tell."""
        if not self.members:
            return defer.fail(BrokerUnavailable("no Redis server known yet"))
        ds = [m.barrier() for m in self.members.values()]
        return defer.gatherResults(ds, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: f.value.subFailure)

    def stopMembers(self) -> defer.Deferred[None]:
        """Stop every member; fires once all are stopped."""
        ds = [defer.maybeDeferred(m.stop) for m in self.members.values()]
        return defer.gatherResults(ds, consumeErrors=True).addBoth(lambda _: None)

    # What the members report

    def _channelsOf(self, key: K) -> list[str]:
        """The wanted channels that live on the member ``key``."""
        assert self._listener is not None
        return [c for c in self._listener.wantedChannels() if self.memberOf(c) == key]

    def _refused(self, key: K, name: str, reason: str) -> None:
        """The member ``key`` refused to resubscribe ``name``."""
        assert self._listener is not None
        self._listener.subscriptionRefused(self.channelOfName(name), reason)

    def _everyMemberUp(self) -> bool:
        return all(self._up.values())

    def _memberConnected(self, key: K) -> None:
        listener = self._listener
        assert listener is not None
        self._up[key] = True
        was_lost = key in self._lost
        self._lost.discard(key)
        if was_lost and IShardListener.providedBy(listener):
            # only this member's channels missed anything: only they are recovered
            listener.channelsResumed(self._channelsOf(key), self.isInterrupted)
        elif self._everyMemberUp():
            listener.brokerConnected()

    def _memberWentAway(self, key: K) -> None:
        """The member ``key`` was lost (before its clients are told): a subclass may look
        for where its channels went."""

    def _memberLost(self, key: K) -> None:
        listener = self._listener
        assert listener is not None
        self._up[key] = False
        self._lost.add(key)
        self._own_stats["shard_outages"] += 1
        self._memberWentAway(key)
        channels = self._channelsOf(key)
        self.log.warn("lost Redis {member}: its {count} channels are interrupted, the "
                      "others deliver", member=self.describe(key), count=len(channels))
        if IShardListener.providedBy(listener):
            listener.channelsInterrupted(channels)
        else:
            listener.brokerDisconnected()

    def _interruptIfDown(self, down: bool, channels: list[str]) -> None:
        """A channel subscribed on a member that is ``down``: its clients are told, as
        they would be had the member gone down later."""
        listener = self._listener
        if down and IShardListener.providedBy(listener):
            listener.channelsInterrupted(channels)

