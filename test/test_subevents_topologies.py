"""Events for a subscription's facility on every Redis topology: shards, Sentinel,
Cluster (single Redis: test_subevents). A client on /ws/ subscribed to two facilities
reaches each one's handler, and what each handler broadcasts and its presence come back
naming their facility, wherever the channels live."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import threads

from ws4tx.redis_address import RedisAddress

from test._cluster import Cluster
from test._sentinel import SentinelGroup
from test._server import ServerTestCase, identity_header
from test.test_subevents import Chat, Notes, event, subscribe

#: Whole Redis topologies (Sentinel groups, clusters): run in one tox env.
pytestmark = pytest.mark.system

EVENTS = ("ws4tx.v1",)
JOHN = identity_header("john", ("staff",), "s-john")
HANDLERS = [Chat, Notes]


class _Contract:
    """What every topology must do; mixed into a ServerTestCase whose Redis is one."""

    config = ServerTestCase.config.replace(presence=("chat",))

    async def test_eachFacilitysEventsComeBackNamingIt(self: Any) -> None:
        """Each subscription's shout reaches its facility's handler, whose broadcast comes
        back naming that facility; the chat's presence names it too."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "chat", broadcast=True))
        client.send(subscribe(2, "notes", broadcast=True, user=True))
        frames: list[dict[str, Any]] = []

        async def until(done: Any) -> None:
            while not done():
                frames.append(json.loads(await client.text()))

        await until(lambda: sum(f["ws4tx"] == "subscribed" for f in frames) == 2)
        client.send(event("shout", "to chat", id=3, facility="chat"))
        client.send(event("shout", "to notes", id=4, facility="notes"))
        await until(lambda: sum(f.get("event") == "shouted" for f in frames) == 2
                    and sum(f["ws4tx"] == "ack" for f in frames) == 2
                    and any(f.get("event") == "ws4tx.presence" for f in frames))
        self.assertEqual(sorted((f["facility"], f["data"]) for f in frames
                                if f.get("event") == "shouted"),
                         [("chat", "to chat"), ("notes", "to notes")])
        self.assertEqual({f["facility"] for f in frames
                          if f.get("event") == "ws4tx.presence"}, {"chat"})


class ShardsTests(_Contract, ServerTestCase):
    """Three Redis servers, channels placed by name."""

    async def _setUp(self) -> None:
        from ws4tx.server.embedded import EmbeddedRedis

        self.servers = []
        for _ in range(3):
            server = EmbeddedRedis()
            server.start()
            self.addCleanup(server.stop)
            self.servers.append(server)
        await self.startServer(handlers=HANDLERS, config={
            "redis_shards": tuple(s.address for s in self.servers)})

    async def redisAddress(self) -> RedisAddress:
        return self.servers[0].address


class SentinelTests(_Contract, ServerTestCase):
    """A master and its replica behind Sentinels."""

    async def _setUp(self) -> None:
        self.group = SentinelGroup()
        await threads.deferToThread(self.group.start)
        self.addCleanup(self.group.stop)
        await self.startServer(handlers=HANDLERS)

    async def redisAddress(self) -> RedisAddress:
        return self.group.address()


class ClusterTests(_Contract, ServerTestCase):
    """Three primaries of a Redis Cluster (started once for the class)."""

    cluster: Cluster

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster()
        try:
            cls.cluster.start()
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    async def _setUp(self) -> None:
        await self.startServer(handlers=HANDLERS)

    async def redisAddress(self) -> RedisAddress:
        return RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
