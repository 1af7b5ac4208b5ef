"""The Redis broker: one subscriber connection per process, one command connection.
Both connections are Twisted ``ClientService``s speaking txredisapi's protocol, so they
reconnect by themselves with capped, jittered backoff. After every (re)connection the
subscriber subscribes again to whatever the listener (the router, from its hub) wants: Redis
forgets subscriptions with the connection, and txredisapi does not remember them. A
connection's channels are subscribed one per command; those clients join (or leave) in
one reactor turn, in one command (:class:`_Subscriber` keeps txredisapi's replies in
step). Payloads are never converted to numbers, and a PING with a deadline every few
seconds notices a subscriber that is connected but deaf (a paused or half-dead Redis) and
replaces its connection.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from typing import Any, Callable, NoReturn, Optional, Sequence, cast

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx import history as _history, presence as _presence
from ws4tx.naming import DEFAULT_PREFIX, PresenceKeys, history_keys
from ws4tx.redis_address import RedisAddress
from ws4tx.server._attempts import AttemptLog
from ws4tx.server._log import observer
from ws4tx.server._twisted_internals import QuietClientService
from ws4tx.server.broker import (
    PERMISSION,
    TRANSIENT,
    BrokerUnavailable,
    CommandRefused,
    IBroker,
    IBrokerListener,
    IReadListener,
    IShardListener,
    NotStored,
    SubscriptionRefused,
    batched,
    is_acl_refusal,
    refusal_kind,
    refusal_meaning,
)
from ws4tx.server.sentinel import SentinelEndpoint, client_endpoint

#: Retry delays: 0.5 s doubling to 10 s, each with up to 50 % random jitter.
DEFAULT_RETRY = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0,
                              jitter=lambda: random.uniform(0, 0.5))


def _keepAlive(proto: Any) -> Any:
    """TCP keepalive on a Redis connection: the kernel, too, notices a peer that vanished."""
    set_keep_alive = getattr(proto.transport, "setTcpKeepAlive", None)
    if set_keep_alive is not None:
        set_keep_alive(True)
    return proto


class _Prepared:
    """What the broker's txredisapi protocols add: whether the connection was made ready
    (``prepared``), and a way to end one that never was without telling ClientService."""

    broker: RedisBroker
    #: Set once the broker's prepareConnection succeeded (ClientService then uses it).
    prepared = False

    def lostUnprepared(self, reason: Failure) -> None:
        """The connection ended before it was ready: clean up the protocol only."""
        self.connectionLost(reason)  # type: ignore[attr-defined]


class _Reads:
    """A subscriber connection whose broker's listener hears each read begin and end
    (:class:`~ws4tx.server.broker.IReadListener`): what one read holds is then handed on
    together."""

    broker: RedisBroker

    def dataReceived(self, data: bytes, *args: Any) -> Any:
        reads = self.broker._reads
        if reads is None:
            return super().dataReceived(data, *args)  # type: ignore[misc]
        reads.readStarted()
        try:
            return super().dataReceived(data, *args)  # type: ignore[misc]
        finally:
            reads.readEnded()


def _counted(protocol: Any, command: str, channels: Sequence[str]) -> defer.Deferred[Any]:
    """Send ``command`` naming ``channels`` on a subscriber ``protocol`` that keeps Redis's
    answers in step (its ``_extra``: per such command in flight, its answers beyond the
    first, which its ``replyReceived`` drops): fires with the first answer, or fails as a
    whole."""
    protocol._extra.append(len(channels) - 1)
    d: defer.Deferred[Any] = protocol.execute_command(command, *channels,
                                                      apply_timeout=False)

    def failed(failure: Failure) -> Failure:
        # answered by an error (or never answered): no other answer of it will come
        if protocol._extra:
            protocol._extra.popleft()
        return failure

    return d.addErrback(failed)


def _surplus(protocol: Any) -> bool:
    """Whether an answer just received on a subscriber ``protocol`` of :func:`_counted`
    is one to drop: an answer of a counted command beyond its first. When it is a first
    answer instead, the protocol starts dropping the others of that command."""
    if protocol._dropping:
        protocol._dropping -= 1
        return True
    if protocol._extra:
        protocol._dropping = protocol._extra.popleft()
    return False


#: Channels per SUBSCRIBE at most (the joins of one reactor turn).
SUBSCRIBE_BATCH = 512


class _Subscriber(_Prepared, _Reads, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The subscriber connection's protocol. One ``SUBSCRIBE`` or ``UNSUBSCRIBE`` may
    name many channels (:meth:`subscribeSoon`, :meth:`unsubscribeSoon`: those the
    clients join or leave in one reactor turn, in the order asked): Redis runs it as one
    command and answers each channel, which txredisapi would give, all but the first
    answer, to the commands sent after it; this protocol passes the first to the command
    and drops the others."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per SUBSCRIBE or UNSUBSCRIBE in flight, in order: its answers beyond the first.
        self._extra: deque[int] = deque()
        #: Answers of the current command still to drop.
        self._dropping = 0
        #: What was asked for in this reactor turn, in order: (command, channel, result).
        self._soon: list[tuple[str, str, defer.Deferred[Any]]] = []
        self._flushing: Optional[Any] = None

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.broker._messageReceived(channel, message)

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) >= 3 and reply[-3] in _ANSWERS \
                and _surplus(self):
            return
        super().replyReceived(reply)

    def subscribe(self, channels: Any) -> defer.Deferred[Any]:
        """One ``SUBSCRIBE`` of ``channels`` (a name or a list), now: fires once Redis
        confirmed the first (it ran the command: the others are subscribed too), or fails
        as a whole."""
        return self._send("SUBSCRIBE", channels)

    def unsubscribe(self, channels: Any) -> defer.Deferred[Any]:
        """One ``UNSUBSCRIBE`` of ``channels``, after what was asked for before it."""
        if self._soon:
            self._flush()
        return self._send("UNSUBSCRIBE", channels)

    def _send(self, command: str, channels: Any) -> defer.Deferred[Any]:
        if isinstance(channels, str):
            channels = [channels]
        return _counted(self, command, channels)

    def subscribeSoon(self, channel: str) -> defer.Deferred[Any]:
        """SUBSCRIBE ``channel`` with the other channels asked for in this reactor turn
        (one command for them all); a refusal is the channel's own."""
        return self._soonly("SUBSCRIBE", channel)

    def unsubscribeSoon(self, channel: str) -> defer.Deferred[Any]:
        """UNSUBSCRIBE ``channel`` with the other channels left in this reactor turn."""
        return self._soonly("UNSUBSCRIBE", channel)

    def _soonly(self, command: str, channel: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._soon.append((command, channel, d))
        if self._flushing is None:
            self._flushing = self.broker.clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """Send what was asked for in this turn: each run of one command, in order, as
        commands of at most :data:`SUBSCRIBE_BATCH` channels."""
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        soon, self._soon = self._soon, []
        run: list[tuple[str, defer.Deferred[Any]]] = []
        for index, (command, channel, d) in enumerate(soon):
            run.append((channel, d))
            if index + 1 == len(soon) or soon[index + 1][0] != command \
                    or len(run) == SUBSCRIBE_BATCH:
                try:
                    sent = self._send(command, [name for name, _ in run])
                except Exception:  # noqa: BLE001 - not connected: each waiter hears it
                    sent = defer.fail()
                sent.addBoth(self._settle, command, run)
                run = []

    def _settle(self, result: Any, command: str,
                chunk: list[tuple[str, defer.Deferred[Any]]]) -> None:
        if isinstance(result, Failure) and result.check(txredisapi.ResponseError) \
                and command == "SUBSCRIBE" and len(chunk) > 1:
            # Redis refuses the whole command for one channel (an ACL without it): each
            # channel alone says which.
            for channel, d in chunk:
                try:
                    self.subscribe(channel).chainDeferred(d)
                except Exception:  # noqa: BLE001 - not connected any more
                    d.errback()
            return
        for _, d in chunk:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


#: The kinds of answer of which a command naming many channels gets one per channel.
_ANSWERS = frozenset({"subscribe", b"subscribe", "unsubscribe", b"unsubscribe"})


class _Command(_Prepared, txredisapi.RedisProtocol):  # type: ignore[misc]
    pass


class _Guard(Protocol):
    """Stands between a transport and ClientService's protocol proxy.

    ClientService counts a connection its ``prepareConnection`` rejected as a failed
    attempt, but it neither closes it nor expects to hear of it again: it has no transition
    for a connection lost while it is being prepared or after it was rejected (automat's
    NoTransition). The broker closes such connections itself; their loss reaches the Redis
    protocol only, not ClientService.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner.prepared:
            self.inner.connectionLost(reason)
        else:
            self.inner.lostUnprepared(reason)


class _GuardFactory(Factory):
    """Wraps each protocol ClientService builds in a :class:`_Guard`."""

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> Optional[_Guard]:
        inner = self.wrapped.buildProtocol(addr)
        return None if inner is None else _Guard(inner)


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    """An endpoint whose connections are :class:`_Guard`\\ ed; fires with the protocol
    ClientService built, as ClientService expects. Tells ``attempts`` why a connection
    could not be made."""

    def __init__(self, endpoint: IStreamClientEndpoint, attempts: AttemptLog) -> None:
        self._endpoint = endpoint
        self._attempts = attempts

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        # The endpoint connects the protocol _GuardFactory built: a _Guard.
        guarded = cast("defer.Deferred[_Guard]", self._endpoint.connect(_GuardFactory(factory)))

        def failed(failure: Failure) -> Failure:
            if not failure.check(defer.CancelledError):
                self._attempts.failed(failure)
            return failure

        return guarded.addCallbacks(lambda guard: guard.inner, failed)


class _RedisFactory(Factory):
    """Builds txredisapi protocols for a ClientService, with ws4tx's settings."""

    # what txredisapi's protocol expects of its factory
    isLazy = True
    noisy = False

    def __init__(self, broker: RedisBroker, protocol: Callable[..., _Prepared],
                 role: str) -> None:
        self.broker = broker
        self.protocol_class = protocol
        self.role = role

    def buildProtocol(self, addr: Any) -> txredisapi.BaseRedisProtocol:
        address = self.broker.address
        proto: Any = self.protocol_class(
            charset=None,
            password=address.password,
            username=address.username,
            dbid=address.db or None,
            convertNumbers=False,
        )
        proto.factory = self
        proto.broker = self.broker
        proto.callLater = self.broker.clock.callLater
        return proto

    def stopTrying(self) -> None:
        """txredisapi calls this when AUTH or SELECT fails; the ClientService goes on
        retrying (the password may be fixed on the server), with backoff."""

    def connectionError(self, message: str) -> None:
        self.broker._refused(self.role, message)


class _Preparation:
    """Gets one new connection ready, for ClientService's ``prepareConnection``.

    Ready means: connected, AUTH and SELECT done and, for the command connection, a PING
    answered, for the subscriber every SUBSCRIBE confirmed (refused ones included: a
    refusal is an answer), each step within the broker's timeout. A connection that is not
    ready in time, or is lost on the way, is dropped and :attr:`done` fails: ClientService
    counts a failed attempt and backs off. Cancelling :attr:`done` (ClientService does when
    it is stopped meanwhile) drops it too.
    """

    def __init__(self, broker: RedisBroker, role: str, proto: Any) -> None:
        self.broker = broker
        self.role = role
        self.proto = proto
        self.done: defer.Deferred[None] = defer.Deferred(self._cancelled)
        #: Whether SUBSCRIBEs are being sent on this connection (then a channel wanted
        #: meanwhile is subscribed on it too).
        self.subscribing = False
        self._outstanding = 0
        self._refused: list[tuple[str, str]] = []
        self._timer = broker.clock.callLater(broker.timeout, self._expire)
        proto.whenDisconnected().addCallback(
            lambda _: self._fail(BrokerUnavailable("the connection was lost while it was "
                                                   "being set up")))
        proto.whenConnected().addCallback(self._connected)

    def _connected(self, proto: Any) -> None:
        if self.done.called:
            return
        # The protocol itself (ClientService gave prepareConnection a proxy of it): the
        # one whenDisconnected() reports.
        self.proto = proto
        _keepAlive(proto)
        self._restartTimer()
        if self.role != "subscriber":
            # Connected is not ready: a Redis that accepts TCP and never answers must
            # count as a failed attempt, as it does for the subscriber.
            pinged: defer.Deferred[Any] = proto.execute_command("PING")
            pinged.addCallbacks(lambda _: self._succeed(), self._fail)
            return
        broker = self.broker
        assert broker._listener is not None
        self.subscribing = True
        # Written all at once, before anything else can be: replies come back in order.
        self.subscribe(broker._probe_channel).addCallbacks(broker._probeSubscribed,
                                                           broker._probeRefused)
        for channel in list(broker._listener.wantedChannels()):
            self.subscribe(channel).addErrback(self._resubscriptionRefused, channel)
        self._check()

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        """SUBSCRIBE ``channel`` on this connection; a refusal fails the result with
        :class:`SubscriptionRefused`, anything else fails the whole preparation."""
        self._outstanding += 1
        d = self.proto.subscribe(channel)
        result: defer.Deferred[None] = defer.Deferred()

        def answered(reply: Any) -> None:
            self._outstanding -= 1
            result.callback(None)
            self._check()

        def failed(failure: Failure) -> None:
            self._outstanding -= 1
            if failure.check(txredisapi.ResponseError):
                result.errback(SubscriptionRefused(channel, failure.getErrorMessage()))
                self._check()
            else:
                unavailable = BrokerUnavailable(
                    f"subscribing {channel} failed: {failure.getErrorMessage()}")
                result.errback(unavailable)
                self._fail(failure.value or unavailable)

        d.addCallbacks(answered, failed)
        return result

    def _resubscriptionRefused(self, failure: Failure, channel: str) -> None:
        if isinstance(failure.value, SubscriptionRefused):
            self._refused.append((channel, failure.value.reason))

    def _check(self) -> None:
        if self.subscribing and not self._outstanding and not self.done.called:
            self._succeed()

    def _restartTimer(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        self._timer = self.broker.clock.callLater(self.broker.timeout, self._expire)

    def _expire(self) -> None:
        self._fail(defer.TimeoutError(f"Redis did not answer within {self.broker.timeout} s"))

    def _drop(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.subscribing = False
        if self.proto.transport is not None:
            self.proto.transport.abortConnection()

    def _fail(self, error: Any) -> None:
        if isinstance(error, Failure):
            error = error.value
        if self.done.called:
            return
        self._drop()
        self.broker._notReady(self.role, error)
        self.done.errback(error)

    def _cancelled(self, d: defer.Deferred[None]) -> None:
        self._drop()

    def _succeed(self) -> None:
        if self.done.called:
            return
        if self._timer.active():
            self._timer.cancel()
        self.subscribing = False
        self.proto.prepared = True
        self.done.callback(None)
        self.broker._ready(self.role, self.proto, self._refused)


@implementer(IBroker)
class RedisBroker:
    """An :class:`~ws4tx.server.broker.IBroker` on a Redis server. A channel's history
    is kept under the keys :func:`ws4tx.naming.history_keys` names with ``prefix`` (the
    names the Django side uses)."""

    log = Logger(observer=observer)
    #: The subscriber connection's protocol, and the command that publishes: a Redis
    #: Cluster node's broker speaks sharded pub/sub (:mod:`ws4tx.server.cluster`).
    subscriber_protocol: Callable[..., _Prepared] = _Subscriber
    publish_command = "PUBLISH"

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any = None,
        clock: Optional[IReactorTime] = None,
        ping_interval: float = 5.0,
        timeout: float = 5.0,
        retry_policy: Callable[[int], float] = DEFAULT_RETRY,
        endpoint: Optional[IStreamClientEndpoint] = None,
        prefix: Optional[str] = DEFAULT_PREFIX,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.address = address
        #: The channel prefix: the broker names each channel's history keys with it.
        self.prefix = prefix
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.ping_interval = ping_interval
        self.timeout = timeout
        self._retry = retry_policy
        self._endpoint = endpoint or client_endpoint(reactor, address, timeout)
        self._listener: Optional[IBrokerListener] = None
        #: The listener, when it hears each read begin and end.
        self._reads: Optional[IReadListener] = None
        self._sub: Optional[_Subscriber] = None
        #: The subscriber connection being set up, if any.
        self._preparing: Optional[_Preparation] = None
        #: Redis refused the probe channel for good (an ACL, or a reason not known to
        #: pass): delivering follows the connection.
        self._probe_refused = False
        #: Channels Redis refused for now (CLUSTERDOWN, TRYAGAIN, LOADING, MOVED, ASK),
        #: with its reason: subscribed again after the connection's backoff
        #: (:meth:`_retryRefused`). The probe channel is under :attr:`_probe_channel`.
        self._refused_for_now: dict[str, str] = {}
        self._refused_retry: Optional[Any] = None
        self._refused_attempt = 0
        #: The wanted channels Redis refused for now and that are not subscribed since: a
        #: listener told of outages by channel (IShardListener) hears them interrupted,
        #: and resumed once subscribed (never resumed with the connection).
        self._waiting: set[str] = set()
        self._cmd: Optional[txredisapi.BaseRedisProtocol] = None
        #: Commands waiting for the command connection while it is first being made:
        #: fired when it is ready, failed when an attempt fails.
        self._cmd_waiters: list[defer.Deferred[Any]] = []
        self._cmd_was_ready = False
        self._services: list[ClientService] = []
        self._pinger: Optional[LoopingCall] = None
        #: The log of each connection's attempts, by role.
        self.attempts = {role: AttemptLog(self.log, f"Redis {role} connection to "
                                                    f"{address.safe_url}", self.clock)
                         for role in ("subscriber", "command")}
        #: The log of the subscriptions Redis refused for now and their retries.
        self.refusals = AttemptLog(self.log, f"Redis subscriptions on {address.safe_url}",
                                   self.clock)
        self._ever_ready = False
        self._stopping = False
        self._probe_channel = f"__ws4tx_probe__:{uuid.uuid4().hex}"
        self._probe_seen: Optional[float] = None
        #: Barriers waiting for their marker on the probe channel, by marker.
        self._barriers: dict[bytes, defer.Deferred[None]] = {}
        self._barrier_count = 0
        #: Counters: reconnections of the subscriber, deaf connections replaced, and
        #: messages published but not stored (Redis refused the SET).
        self.stats = {"reconnects": 0, "deaf": 0, "store_failures": 0}

    @property
    def connected(self) -> bool:
        return self._sub is not None

    @property
    def problem(self) -> Optional[str]:
        """Why a connection to Redis cannot be made now (the last failed attempt's
        reason), or None."""
        for role, attempts in self.attempts.items():
            if attempts.problem is not None:
                return f"{role} connection: {attempts.problem}"
        if self.refusals.problem is not None:
            return f"subscriptions: {self.refusals.problem}"
        return None

    def waiting(self, channel: str) -> bool:
        """Whether ``channel`` is not subscribed now: no subscriber, or Redis refused it
        for now and it was not subscribed since."""
        return self._sub is None or channel in self._waiting

    @property
    def delivering(self) -> bool:
        """Whether a probe message published through the command connection came back
        through the subscriber lately (within three ping intervals): the whole path a
        message takes works, not just the sockets."""
        if self._sub is None:
            return False
        if self.ping_interval <= 0 or self._probe_refused:
            return True
        return (self._probe_seen is not None
                and self.clock.seconds() - self._probe_seen <= 3 * self.ping_interval)

    # Lifecycle

    def start(self, listener: IBrokerListener) -> None:
        self._listener = listener
        self._reads = listener if IReadListener.providedBy(listener) else None
        self.log.info("connecting to Redis at {url}", url=self.address.safe_url)
        self._services = [self._service("subscriber", self.subscriber_protocol),
                          self._service("command", _Command)]
        for service in self._services:
            service.startService()
        if self.ping_interval > 0:
            self._pinger = LoopingCall(self._ping)
            self._pinger.clock = self.clock
            self._pinger.start(self.ping_interval, now=False)

    def _service(self, role: str, protocol: Callable[..., _Prepared]) -> ClientService:
        attempts = self.attempts[role]
        attempts.starting()
        return QuietClientService(_GuardedEndpoint(self._endpoint, attempts),
                                  _RedisFactory(self, protocol, role),
                                  retryPolicy=attempts.retrying(self._retry), clock=self.clock,
                                  prepareConnection=lambda p: self._prepare(role, p))

    def stop(self) -> defer.Deferred[None]:
        self._stopping = True
        self._cancelRefusedRetry()
        self._commandWaitersFail("the broker stopped")
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        ds = [defer.maybeDeferred(s.stopService) for s in self._services]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # Connections

    def _prepare(self, role: str, proto: Any) -> defer.Deferred[None]:
        """ClientService's ``prepareConnection``: fires once ``proto`` is ready (see
        :class:`_Preparation`); until then ClientService does not count it as a
        connection, so that one that never gets ready makes the backoff grow."""
        preparation = _Preparation(self, role, proto)
        if role == "subscriber":
            self._preparing = preparation
        return preparation.done

    def _notReady(self, role: str, error: BaseException) -> None:
        if role == "subscriber":
            self._preparing = None
        if not self._stopping:
            self.attempts[role].failed(error)
        if role == "command":
            self._commandWaitersFail(f"Redis at {self.address.safe_url} is not connected")

    def _ready(self, role: str, proto: Any, refused: list[tuple[str, str]]) -> None:
        # ready before it is said to be: whoever hears "restored" may use it at once
        if role == "subscriber":
            self._preparing = None
            self._subscriberReady(proto, refused)
        else:
            self._commandReady(proto)
        self.attempts[role].succeeded()

    def _bounded(self, d: defer.Deferred[Any], proto: Any) -> defer.Deferred[Any]:
        """``d``, or a TimeoutError (and ``proto``'s connection dropped) if Redis takes
        longer than the timeout to answer."""
        bounded: defer.Deferred[Any] = defer.Deferred()

        def expire() -> None:
            self.log.warn("Redis did not answer within {timeout} s; replacing the "
                          "connection", timeout=self.timeout)
            proto.transport.abortConnection()
            bounded.errback(defer.TimeoutError(f"Redis did not answer within {self.timeout} s"))

        timer = self.clock.callLater(self.timeout, expire)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
                bounded.callback(result)
            # else: too late, the caller has its TimeoutError already

        d.addBoth(done)
        return bounded

    def _subscriberReady(self, proto: Any, refused: list[tuple[str, str]]) -> None:
        if self._stopping:
            return
        proto.whenDisconnected().addCallback(self._subscriberLost)
        assert self._listener is not None
        self._sub = proto
        if not self._ever_ready:
            self._ever_ready = True
            self.log.info("Redis subscriber connected to {url}", url=self.address.safe_url)
        for channel, reason in refused:
            self._channelRefused(channel, reason)
        self._listener.brokerConnected()
        self._interrupt(sorted(self._waiting))
        self._probe()
        self._scheduleRefusedRetry()

    def _interrupt(self, channels: list[str]) -> None:
        """Tell a listener that hears of outages by channel that ``channels`` (refused for
        now) miss their messages until they are subscribed."""
        listener = self._listener
        if channels and IShardListener.providedBy(listener):
            listener.channelsInterrupted(channels)

    def _resume(self, channels: list[str]) -> None:
        """``channels``, refused for now before, are subscribed: their clients are told
        delivery goes on (those with no other channel still waiting)."""
        listener = self._listener
        if channels and IShardListener.providedBy(listener):
            listener.channelsResumed(channels, self.waiting)

    def _channelRefused(self, channel: str, reason: str) -> None:
        """Redis refused to subscribe a client's ``channel``: for now (then it is tried
        again, see :meth:`_retryRefused`) or for good (the listener is told)."""
        if self._retriesRefusal(reason):
            self._refused_for_now[channel] = reason
            self._waiting.add(channel)
        else:
            self._waiting.discard(channel)
            assert self._listener is not None
            self._listener.subscriptionRefused(channel, reason)

    def _retriesRefusal(self, reason: str) -> bool:
        """Whether a client's channel refused for ``reason`` is subscribed again later
        (the refusals that pass by themselves)."""
        return refusal_kind(reason) == TRANSIENT

    def _refusedLive(self, failure: Failure, channel: str) -> Failure:
        """A SUBSCRIBE asked for now was refused: for now (it is tried again, and the
        caller told Redis is not available for it yet) or for good."""
        error = failure.value
        if isinstance(error, SubscriptionRefused) and self._retriesRefusal(error.reason):
            self._refused_for_now[channel] = error.reason
            if channel not in self._waiting:
                self._waiting.add(channel)
                self._interrupt([channel])
            self._scheduleRefusedRetry()
            raise BrokerUnavailable(f"Redis refused {channel} for now: {error.reason}")
        return failure

    def _probeSubscribed(self, _: object) -> None:
        self._probe_refused = False

    def _probeRefused(self, failure: Failure) -> None:
        """Redis refused the probe channel. For now (the cluster down, a slot migrating,
        the dataset loading): it is subscribed again with the connection's backoff, and
        until then delivery is not known. For good (an ACL without it, or a reason not
        known to pass): delivery cannot be checked; :attr:`delivering` follows the
        connection instead."""
        error = failure.value
        if not isinstance(error, SubscriptionRefused):
            return
        kind = refusal_kind(error.reason)
        if kind == TRANSIENT:
            self._refused_for_now[self._probe_channel] = error.reason
            self._probe_seen = None  # a probe seen before says nothing of this one
            return
        if not self._probe_refused:
            if kind == PERMISSION:
                self.log.warn("Redis refused the delivery probe channel {channel} ({reason}); "
                              "allow the channels __ws4tx_probe__:* to this user "
                              "(ACL SETUSER <user> &__ws4tx_probe__:*) for the health check "
                              "to test delivery", channel=self._probe_channel,
                              reason=error.reason)
            else:
                self.log.warn("Redis refused the delivery probe channel {channel}: {reason}; "
                              "the health check follows the connection instead",
                              channel=self._probe_channel, reason=error.reason)
        self._probe_refused = True

    # Subscriptions refused for now

    def _scheduleRefusedRetry(self) -> None:
        """Subscribe the channels refused for now again after the connection's backoff
        (one line says why the first time, then the summaries of :class:`AttemptLog`);
        with none left, the refusals are over."""
        if self._refused_retry is not None or self._sub is None or self._stopping:
            return
        if not self._refused_for_now:
            self._refused_attempt = 0
            self.refusals.succeeded()
            return
        reasons = self._refused_for_now
        reason = next(iter(reasons.values()))
        probe = " (the delivery probe's included)" if self._probe_channel in reasons else ""
        what = (f"{len(reasons)} channel{'s' if len(reasons) > 1 else ''}{probe} refused "
                f"for now: {reason} ({refusal_meaning(reason)})")
        delay = self._retry(self._refused_attempt)
        self._refused_attempt += 1
        self.refusals.report(what, delay)
        self._refused_retry = self.clock.callLater(delay, self._retryRefused)

    def _cancelRefusedRetry(self) -> None:
        retry, self._refused_retry = self._refused_retry, None
        if retry is not None and retry.active():
            retry.cancel()

    def _retryRefused(self) -> None:
        """SUBSCRIBE again the channels refused for now that are still wanted."""
        self._refused_retry = None
        proto = self._sub
        if proto is None:
            return  # the reconnection subscribes them all
        listener = self._listener
        assert listener is not None
        refused, self._refused_for_now = self._refused_for_now, {}
        wanted = set(listener.wantedChannels())
        if self._probe_channel in refused:
            reason = refused.pop(self._probe_channel)
            if reason.startswith("MOVED "):
                self._probeMoved()
            refused[self._probe_channel] = reason
        channels = [c for c in refused if c in wanted or c == self._probe_channel]
        self._waiting &= wanted
        outstanding = [len(channels)]
        subscribed_now: list[str] = []

        def settled(_: object = None) -> None:
            outstanding[0] -= 1
            if not outstanding[0] and self._sub is proto:
                self._resume(subscribed_now)
                self._scheduleRefusedRetry()

        def answered(reply: object, channel: str) -> None:
            if channel == self._probe_channel:
                self._probeSubscribed(reply)
                self._probe()
            elif self._sub is proto and channel in self._waiting:
                self._waiting.discard(channel)
                subscribed_now.append(channel)
            settled()

        def failed(failure: Failure, channel: str) -> None:
            if failure.check(txredisapi.ResponseError) and self._sub is proto:
                reason = failure.getErrorMessage()
                if channel == self._probe_channel:
                    self._probeRefused(Failure(SubscriptionRefused(channel, reason)))
                elif channel in listener.wantedChannels():
                    self._channelRefused(channel, reason)
            settled()

        if not channels:
            self._scheduleRefusedRetry()
            return
        for channel in channels:
            subscribed: defer.Deferred[Any] = proto.subscribe(channel)
            subscribed.addCallbacks(answered, failed, callbackArgs=(channel,),
                                    errbackArgs=(channel,))

    def _probeMoved(self) -> None:
        """Before the probe channel is subscribed again: a broker whose probe channel
        must be on a slot of its node chooses it again here."""

    def _subscriberLost(self, proto: Any) -> None:
        if self._sub is not proto:
            return
        self._sub = None
        # the reconnection subscribes every channel, those refused for now included
        self._cancelRefusedRetry()
        self._refused_for_now = {}
        self._waiting.clear()
        barriers, self._barriers = self._barriers, {}
        for barrier in barriers.values():
            barrier.errback(BrokerUnavailable("lost the subscriber connection"))
        if self._stopping:
            return
        self.stats["reconnects"] += 1
        self.attempts["subscriber"].lost()
        self.log.warn("lost the Redis subscriber connection to {url}; reconnecting "
                      "(messages published meanwhile are lost)", url=self.address.safe_url)
        assert self._listener is not None
        self._listener.brokerDisconnected()

    def _commandReady(self, proto: Any) -> None:
        self._cmd = proto
        self._cmd_was_ready = True
        proto.whenDisconnected().addCallback(self._commandLost)
        waiters, self._cmd_waiters = self._cmd_waiters, []
        for waiter in waiters:
            waiter.callback(proto)

    def _commandWaitersFail(self, why: str) -> None:
        waiters, self._cmd_waiters = self._cmd_waiters, []
        for waiter in waiters:
            waiter.errback(BrokerUnavailable(why))

    def _commandConnection(self) -> defer.Deferred[Any]:
        """The command connection: at once when it is ready; while it is first being made
        (the server's start: the subscriber may be ready a round trip before it, and a
        client's first publish must not fail for that), once it is, within the timeout;
        otherwise (an attempt failed, or it was lost: Redis is down) BrokerUnavailable at
        once, so that a client is told without waiting."""
        if self._cmd is not None:
            return defer.succeed(self._cmd)
        if self._stopping or self._cmd_was_ready or self.attempts["command"].problem:
            return defer.fail(BrokerUnavailable(
                f"Redis at {self.address.safe_url} is not connected"))
        waiter: defer.Deferred[Any] = defer.Deferred(
            lambda d: self._cmd_waiters.remove(d) if d in self._cmd_waiters else None)
        self._cmd_waiters.append(waiter)

        def late(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError)
            raise BrokerUnavailable(f"Redis at {self.address.safe_url} is not connected "
                                    f"(not within {self.timeout} s)")

        return waiter.addTimeout(self.timeout, self.clock).addErrback(late)

    def _followMaster(self) -> None:
        """With Sentinels: ask them where the master is, and drop each connection made
        to another server. A master demoted by a failover keeps its clients until the
        Sentinels reconfigure it (up to ten seconds later), and even then keeps its
        pub/sub clients (Sentinel kills only the normal ones): without this check the
        subscriber would stay on a replica and the commands would go to a node that is no
        longer the master."""
        endpoint = self._endpoint
        if not isinstance(endpoint, SentinelEndpoint):
            return

        def compare(master: tuple[str, int]) -> None:
            for role, proto in (("subscriber", self._sub), ("command", self._cmd)):
                if proto is None or proto.transport is None:
                    continue
                was = endpoint.master_of(proto)
                if was is not None and was != master:
                    self.log.warn("Redis Sentinel: the master is now {new}; moving the "
                                  "{role} connection from {old}", role=role,
                                  new=f"{master[0]}:{master[1]}", old=f"{was[0]}:{was[1]}")
                    proto.transport.abortConnection()

        d = defer.Deferred.fromCoroutine(endpoint.master_address())
        d.addCallbacks(compare, lambda _: None)  # no answer: the next ping asks again

    def _commandLost(self, proto: Any) -> None:
        if self._cmd is proto:
            self._cmd = None
            if not self._stopping:
                self.attempts["command"].lost()

    def _refused(self, role: str, message: str) -> None:
        """txredisapi's AUTH or SELECT was refused (``message`` names which)."""
        self.attempts[role].failed(f"{message.removeprefix('Redis error: ')} (check the "
                                   "password, user and database)")

    def _ping(self) -> None:
        """Notice a deaf subscriber: no answer to PING within the timeout -> reconnect.
        Also send the delivery probe (see :attr:`delivering`)."""
        proto = self._sub
        if proto is None:
            return
        self._probe()
        self._followMaster()

        def deaf(failure: Failure) -> None:
            if failure.check(defer.TimeoutError):
                self.stats["deaf"] += 1

        self._bounded(proto.execute_command("PING"), proto).addErrback(deaf)

    def barrier(self) -> defer.Deferred[None]:
        """A marker published on the probe channel through the command connection: Redis
        delivers it to the subscriber after everything published before it."""
        if self._sub is None or self._probe_refused:
            return defer.fail(BrokerUnavailable("no subscriber to order against"))
        self._barrier_count += 1
        marker = b"barrier:%d" % self._barrier_count

        def forget(_: object) -> None:
            self._barriers.pop(marker, None)

        def failed(failure: Failure) -> None:
            if self._barriers.pop(marker, None) is d:
                d.errback(failure)

        d: defer.Deferred[None] = defer.Deferred(forget)
        self._barriers[marker] = d
        self.publish(self._probe_channel, marker).addErrback(failed)
        return d.addTimeout(self.timeout, self.clock)

    def _probe(self) -> None:
        self.publish(self._probe_channel, b"probe").addErrback(lambda _: None)

    # Messages

    def _messageReceived(self, channel: bytes, message: bytes) -> None:
        assert self._listener is not None
        name = channel.decode("utf-8", "replace")
        if name == self._probe_channel:
            self._probe_seen = self.clock.seconds()
            barrier = self._barriers.pop(message, None)
            if barrier is not None:
                barrier.callback(None)
            return
        self._listener.messageReceived(name, message)

    # IBroker commands

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        proto = self._sub
        if proto is None:
            preparing = self._preparing
            if preparing is not None and preparing.subscribing:
                # The new connection's SUBSCRIBEs are on their way: add this one to them.
                return preparing.subscribe(channel).addErrback(self._refusedLive, channel)
            # Subscribed on (re)connection: the listener lists it.
            return defer.fail(BrokerUnavailable("not connected to Redis"))

        def refused(failure: Failure) -> Failure:
            if failure.check(txredisapi.ResponseError):
                raise SubscriptionRefused(channel, failure.getErrorMessage())
            return failure

        subscribed: defer.Deferred[Any] = proto.subscribeSoon(channel)
        return subscribed.addCallbacks(lambda _: None, refused).addErrback(
            self._refusedLive, channel)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        proto = self._sub
        if proto is None:
            return defer.succeed(None)
        unsubscribed: defer.Deferred[Any] = proto.unsubscribeSoon(channel)
        return unsubscribed.addCallback(lambda _: None)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        """PUBLISH, then (``expire`` > 0) SET EX once PUBLISH succeeded: a message Redis
        refused to publish is never stored, and a message published but not stored fails
        with :class:`~ws4tx.server.broker.NotStored` (never as undelivered)."""
        command = self.publish_command
        d = self._command(lambda proto: proto.execute_command(command, channel, payload))
        if expire > 0:
            d.addCallback(self._store, channel, payload, expire)
        return d

    def _store(self, receivers: int, channel: str, payload: bytes,
               expire: int) -> defer.Deferred[int]:
        def failed(failure: Failure) -> NoReturn:
            self.stats["store_failures"] += 1
            reason = failure.getErrorMessage()
            self.log.warn("a message on {channel} reached {receivers} subscribers but was "
                          "not stored: {reason}", channel=channel, receivers=receivers,
                          reason=reason)
            raise NotStored(receivers, reason)

        d = self._command(
            lambda proto: proto.execute_command("SET", channel, payload, "EX", expire))
        return d.addCallbacks(lambda _: receivers, failed)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._command(lambda proto: proto.execute_command("GET", key))

    def fetchMany(self, keys: Sequence[str]) -> list[defer.Deferred[Optional[bytes]]]:
        """One ``MGET`` (a few when there are more than
        :data:`~ws4tx.server.broker.BATCH` keys), sent together."""
        return batched(keys, self.mget)

    def mget(self, keys: Sequence[str]) -> defer.Deferred[list[Optional[bytes]]]:
        """The messages stored under ``keys`` (None where none), by one ``MGET``."""
        return self._command(lambda proto: proto.execute_command("MGET", *keys))

    def historyKeys(self, channel: str) -> tuple[str, str]:
        """The keys of ``channel``'s history here (stream, meta): ``ValueError`` for a
        channel outside the prefix."""
        return history_keys(self.prefix, channel)

    def historyChannel(self, channel: str) -> str:
        """The name the publish script publishes ``channel`` on, and stores its last
        message under, here (the channel itself on a plain Redis)."""
        return channel

    def publishWithHistory(self, channel: str, payload: bytes,
                           retention: _history.Retention,
                           expire: int = 0) -> defer.Deferred[_history.Published]:
        """``ws4tx/lua/publish.lua`` (see :meth:`IBroker.publishWithHistory`)."""
        try:
            keys = self.historyKeys(channel)
        except ValueError:
            return defer.fail()
        name = self.historyChannel(channel)
        script_keys, args = _history.publish_args(
            name, name, *keys, payload, retention, expire,
            sharded=self.publish_command == "SPUBLISH")
        return self._script(_history.PUBLISH_SCRIPT, script_keys, args).addCallback(
            _history.parse_published)

    def history(self, channel: str, retention: _history.Retention,
                since: Optional[int] = None,
                limit: Optional[int] = None) -> defer.Deferred[_history.History]:
        """``ws4tx/lua/history.lua`` (see :meth:`IBroker.history`)."""
        try:
            script_keys, args = _history.history_args(*self.historyKeys(channel), retention,
                                                      since, limit)
        except ValueError:
            return defer.fail()
        return self._script(_history.HISTORY_SCRIPT, script_keys, args).addCallback(
            _history.parse_history)

    def histories(self, reads: Sequence[_history.HistoryRead]
                  ) -> list[defer.Deferred[_history.History]]:
        """One call of ``ws4tx/lua/histories.lua`` (a few when there are more than
        :data:`~ws4tx.server.broker.BATCH` reads), sent together (see
        :meth:`IBroker.histories`)."""
        return batched(reads, self.readHistories, check=self._historyArgs)

    def _historyArgs(self, read: _history.HistoryRead) -> tuple[list[Any], list[Any]]:
        """The keys and arguments of ``read`` (``ValueError`` for a bad one)."""
        return _history.history_args(*self.historyKeys(read.channel), read.retention,
                                     read.since, read.limit)

    def readHistories(self, reads: Sequence[_history.HistoryRead]
                      ) -> defer.Deferred[list[_history.History]]:
        """The histories of ``reads`` by one call of ``ws4tx/lua/histories.lua`` (on a
        Redis Cluster, every channel of ``reads`` on one slot)."""
        try:
            script_keys, args = _history.histories_args(
                [self._historyArgs(read) for read in reads])
        except ValueError:
            return defer.fail()
        return self._script(_history.HISTORIES_SCRIPT, script_keys, args).addCallback(
            _history.parse_histories)

    def updatePresence(self, keys: PresenceKeys, ttl: float,
                       changes: list[tuple[str, str, Optional[str], str]],
                       audiences: Optional[dict[str, tuple[str, ...]]] = None,
                       ) -> defer.Deferred[list[str]]:
        """``ws4tx/lua/presence.lua`` (see :meth:`IBroker.updatePresence`)."""
        script_keys, args = _presence.update_args(keys, ttl, changes, audiences)
        return self._script(_presence.UPDATE_SCRIPT, script_keys, args).addCallback(
            _presence.gone_ids)

    def readPresence(self, keys: PresenceKeys, what: str,
                     audience: Optional[str] = None) -> defer.Deferred[Any]:
        """``ws4tx/lua/presence_read.lua`` (see :meth:`IBroker.readPresence`)."""
        script_keys, args = _presence.read_args(keys, what, audience)
        return self._script(_presence.READ_SCRIPT, script_keys, args)

    def _script(self, name: str, keys: list[Any], args: list[Any]) -> defer.Deferred[Any]:
        """Run the Lua script ``name`` by its SHA (EVALSHA); a Redis that does not have
        it (restarted, SCRIPT FLUSH) gets its text (EVAL), which loads it again."""
        sha = _history.script_sha(name)

        def run(proto: Any) -> defer.Deferred[Any]:
            def noscript(failure: Failure) -> Any:
                if failure.check(txredisapi.ResponseError) and \
                        str(failure.value).startswith("NOSCRIPT"):
                    return proto.execute_command("EVAL", _history.script(name), len(keys),
                                                 *keys, *args)
                return failure

            evaluated: defer.Deferred[Any] = proto.execute_command(
                "EVALSHA", sha, len(keys), *keys, *args)
            return evaluated.addErrback(noscript)

        return self._command(run)

    def _command(self, run: Callable[[Any], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        d = self._commandConnection().addCallback(
            lambda proto: self._bounded(run(proto), proto))

        def unavailable(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError, txredisapi.ConnectionError):
                raise BrokerUnavailable(f"Redis did not answer: {failure.getErrorMessage()}")
            if failure.check(txredisapi.ResponseError) and \
                    is_acl_refusal(failure.getErrorMessage()):
                raise CommandRefused(failure.getErrorMessage())
            return failure

        return d.addErrback(unavailable)
