"""A ws4tx server on a free port, against a real Redis the test starts, for integration
tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import redis
from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from ws4tx import naming
from ws4tx.naming import ANONYMOUS, Identity
from ws4tx.redis_address import RedisAddress
from ws4tx.server.auth import HandshakeRequest
from ws4tx.server.config import ServerConfig
from ws4tx.server.directwrite import DirectWriteReactor
from ws4tx.server.embedded import EmbeddedRedis
from ws4tx.server.protocol import PushProtocol
from ws4tx.server.service import PushService
from ws4tx.testing import StaticAuthenticator

from test._wsclient import TIMEOUT, WSClient, connect

#: The header by which test clients say who they are (see :func:`identity_header`).
IDENTITY_HEADER = "x-test-identity"


def identity_header(user: Optional[str] = None, groups: tuple[str, ...] = (),
                    session: Optional[str] = None) -> dict[str, str]:
    """Headers that make the test authenticator give this identity."""
    return {IDENTITY_HEADER: f"{user or ''};{','.join(groups)};{session or ''}"}


def identity_from_header(request: HandshakeRequest) -> Identity:
    value = request.headers.get(IDENTITY_HEADER)
    if not value:
        return ANONYMOUS
    user, groups, session = value.split(";")
    return Identity(user=user or None,
                    groups=frozenset(g for g in groups.split(",") if g),
                    session=session or None)


class _Observed(PushProtocol):
    """Tells the test when each client's subscriptions are in place."""

    def onOpen(self) -> None:
        super().onOpen()
        self.subscribed.addCallback(lambda _: self.factory.test_joined.put(self))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        super().onClose(wasClean, code, reason)
        self.factory.test_left.put(self)


def observe_broker(router: Any) -> defer.DeferredQueue[str]:
    """Queue the router's broker events ("connected", "disconnected") for a test."""
    events: defer.DeferredQueue[str] = defer.DeferredQueue()
    for name, event in (("brokerConnected", "connected"),
                        ("brokerDisconnected", "disconnected")):
        original = getattr(router, name)

        def observed(original: Any = original, event: str = event) -> None:
            original()
            events.put(event)

        setattr(router, name, observed)
    return events


def non_probe(channels: list[bytes], prefix: Optional[str] = "ws4tx") -> list[str]:
    """Channel names without the broker's own delivery probe and the nodes' control
    channel (always subscribed): the channels clients asked for."""
    control = naming.control_channel(prefix).encode()
    return sorted(c.decode() for c in channels
                  if not c.startswith(b"__ws4tx_probe__") and c != control)


def _autobahn_timers_fired() -> defer.Deferred[None]:
    """Wait for Autobahn's batched timers (txaio buckets of close-handshake timeouts),
    which outlive their connections by up to a second and would make trial call the reactor
    unclean."""
    pending = [c for c in reactor.getDelayedCalls()
               if getattr(c.func, "__name__", "") == "_notify_bucket"]
    if not pending:
        return defer.succeed(None)
    last = max(c.getTime() for c in pending)
    return task.deferLater(reactor, max(0.0, last - reactor.seconds()) + 0.01, lambda: None)


async def start_node(case: unittest.TestCase, config: ServerConfig,
                     authenticator: Any = None) -> SimpleNamespace:
    """Another node for ``case`` (a PushService listening on a free port, observed like a
    ServerTestCase's own), its broker connected: its service, factory, port and broker
    events; stopped by the case's cleanups."""
    service = PushService(config, authenticator=authenticator
                          or StaticAuthenticator(identity_from_header))
    factory = service.factory
    factory.protocol = _Observed
    factory.test_joined = defer.DeferredQueue()
    factory.test_left = defer.DeferredQueue()
    events = observe_broker(factory.node.router)
    service.startService()
    case.addCleanup(service.stopService)
    port = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1").listen(service.site)
    case.addCleanup(port.stopListening)
    case.assertEqual(await events.get().addTimeout(TIMEOUT, reactor), "connected")
    return SimpleNamespace(service=service, factory=factory, port=port.getHost().port,
                           events=events)


class ServerTestCase(unittest.TestCase):
    """Starts a Redis and a ws4tx server per test; ``self.redis`` is a redis-py client."""

    # Most tests publish from anonymous clients, which a default server refuses; several
    # open hundreds of connections from 127.0.0.1, past the default per-address cap
    # (test_limits tests the cap itself).
    config = ServerConfig(ping_interval=0, redis_ping_interval=1.0, redis_timeout=5.0,
                          anonymous_publish=True, max_connections_per_ip=0)
    redis_args: tuple[str, ...] = ()

    def startRedis(self) -> EmbeddedRedis:
        server = EmbeddedRedis(extra_args=self.redis_args)
        server.start()
        self.addCleanup(server.stop)
        return server

    def setUp(self) -> defer.Deferred[None]:
        self.addCleanup(_autobahn_timers_fired)
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startServer()

    def useDjangoSide(self, **settings: Any) -> None:
        """Set Django up for the Django half, with ``settings`` overridden for this test,
        publishing to the test's Redis (call after ``startRedis``)."""
        from django.test import override_settings

        from ws4tx import _sync_redis

        from test._django import setup_django

        setup_django()
        override = override_settings(**settings)
        override.enable()
        self.addCleanup(override.disable)
        _sync_redis.use_url(self.redis_server.url)
        self.addCleanup(_sync_redis.reset)

    async def redisAddress(self) -> RedisAddress:
        """Where the server under test finds Redis."""
        return self.redis_server.address

    async def startServer(self, wait: bool = True, **kwargs: Any) -> None:
        config = self.config.replace(redis=await self.redisAddress(),
                                     **kwargs.pop("config", {}))
        kwargs.setdefault("authenticator", StaticAuthenticator(identity_from_header))
        self.service = PushService(config, **kwargs)
        self.factory = self.service.factory
        self.factory.protocol = _Observed
        self.factory.test_joined = defer.DeferredQueue()
        self.factory.test_left = defer.DeferredQueue()
        self._observeBroker()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        # As PushService listens: direct writes unless the config turns them off.
        listening = DirectWriteReactor(reactor) if config.direct_writes else reactor
        port = await endpoints.TCP4ServerEndpoint(
            listening, 0, backlog=1024, interface="127.0.0.1").listen(self.service.site)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        if wait:
            await self.whenRedisConnected()

    def _observeBroker(self) -> None:
        self.broker_events = observe_broker(self.factory.node.router)

    async def brokerEvent(self, expected: str, timeout: float = TIMEOUT) -> None:
        """Wait (bounded) for the next broker event and check it is ``expected``."""
        event = await self.broker_events.get().addTimeout(timeout, reactor)
        self.assertEqual(event, expected)

    async def whenRedisConnected(self) -> None:
        """Wait (bounded) for the broker's first connection."""
        await self.brokerEvent("connected")

    async def client(self, path: str, headers: Optional[dict[str, str]] = None,
                     protocols: tuple[str, ...] = (), subscribed: bool = True) -> WSClient:
        """A connected client whose subscriptions are in place when this returns."""
        client = await connect(self.port, path, protocols=protocols, headers=headers)
        self.addCleanup(client.close)
        if subscribed:
            await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return client

    async def stored(self, key: str, timeout: float = TIMEOUT) -> Optional[bytes]:
        """What Redis holds under ``key`` once something is there (a stored message is
        SET after its PUBLISH was answered), read on each reactor turn; None if nothing
        came within ``timeout``."""
        deadline = reactor.seconds() + timeout
        while True:
            value = self.redis.get(key)
            if value is not None or reactor.seconds() > deadline:
                return value
            await task.deferLater(reactor, 0, lambda: None)

    def publish(self, channel: str, message: bytes | str) -> int:
        """Publish with redis-py, as another process would."""
        return int(self.redis.publish(channel, message))

    def publishSteadily(self, channel: str) -> tuple[task.LoopingCall, list[int]]:
        """Publish ``"<n> "`` and 20,000 bytes on ``channel``, two every 10 ms (less than a
        64 KiB queue bound a turn: a client that reads keeps up), numbered from 0; the loop
        (stopped at the latest by the cleanups) and how many were sent so far, ``[n]``."""
        filler = "x" * 20_000
        sent = [0]

        def publish() -> None:
            for _ in range(2):
                self.publish(channel, f"{sent[0]} {filler}")
                sent[0] += 1

        loop = task.LoopingCall(publish)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        return loop, sent
