"""The router: joins the hub (who listens where) to the broker (the message bus).

It subscribes the broker to a channel when the channel gets its first local client and
unsubscribes after its last one leaves; on every message it builds the WebSocket frame once
and writes it to each local member. It is the broker's listener, and the hub is what the
broker resubscribes from after a reconnect.

A broker that reads several messages at once brackets them (:meth:`Router.readStarted`,
:meth:`Router.readEnded`): the router then writes each client all of a channel's messages of
that read at once (a :class:`~ws4tx.server.deflate.Run`, its frames joined once for every
client), so that what a client costs is per read, not per message; a run of messages keeps
their order, and anything else the broker reports meanwhile (a message of a pinned channel,
a barrier, a refusal, an outage) first hands on what came before it.

Fan-out is bounded per reactor turn: past :data:`FRAMES_PER_TURN` frames the rest waits in
a backlog for the next turn (a run that started is written whole: at most one read's
messages of one channel, or :data:`RUN_BYTES` of the backlog's), so that sockets are flushed
and Redis is read in between. When
the server cannot keep up, the backlog is bounded too: a message that waited longer than
``max_lag`` seconds (or pushed the backlog past ``max_backlog``) is dropped, counted,
logged once per episode, and the clients of its channel are told how many they missed.

A channel of a facility with history (``has_history``) carries each message behind its
position: the router hands each message to its :class:`~ws4tx.server.streams.ChannelStreams`
first, which strips the position, keeps where each channel stands, and recovers a channel
from its history (``read_history``) after a skip, a new epoch or an outage, handing what it
recovers back to the router's fan-out (see :mod:`ws4tx.server.streams`).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable, Iterable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx import closecodes
from ws4tx.envelope import server_voice
from ws4tx.history import Position
from ws4tx.naming import Identity
from ws4tx.server._log import observer
from ws4tx.server._runs import Run
from ws4tx.server.broker import (
    PERMISSION,
    IBroker,
    IReadListener,
    IShardListener,
    SubscriptionRefused,
    refusal_kind,
)
from ws4tx.server.hub import Hub
from ws4tx.server.streams import (
    MAX_SUSPECTS as MAX_SUSPECTS,  # their old home
    QUIET as QUIET,
    QUIET_MAX as QUIET_MAX,
    READ_ATTEMPTS as READ_ATTEMPTS,
    READ_RETRY_DELAY as READ_RETRY_DELAY,
    ChannelStreams,
    ReadHistory,
    is_text,
    retried as retried,
)


class Member(Protocol):
    """What the router (and the node's commands) need of a client (a
    :class:`ws4tx.server.protocol.PushProtocol`)."""

    #: Who is behind the connection, and its facility (what the site's commands match).
    identity: Identity
    facility: str

    def __hash__(self) -> int:
        """The hub keys its members on them."""

    def deliver(self, prepared: Any, channel: str, payload: bytes) -> None:
        """Write a prepared frame that arrived on ``channel``."""

    def deliverRun(self, run: Run, channel: str) -> None:
        """Write several prepared frames that arrived on ``channel`` in one read (in
        order): each as :meth:`deliver` would, at once where it can."""

    def deliveryInterrupted(self) -> None:
        """The broker lost its connection: messages may be missed from now on."""

    def deliveryResumed(self) -> None:
        """The broker is back and resubscribed: delivery goes on."""

    def messagesDropped(self, count: int) -> None:
        """``count`` messages of one of this client's channels were dropped because the
        server fell behind (told once the server has caught up)."""

    def closeWith(self, code: int, reason: str) -> None:
        """Close the client's connection with ``code`` and ``reason``."""

    def leaveChannels(self, channels: Iterable[str], event: Any) -> bool:
        """Leave those of ``channels`` the client has, without closing (telling an event
        client with ``event``); whether it had any."""


#: Frames written in one reactor turn before the rest of the messages wait for the next.
FRAMES_PER_TURN = 8192
#: The most payload bytes of one channel's waiting messages written to each client at once
#: (what one read of the broker holds is written at once whatever its size: at most the
#: transport's read, 64 KB).
RUN_BYTES = 65536


@implementer(IShardListener, IReadListener)
class Router:
    """Routes broker messages to local clients; keeps broker subscriptions = hub channels.

    ``prepare(payload, is_binary)`` frames a message once for many clients (a
    :class:`ws4tx.server.deflate.Message`, which each member writes plain or deflated);
    ``clock`` schedules the next turn's fan-out and dates
    the backlog.
    """

    log = Logger(observer=observer)

    def __init__(self, broker: IBroker, prepare: Callable[[bytes, bool], Any],
                 max_size: int = 1024 * 1024, clock: Optional[IReactorTime] = None,
                 max_lag: float = 10.0, max_backlog: int = 10_000,
                 has_history: Optional[Callable[[str], bool]] = None,
                 read_history: Optional[ReadHistory] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.hub: Hub[Member] = Hub()
        self.broker = broker
        self._prepare = prepare
        self._max_size = max_size
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self._max_lag = max_lag
        self._max_backlog = max_backlog
        #: Barriers asked for in this turn, sent together on the next.
        self._barrier_waiters: list[defer.Deferred[None]] = []
        self._barrier_call: Optional[IDelayedCall] = None
        #: (arrival time, channel, payload, position) of messages waiting for a later
        #: turn; a barrier's waiters in place of the payload, with no channel.
        self._backlog: deque[tuple[float, Any, Any, Optional[Position]]] = deque()
        #: The messages of the broker's read under way, handed on once it ends (as the
        #: backlog's), how deep the broker's reads nest, and when the read started.
        self._read: list[tuple[float, Any, Any, Optional[Position]]] = []
        self._reading = 0
        self._read_at = 0.0
        self._spent = 0
        self._turn: Optional[IDelayedCall] = None
        self._missed: Counter[str] = Counter()
        self._behind_since = 0.0
        #: channel -> joins waiting for its SUBSCRIBE, while it is in flight.
        self._inflight: dict[str, list[defer.Deferred[None]]] = {}
        #: Counters for health and metrics: messages from the broker, frames written,
        #: broker outages, oversized messages dropped, messages dropped because they spoke
        #: with the server's voice (see envelope.server_voice), messages (and their frames)
        #: dropped because the server fell behind, subscriptions Redis refused.
        #: Also the payload bytes those frames carried (before any compression).
        #: Positioning: live messages dropped as duplicates, skips and new epochs
        #: noticed, channel recoveries started, messages recovered, recoveries that
        #: failed, live positions a history read showed could not be true (forged).
        self.stats = {"messages": 0, "frames": 0, "outages": 0, "oversized": 0,
                      "forged": 0, "lagged": 0, "lagged_frames": 0, "refused": 0,
                      "bytes_out": 0, "duplicates": 0, "skips": 0, "epochs": 0,
                      "recoveries": 0, "recovered": 0, "unrecovered": 0,
                      "impossible": 0}
        #: Called with the seconds from a message's arrival from the broker to the end of
        #: its fan-out (once per message, never per client), when set: the metrics.
        self.fanout_observer: Optional[Callable[[float], None]] = None
        #: channel -> what receives its messages, for the node's own channels (the control
        #: channel): always subscribed, never a client's.
        self._pinned: dict[str, Callable[[bytes], None]] = {}
        #: Where each positioned channel stands, and its recovery (see
        #: :mod:`ws4tx.server.streams`): it counts in :attr:`stats`, and hands what it
        #: recovers (and the live messages it held meanwhile) back to the fan-out.
        self.streams = ChannelStreams(self.hub, self._clock, self._handOn, self.stats,
                                      has_history, read_history, max_backlog)

    # The node's own channels

    def pin(self, channel: str, receiver: Callable[[bytes], None]) -> None:
        """Keep ``channel`` subscribed whatever the clients want, and hand its messages to
        ``receiver`` (never to clients). Pin before the broker starts: the broker
        subscribes it with the wanted channels on every (re)connection."""
        self._pinned[channel] = receiver

    def follow(self, channel: str, receiver: Callable[[bytes], None]) -> None:
        """Pin ``channel`` (see :meth:`pin`) from now on, and subscribe it now."""
        self._pinned[channel] = receiver
        self.broker.subscribe(channel).addErrback(self._subscribeFailed, channel)

    def unfollow(self, channel: str) -> None:
        """Stop listening on a channel given to :meth:`follow`."""
        if self._pinned.pop(channel, None) is not None:
            self.broker.unsubscribe(channel).addErrback(lambda f: None)

    # Clients

    def join(self, client: Member, channels: Iterable[str]) -> defer.Deferred[None]:
        """Add ``client`` to ``channels``; fires when every channel is subscribed (or
        failed to be: the broker resubscribes the hub's channels once it reconnects; a
        refused channel closes its clients), including channels whose SUBSCRIBE another
        client's join sent and that is still in flight."""
        opened = set(self.hub.join(client, channels))
        waits = []
        for channel in self.hub.channels_of(client):
            if channel in opened:
                self._subscribe(channel)
            waiting = self._inflight.get(channel)
            if waiting is not None:
                d: defer.Deferred[None] = defer.Deferred()
                waiting.append(d)
                waits.append(d)
        if len(waits) == 1:  # most joins: no list of one to gather
            return waits[0]
        return defer.gatherResults(waits).addCallback(lambda _: None) if waits \
            else defer.succeed(None)

    def _subscribe(self, channel: str) -> None:
        waiters: list[defer.Deferred[None]] = []
        self._inflight[channel] = waiters
        self.broker.subscribe(channel).addErrback(self._subscribeFailed, channel) \
            .addBoth(self._subscribeDone, channel, waiters)

    def _subscribeDone(self, _: object, channel: str,
                       waiters: list[defer.Deferred[None]]) -> None:
        if self._inflight.get(channel) is waiters:
            del self._inflight[channel]
        for d in waiters:
            d.callback(None)

    def _subscribeFailed(self, failure: Any, channel: str) -> None:
        if failure.check(SubscriptionRefused):
            self.subscriptionRefused(channel, failure.value.reason)
            return
        self.log.debug("subscribing {channel} failed: {error}; it will be resubscribed on "
                       "reconnect", channel=channel, error=failure.getErrorMessage())

    def learned(self, channel: str, position: Position) -> None:
        """A client read ``channel``'s position from its history after it subscribed
        (see :meth:`ChannelStreams.learned`)."""
        self.streams.learned(channel, position)

    @property
    def positions(self) -> dict[str, Position]:
        """channel -> the position of the last message handed on to its clients."""
        return self.streams.positions

    def recovering(self) -> int:
        """How many channels are being recovered from their history now."""
        return self.streams.recovering()

    def leave(self, client: Member) -> None:
        """Remove ``client``; unsubscribe the channels nobody here listens to any more."""
        self._unsubscribe(self.hub.leave(client))

    def leaveChannels(self, client: Member, channels: Iterable[str]) -> None:
        """Remove ``client`` from ``channels`` only (it stays joined to its others)."""
        self._unsubscribe(self.hub.leave_channels(client, channels))

    def _unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            self.streams.forget(channel)
            self.broker.unsubscribe(channel).addErrback(lambda f: None)

    # IBrokerListener

    def wantedChannels(self) -> Iterable[str]:
        return [*self._pinned, *self.hub.channels()]

    def readStarted(self) -> None:
        """The broker starts handing on what one read from Redis holds: its messages are
        handed on together once it ends (:meth:`readEnded`)."""
        if not self._reading:
            self._read_at = self._clock.seconds()
        self._reading += 1

    def readEnded(self) -> None:
        """The read is over: each client gets all its messages of a channel at once."""
        self._reading -= 1
        if not self._reading and self._read:
            self._handRead()

    def messageReceived(self, channel: str, payload: bytes) -> None:
        receiver = self._pinned.get(channel)
        if receiver is not None:
            if self._read:
                # A command of the site (leave a channel...) comes after what came before.
                self._handRead()
            try:
                receiver(payload)
            except Exception:  # noqa: BLE001 - a receiver must not stop delivery; logged
                self.log.failure("the receiver of {channel} failed", channel=channel)
            return
        self.stats["messages"] += 1
        if not self.hub.members(channel):
            return
        live = self.streams.live(channel, payload)
        if live is not None:
            self._handOn(channel, *live)

    def _handOn(self, channel: str, payload: bytes, position: Optional[Position]) -> None:
        """Fan a message out now, at the end of the broker's read, or after the backlog
        (past the size limit or in the server's voice: dropped)."""
        if len(payload) > self._max_size:
            self._oversized(channel, len(payload))
            return
        forged = server_voice(payload)
        if forged is not None:
            self.stats["forged"] += 1
            self.log.warn("dropped a message on {channel}: it is {what}, which only the "
                          "server sends, to one client", channel=channel, what=forged)
            return
        if self._reading:
            self._read.append((self._read_at, channel, payload, position))
            return
        backlog = self._backlog
        if not backlog and self._spent < FRAMES_PER_TURN:
            observer = self.fanout_observer
            if observer is None:
                self._spent += self._fanOut(channel, payload, position)
            else:
                arrived = self._clock.seconds()
                self._spent += self._fanOut(channel, payload, position)
                observer(self._clock.seconds() - arrived)
        else:
            backlog.append((self._clock.seconds(), channel, payload, position))
            self._trim()
        if self._turn is None:
            self._turn = self._clock.callLater(0, self._nextTurn)

    def _handRead(self) -> None:
        """Hand on the messages of the broker's read so far: now, in runs, as far as the
        turn's budget goes (the rest waits in the backlog), or after the backlog."""
        read, self._read = self._read, []
        backlog = self._backlog
        if backlog or self._spent >= FRAMES_PER_TURN:
            backlog.extend(read)
            self._trim()
        elif len(read) == 1:
            # The usual read at tens of messages a second: one message, written now.
            arrived, channel, payload, position = read[0]
            self._spent += self._fanOut(channel, payload, position)
            if self.fanout_observer is not None:
                self.fanout_observer(self._clock.seconds() - arrived)
        else:
            backlog.extend(read)
            self._send()
            self._trim()
        if self._turn is None:
            self._turn = self._clock.callLater(0, self._nextTurn)

    def _trim(self) -> None:
        """Drop the oldest waiting messages past ``max_backlog`` (a barrier's waiters are
        released)."""
        backlog = self._backlog
        while len(backlog) > self._max_backlog:
            _, dropped, waiters, _ = backlog.popleft()
            if dropped is None:
                _release(waiters)
            else:
                self._drop(dropped)

    def _oversized(self, channel: str, size: int) -> None:
        self.stats["oversized"] += 1
        self.log.warn("dropped a message of {size} bytes on {channel}: over the "
                      "{limit} byte limit", size=size, channel=channel,
                      limit=self._max_size)

    @property
    def backlog(self) -> int:
        """How many messages wait for a later reactor turn."""
        return len(self._backlog)

    def _prepared(self, channel: str, payload: bytes, position: Optional[Position]) -> Any:
        """The message framed once for every client (None: its publication envelope is
        over the size limit). It carries the position (event clients get it with the
        message)."""
        prepared = self._prepare(payload, not is_text(payload))
        if position is not None:
            prepared.position = position
            # What event clients get is the payload in a publication envelope, which
            # JSON can make six times longer (control characters): the bound is on
            # that frame, measured once per message.
            size = len(prepared.published(channel).plain)
            if size > self._max_size:
                self._oversized(channel, size)
                return None
        return prepared

    def _fanOut(self, channel: str, payload: bytes, position: Optional[Position]) -> int:
        """Write one message to the channel's members; return how many frames."""
        members = tuple(self.hub.members(channel))
        if members:
            prepared = self._prepared(channel, payload, position)
            if prepared is None:
                return 0
            for member in members:
                member.deliver(prepared, channel, payload)
            self.stats["frames"] += len(members)
            self.stats["bytes_out"] += len(members) * len(payload)
        return len(members)

    def _fanOutRun(self, channel: str, run: list[tuple[bytes, Optional[Position]]]) -> int:
        """Write several messages of one channel to its members, each member all of them
        at once; return how many frames."""
        members = tuple(self.hub.members(channel))
        if not members:
            return 0
        messages = []
        size = 0
        for payload, position in run:
            prepared = self._prepared(channel, payload, position)
            if prepared is not None:
                messages.append((prepared, payload))
                size += len(payload)
        if len(messages) > 1:
            frames = Run(messages)
            for member in members:
                member.deliverRun(frames, channel)
        elif messages:
            prepared, payload = messages[0]
            for member in members:
                member.deliver(prepared, channel, payload)
        self.stats["frames"] += len(members) * len(messages)
        self.stats["bytes_out"] += len(members) * size
        return len(members) * len(messages)

    def _nextTurn(self) -> None:
        self._turn = None
        self._spent = 0
        backlog = self._backlog
        if not backlog:
            return
        self._send()
        if backlog or self._spent:
            self._turn = self._clock.callLater(0, self._nextTurn)
        if not backlog and self._missed:
            self._caughtUp()

    def _send(self) -> None:
        """Fan out what waits in the backlog, oldest first, while the turn's budget lasts:
        consecutive messages of one channel (up to :data:`RUN_BYTES`) to each member at
        once; a message that waited over ``max_lag`` is dropped."""
        backlog = self._backlog
        now = self._clock.seconds()
        too_old = now - self._max_lag
        observer = self.fanout_observer
        while backlog and self._spent < FRAMES_PER_TURN:
            arrived, channel, payload, position = backlog.popleft()
            if channel is None:
                _release(payload)
                continue
            if arrived < too_old:
                self._drop(channel)
                continue
            if not backlog or backlog[0][1] != channel:
                self._spent += self._fanOut(channel, payload, position)
                if observer is not None:
                    observer(self._clock.seconds() - arrived)
                continue
            run = [(payload, position)]
            arrivals = [arrived]
            size = len(payload)
            while backlog and size < RUN_BYTES:
                arrived, following, payload, position = backlog[0]
                if following != channel or arrived < too_old:
                    break
                backlog.popleft()
                run.append((payload, position))
                arrivals.append(arrived)
                size += len(payload)
            self._spent += self._fanOutRun(channel, run)
            if observer is not None:
                done = self._clock.seconds()
                for arrived in arrivals:
                    observer(done - arrived)

    def barrier(self, at_once: bool = False) -> defer.Deferred[None]:
        """Fires once every message published before now has been handed to this node's
        members: through the broker (which delivers in publish order) and this router's
        backlog. Fails when the broker cannot tell (it is down). Sent on the next turn
        with the other barriers asked for in this one; ``at_once``: now (with them), right
        after the commands just sent on the broker's connections."""
        d: defer.Deferred[None] = defer.Deferred()
        self._barrier_waiters.append(d)
        if at_once:
            if self._barrier_call is not None:
                self._barrier_call.cancel()
            self._sendBarrier()
        elif self._barrier_call is None:
            self._barrier_call = self._clock.callLater(0, self._sendBarrier)
        return d

    def _sendBarrier(self) -> None:
        """One broker barrier for every barrier asked for in the last turn."""
        self._barrier_call = None
        waiters, self._barrier_waiters = self._barrier_waiters, []

        def reached(_: object) -> None:
            # What the broker handed over before its marker may still wait in its read
            # or the backlog.
            if self._read:
                self._handRead()
            if self._backlog:
                self._backlog.append((self._clock.seconds(), None, waiters, None))
            else:
                _release(waiters)

        def failed(failure: Failure) -> None:
            for waiter in waiters:
                waiter.errback(failure)

        self.broker.barrier().addCallbacks(reached, failed)

    def _drop(self, channel: str) -> None:
        """Drop a message the server could not send in time."""
        members = self.hub.members(channel)
        self.stats["lagged"] += 1
        self.stats["lagged_frames"] += len(members)
        if not self._missed:
            self._behind_since = self._clock.seconds()
            self.log.warn("fan-out is falling behind: dropping messages that waited over "
                          "{max_lag} s or past {max_backlog} waiting", max_lag=self._max_lag,
                          max_backlog=self._max_backlog)
        self._missed[channel] += 1

    def _caughtUp(self) -> None:
        missed, self._missed = self._missed, Counter()
        self.log.warn("fan-out caught up after {seconds:.1f} s; dropped {messages} messages "
                      "on {channels} channels", seconds=self._clock.seconds() - self._behind_since,
                      messages=sum(missed.values()), channels=len(missed))
        for channel, count in missed.items():
            for member in tuple(self.hub.members(channel)):
                member.messagesDropped(count)

    def subscriptionRefused(self, channel: str, reason: str) -> None:
        """The broker refused ``channel`` (a Redis ACL without it): its clients are closed
        with :data:`~ws4tx.closecodes.SUBSCRIPTION_REFUSED`; other channels go on."""
        if self._read:
            self._handRead()
        members = tuple(self.hub.members(channel))
        self.stats["refused"] += 1
        # the fix: the ACL's, or whatever Redis's own reason says
        fix = ("allow the channel to this Redis user" if refusal_kind(reason) == PERMISSION
               else "Redis's reason says why")
        if channel in self._pinned:
            self.log.error("Redis refused to subscribe {channel} ({reason}): this node will "
                           "not hear the site's commands ({fix})", channel=channel,
                           reason=reason, fix=fix)
            return
        self.log.warn("Redis refused to subscribe {channel} ({reason}); closing its {n} "
                      "clients ({fix})", channel=channel, reason=reason, n=len(members),
                      fix=fix)
        for member in members:
            member.closeWith(closecodes.SUBSCRIPTION_REFUSED, "subscription refused by Redis")

    def brokerDisconnected(self) -> None:
        if self._read:
            self._handRead()
        self.stats["outages"] += 1
        for member in tuple(self.hub.clients()):
            member.deliveryInterrupted()

    def brokerConnected(self) -> None:
        if self._read:
            self._handRead()
        for member in tuple(self.hub.clients()):
            member.deliveryResumed()
        self.streams.recoverAfterOutage(list(self.positions))

    # IShardListener (a broker sharded over several Redis servers)

    def channelsInterrupted(self, channels: Iterable[str]) -> None:
        """Only the clients of ``channels`` may miss messages (one shard was lost)."""
        if self._read:
            self._handRead()
        for member in self._membersOf(channels):
            member.deliveryInterrupted()

    def channelsResumed(self, channels: Iterable[str],
                        interrupted: Callable[[str], bool]) -> None:
        """The shard of ``channels`` is back: those of them with a position are
        recovered from their history (only their clients are told ``recovered``), and
        every client none of whose channels is still ``interrupted`` (on another shard
        that is down) is told delivery resumed (including one that joined, cautiously
        told interrupted, while the shard was down)."""
        if self._read:
            self._handRead()
        channels = list(channels)
        for member in tuple(self.hub.clients()):
            if not any(interrupted(c) for c in self.hub.channels_of(member)):
                member.deliveryResumed()
        self.streams.recoverAfterOutage(channels)

    def _membersOf(self, channels: Iterable[str]) -> list[Member]:
        """The clients of any of ``channels``, each once."""
        return list(dict.fromkeys(m for c in channels for m in tuple(self.hub.members(c))))

    def memberCount(self) -> int:
        """How many clients have joined."""
        return len(self.hub)


def _release(waiters: list[defer.Deferred[None]]) -> None:
    for waiter in waiters:
        waiter.callback(None)
