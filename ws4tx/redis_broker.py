"""The Redis broker: one subscriber connection per process, one command connection.

Both connections are Twisted ``ClientService``s speaking txredisapi's protocol, so they
reconnect by themselves with capped, jittered backoff. After every (re)connection the
subscriber subscribes again to whatever the listener (the router, from its hub) wants: Redis
forgets subscriptions with the connection, and txredisapi does not remember them. Channels
are subscribed one per command (txredisapi mismatches replies to multi-channel commands),
payloads are never converted to numbers, and a PING with a deadline every few seconds
notices a subscriber that is connected but deaf (a paused or half-dead Redis) and replaces
its connection.
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Callable, Optional

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ws4tx.broker import BrokerUnavailable, IBroker, IBrokerListener
from ws4tx.redis_address import RedisAddress

#: Retry delays: 0.5 s doubling to 10 s, each with up to 50 % random jitter.
DEFAULT_RETRY = backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0,
                              jitter=lambda: random.uniform(0, 0.5))


def client_endpoint(reactor: Any, address: RedisAddress, timeout: float) -> IStreamClientEndpoint:
    """A Twisted client endpoint for ``address`` (TCP, TLS or unix socket)."""
    if address.unix_socket_path:
        return endpoints.UNIXClientEndpoint(reactor, address.unix_socket_path, timeout=timeout)
    endpoint: IStreamClientEndpoint
    if isIPAddress(address.host):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, address.host, address.port, timeout)
    elif isIPv6Address(address.host):
        endpoint = endpoints.TCP6ClientEndpoint(reactor, address.host, address.port, timeout)
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, address.host, address.port,
                                              timeout=timeout)
    if address.ssl:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = endpoints.wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


def _keepAlive(proto: Any) -> Any:
    """TCP keepalive on a Redis connection: the kernel, too, notices a peer that vanished."""
    set_keep_alive = getattr(proto.transport, "setTcpKeepAlive", None)
    if set_keep_alive is not None:
        set_keep_alive(True)
    return proto


class _ClientService(ClientService):
    """A ClientService that logs its warnings but not each retry: the broker logs an outage
    once when it starts and once when it ends."""

    _log = Logger(observer=FilteringLogObserver(
        globalLogPublisher, [LogLevelFilterPredicate(LogLevel.warn)]))


class _Subscriber(txredisapi.SubscriberProtocol):
    broker: "RedisBroker"

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.broker._messageReceived(channel, message)


class _RedisFactory(Factory):
    """Builds txredisapi protocols for a ClientService, with ws4tx's settings."""

    # what txredisapi's protocol expects of its factory
    isLazy = True
    noisy = False

    def __init__(self, broker: "RedisBroker", protocol: type, role: str) -> None:
        self.broker = broker
        self.protocol = protocol
        self.role = role

    def buildProtocol(self, addr: Any) -> txredisapi.BaseRedisProtocol:
        address = self.broker.address
        proto = self.protocol(
            charset=None,
            password=address.password,
            username=address.username,
            dbid=address.db or None,
            convertNumbers=False,
        )
        proto.factory = self
        proto.broker = self.broker
        proto.callLater = self.broker.clock.callLater
        self.broker._connectionMade(self.role, proto)
        return proto

    def stopTrying(self) -> None:
        """txredisapi calls this when AUTH or SELECT fails; the ClientService goes on
        retrying (the password may be fixed on the server), with backoff."""

    def connectionError(self, message: str) -> None:
        self.broker._refused(self.role, message)


@implementer(IBroker)
class RedisBroker:
    """An :class:`~ws4tx.broker.IBroker` on a Redis server."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any = None,
        clock: Optional[IReactorTime] = None,
        ping_interval: float = 5.0,
        timeout: float = 5.0,
        retry_policy: Callable[[int], float] = DEFAULT_RETRY,
        endpoint: Optional[IStreamClientEndpoint] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.address = address
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.ping_interval = ping_interval
        self.timeout = timeout
        self._retry = retry_policy
        self._endpoint = endpoint or client_endpoint(reactor, address, timeout)
        self._listener: Optional[IBrokerListener] = None
        self._sub: Optional[_Subscriber] = None
        self._cmd: Optional[txredisapi.BaseRedisProtocol] = None
        self._services: list[ClientService] = []
        self._pinger: Optional[LoopingCall] = None
        self._down_since: Optional[float] = None
        self._refusal_logged: set[str] = set()
        self._stopping = False
        self._probe_channel = f"__ws4tx_probe__:{uuid.uuid4().hex}"
        self._probe_seen: Optional[float] = None
        #: Counters: reconnections of the subscriber, and deaf connections replaced.
        self.stats = {"reconnects": 0, "deaf": 0}

    @property
    def connected(self) -> bool:
        return self._sub is not None

    @property
    def delivering(self) -> bool:
        """Whether a probe message published through the command connection came back
        through the subscriber lately (within three ping intervals): the whole path a
        message takes works, not just the sockets."""
        if self._sub is None:
            return False
        if self.ping_interval <= 0:
            return True
        return (self._probe_seen is not None
                and self.clock.seconds() - self._probe_seen <= 3 * self.ping_interval)

    # Lifecycle

    def start(self, listener: IBrokerListener) -> None:
        self._listener = listener
        self._down_since = self.clock.seconds()
        self._services = [
            _ClientService(self._endpoint, _RedisFactory(self, _Subscriber, "subscriber"),
                          retryPolicy=self._retry, clock=self.clock),
            _ClientService(self._endpoint,
                          _RedisFactory(self, txredisapi.RedisProtocol, "command"),
                          retryPolicy=self._retry, clock=self.clock),
        ]
        for service in self._services:
            service.startService()
        if self.ping_interval > 0:
            self._pinger = LoopingCall(self._ping)
            self._pinger.clock = self.clock
            self._pinger.start(self.ping_interval, now=False)
        self.log.info("connecting to Redis at {url}", url=self.address.safe_url)

    def stop(self) -> defer.Deferred[None]:
        self._stopping = True
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        ds = [defer.maybeDeferred(s.stopService) for s in self._services]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # Connections

    def _connectionMade(self, role: str, proto: Any) -> None:
        """A new connection (not usable before AUTH/SELECT are done): get it ready."""
        d: defer.Deferred[Any] = defer.Deferred()
        # A connection without AUTH/SELECT is ready inside makeConnection(), before the
        # ClientService knows it exists: go on one reactor turn later.
        proto.whenConnected().addCallback(
            lambda p: self.clock.callLater(0, lambda: d.called or d.callback(p)))
        proto.whenDisconnected().addCallback(
            lambda p: d.called or d.errback(BrokerUnavailable("lost while connecting")))
        ready = self._subscriberReady if role == "subscriber" else self._commandReady
        self._bounded(d, proto).addCallback(_keepAlive).addCallback(ready).addErrback(
            self._notReady, role)

    def _notReady(self, failure: Failure, role: str) -> None:
        self.log.debug("Redis {role} connection not ready: {error}", role=role,
                       error=failure.getErrorMessage())

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

    @defer.inlineCallbacks
    def _subscriberReady(self, proto: Any) -> Any:
        proto.whenDisconnected().addCallback(self._subscriberLost)
        assert self._listener is not None
        channels = list(self._listener.wantedChannels())
        # Written all at once, before anything else can be: replies come back in order.
        subscribed = [proto.subscribe(channel) for channel in [self._probe_channel, *channels]]
        yield self._bounded(defer.gatherResults(subscribed, consumeErrors=True), proto)
        if not proto.connected or self._stopping:
            return
        self._sub = proto
        self._refusal_logged.discard("subscriber")
        if self._down_since is not None:
            down = self.clock.seconds() - self._down_since
            self._down_since = None
            if self.stats["reconnects"]:
                self.log.warn("Redis subscriber connection restored after {down:.1f} s; "
                              "{n} channels resubscribed", down=down, n=len(channels))
            else:
                self.log.info("Redis subscriber connected to {url}",
                              url=self.address.safe_url)
        self._listener.brokerConnected()
        self._probe()

    def _subscriberLost(self, proto: Any) -> None:
        if self._sub is not proto:
            return
        self._sub = None
        if self._stopping:
            return
        self.stats["reconnects"] += 1
        self._down_since = self.clock.seconds()
        self.log.warn("lost the Redis subscriber connection to {url}; reconnecting "
                      "(messages published meanwhile are lost)", url=self.address.safe_url)
        assert self._listener is not None
        self._listener.brokerDisconnected()

    def _commandReady(self, proto: Any) -> None:
        self._cmd = proto
        self._refusal_logged.discard("command")
        proto.whenDisconnected().addCallback(self._commandLost)

    def _commandLost(self, proto: Any) -> None:
        if self._cmd is proto:
            self._cmd = None

    def _refused(self, role: str, message: str) -> None:
        if role not in self._refusal_logged:
            self._refusal_logged.add(role)
            self.log.error("Redis at {url} refused the {role} connection: {message}; "
                           "check the password and database, retrying",
                           url=self.address.safe_url, role=role, message=message)

    def _ping(self) -> None:
        """Notice a deaf subscriber: no answer to PING within the timeout -> reconnect.
        Also send the delivery probe (see :attr:`delivering`)."""
        proto = self._sub
        if proto is None:
            return
        self._probe()

        def deaf(failure: Failure) -> None:
            if failure.check(defer.TimeoutError):
                self.stats["deaf"] += 1

        self._bounded(proto.execute_command("PING"), proto).addErrback(deaf)

    def _probe(self) -> None:
        self.publish(self._probe_channel, b"probe").addErrback(lambda _: None)

    # Messages

    def _messageReceived(self, channel: bytes, message: bytes) -> None:
        assert self._listener is not None
        name = channel.decode("utf-8", "replace")
        if name == self._probe_channel:
            self._probe_seen = self.clock.seconds()
            return
        self._listener.messageReceived(name, message)

    # IBroker commands

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        proto = self._sub
        if proto is None:
            # Subscribed on (re)connection: the listener lists it.
            return defer.fail(BrokerUnavailable("not connected to Redis"))
        return proto.subscribe(channel).addCallback(lambda _: None)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        proto = self._sub
        if proto is None:
            return defer.succeed(None)
        return proto.unsubscribe(channel).addCallback(lambda _: None)

    def publish(self, channel: str, payload: bytes, expire: int = 0) -> defer.Deferred[int]:
        def run(proto: Any) -> defer.Deferred[int]:
            d = proto.execute_command("PUBLISH", channel, payload)
            if expire > 0:
                stored = proto.execute_command("SET", channel, payload, "EX", expire)
                d = defer.gatherResults([d, stored], consumeErrors=True).addCallback(
                    lambda results: results[0])
            return d

        return self._command(run)

    def fetch(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._command(lambda proto: proto.execute_command("GET", key))

    def _command(self, run: Callable[[Any], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        proto = self._cmd
        if proto is None:
            return defer.fail(BrokerUnavailable(
                f"Redis at {self.address.safe_url} is not connected"))
        d = self._bounded(run(proto), proto)

        def unavailable(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError, txredisapi.ConnectionError):
                raise BrokerUnavailable(f"Redis did not answer: {failure.getErrorMessage()}")
            return failure

        return d.addErrback(unavailable)
