"""Redis Sentinel: a ws4tx server and the Django publisher given a redis+sentinel:// URL
find the master through real Sentinels, and follow it when it crashes and a replica takes
over."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from twisted.internet import defer, reactor, task, threads

from ws4tx import _sync_redis, envelope
from ws4tx.redis_address import RedisAddress
from ws4tx.server.sentinel import SentinelEndpoint, SentinelError

from test._control_contract import ControlAcrossNodesContract
from test._django import setup_django
from test._sentinel import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, SentinelGroup
from test._server import ServerTestCase, identity_header, start_node

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

EVENTS = (envelope.SUBPROTOCOL,)
JOHN = identity_header("john", (), "s-john")

#: The bound the docs state for delivery to resume after the master crashes: the
#: Sentinels' down-after time, their failover (measured at 1 to 3 s here), and one retry
#: delay of the broker (0.5 s doubling, with jitter, to at most 10 s; the retries that
#: failed while the master was down make it a few seconds).
RESUME_BOUND = DOWN_AFTER_MS / 1000 + FAILOVER_TIMEOUT_MS / 1000 + 10.0


def _publish(channel: str, message: str) -> int:
    """Publish through the Django side's client (redis-py's Sentinel master_for)."""
    from ws4tx.publisher import RedisPublisher

    return RedisPublisher(facility=channel, broadcast=True).publish_message(message)


class _SentinelServerCase(ServerTestCase):
    """A ws4tx server whose --redis is a redis+sentinel:// URL; the Django side is given
    the same URL."""

    group_kwargs: dict = {}
    #: One group for all the class's tests (a start waits seconds for the Sentinels to
    #: discover each other), for classes none of whose tests fails the master over: each
    #: test starts with it emptied (FLUSHALL, which the replica has followed).
    shared_group = False
    _class_group: Optional[SentinelGroup] = None

    @classmethod
    def setUpClass(cls) -> None:
        if cls.shared_group:
            group = SentinelGroup(**cls.group_kwargs)
            group.start()
            cls._class_group = group

    @classmethod
    def tearDownClass(cls) -> None:
        group, cls._class_group = cls._class_group, None
        if group is not None:
            group.stop()

    async def _setUp(self) -> None:
        setup_django()
        if self._class_group is not None:
            self.group = self._class_group
            await threads.deferToThread(self._emptied, self.group.client(self.group.master))
        else:
            self.group = SentinelGroup(**self.group_kwargs)
            await threads.deferToThread(self.group.start)
            self.addCleanup(self.group.stop)
        self.redis = self.group.client(self.group.master)
        _sync_redis.use_url(self.group.address().url)
        self.addCleanup(_sync_redis.reset)
        await self.startServer()

    async def redisAddress(self) -> RedisAddress:
        return self.group.address()

    @staticmethod
    def _emptied(master: Any) -> None:
        master.flushall()
        if master.wait(1, 10_000) < 1:
            raise AssertionError("the replica did not follow FLUSHALL in time")


class SentinelServerTests(_SentinelServerCase):
    """Delivery through the master the Sentinels name, and across a failover."""

    async def test_djangoPublishedMessagesAreDelivered(self):
        """The server subscribes on the master the Sentinels name, and what the Django
        publisher sends (through the Sentinels too) reaches the client."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        receivers = await threads.deferToThread(_publish, "foobar", "hello")
        self.assertGreaterEqual(receivers, 1)
        self.assertEqual(await client.text(), "hello")
        endpoint = self.service.broker._endpoint
        self.assertIsInstance(endpoint, SentinelEndpoint)
        self.assertEqual(endpoint.master, ("127.0.0.1", self.group.master.port))

    async def test_failoverUnderSteadyPublishing(self):
        """SIGKILL the master while the Django side publishes every 50 ms: event clients
        are told ws4tx.interrupted then ws4tx.resumed, delivery resumes through the
        promoted replica within RESUME_BOUND, and the Django publisher follows too."""
        raw = await self.client("/ws/news?subscribe-broadcast")
        events = await self.client("/ws/news?subscribe-broadcast", JOHN, protocols=EVENTS)
        published: list[int] = []
        failures: list[str] = []
        sent = [0]

        def publish_next() -> defer.Deferred[None]:
            # one at a time (LoopingCall waits for the Deferred): numbers only grow
            number = sent[0] = sent[0] + 1
            d = threads.deferToThread(_publish, "news", f"m{number}")
            d.addCallbacks(lambda _: published.append(number),
                           lambda f: failures.append(f.getErrorMessage()))
            return d

        publisher = task.LoopingCall(publish_next)
        publisher.clock = reactor
        publisher.start(0.05)
        self.addCleanup(lambda: publisher.running and publisher.stop())
        self.assertTrue((await raw.text()).startswith("m"))

        crashed = time.monotonic()
        self.group.crash_master()
        await self.brokerEvent("disconnected")
        self.assertEqual(await _nextEvent(events), envelope.INTERRUPTED_EVENT)
        await self.brokerEvent("connected", timeout=RESUME_BOUND)
        reconnected = time.monotonic() - crashed
        # The event client: resumed, then messages again (what was published in between
        # may be lost: pub/sub is fire-and-forget).
        self.assertEqual(await _nextEvent(events), envelope.RESUMED_EVENT)
        # Published by the Django side after the server resubscribed: it must arrive,
        # which it can only through the new master (the old one is dead).
        after = sent[0] + 1
        while int((await raw.text())[1:]) < after:
            pass
        resumed = time.monotonic() - crashed
        publisher.stop()
        self.assertLess(resumed, RESUME_BOUND)
        self.assertEqual(self.service.broker._endpoint.master,
                         ("127.0.0.1", self.group.replica.port))
        print(f"\nsentinel failover: broker reconnected after {reconnected:.2f} s, delivery "
              f"resumed after {resumed:.2f} s; {len(failures)} publishes failed meanwhile")


    async def test_demotedMasterIsLeft(self):
        """A failover that keeps the old master running (SENTINEL FAILOVER, as for
        maintenance): the Sentinels reconfigure the old node only seconds later, and then
        leave its pub/sub clients connected. The server asks the Sentinels at each ping,
        leaves the old node (clients are told as for any outage) and delivers through
        the new master."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        await threads.deferToThread(self.group.client(self.group.sentinels[0]).execute_command,
                                    "SENTINEL", "FAILOVER", self.group.address().master_name)
        await self.brokerEvent("disconnected")
        await self.brokerEvent("connected", timeout=RESUME_BOUND)
        await threads.deferToThread(self.group.wait_switch, self.group.replica)
        self.assertEqual(self.service.broker._endpoint.master,
                         ("127.0.0.1", self.group.replica.port))
        await threads.deferToThread(_publish, "foobar", "after")
        self.assertEqual(await client.text(), "after")


async def _nextEvent(client) -> str:
    """The next ws4tx event name (skipping raw messages)."""
    while True:
        frame = await client.text()
        if frame.startswith('{"ws4tx"'):
            return json.loads(frame)["event"]


class SentinelTwoNodesTests(ControlAcrossNodesContract, _SentinelServerCase):
    """Two nodes on one Sentinel group, the Django side on it too."""

    shared_group = True

    async def _setUp(self) -> None:
        await super()._setUp()
        first = SimpleNamespace(service=self.service, factory=self.factory, port=self.port)
        self.nodes = [first, await start_node(self, self.config.replace(
            redis=self.group.address()))]


class SentinelPasswordTests(_SentinelServerCase):
    """A password on the master and another on the Sentinels."""

    group_kwargs = {"password": "master-secret", "sentinel_password": "sentinel-secret"}
    shared_group = True

    async def test_djangoPublishedMessagesAreDelivered(self):
        """Both halves authenticate to the Sentinels and to the master, each with its own
        password."""
        client = await self.client("/ws/foobar?subscribe-broadcast")
        await threads.deferToThread(_publish, "foobar", "hello")
        self.assertEqual(await client.text(), "hello")

    async def test_wrongSentinelPasswordIsNamed(self):
        """Sentinels refusing the password fail the attempt with their answer, and the
        log never shows the password."""
        address = self.group.address(sentinel_password="wrong")
        endpoint = SentinelEndpoint(reactor, address, timeout=5.0)
        with self.assertRaises(SentinelError) as caught:
            await endpoint.master_address()
        self.assertIn("WRONGPASS", str(caught.exception))
        self.assertNotIn("sentinel-secret", address.safe_url)

    async def test_replicaIsNeverUsedAsTheMaster(self):
        """A connection that reaches a replica (a Sentinel answering with stale news) is
        refused after AUTH and ROLE, before the caller's protocol ever sees it; the real
        master is accepted."""
        from twisted.internet.protocol import Factory, Protocol

        replica = ("127.0.0.1", self.group.replica.port)

        class Stale(SentinelEndpoint):
            async def master_address(self):
                return replica

        built: list[Protocol] = []
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = lambda addr: built.append(Protocol()) or built[-1]
        endpoint = Stale(reactor, self.group.address(), timeout=5.0)
        with self.assertRaises(SentinelError) as caught:
            await endpoint.connect(factory)
        self.assertIn("is a slave, not the master", str(caught.exception))
        self.assertEqual(built, [])
        real = SentinelEndpoint(reactor, self.group.address(), timeout=5.0)
        proto = await real.connect(factory)
        self.addCleanup(proto.transport.loseConnection)
        self.assertEqual(built, [proto])
        self.assertEqual(real.master_of(proto), ("127.0.0.1", self.group.master.port))
