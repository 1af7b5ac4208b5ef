"""The Redis topologies a server-level contract runs on, one mixin each, to be put after
the contract (whose :meth:`serverArguments` then wins) and before
:class:`test._server.ServerTestCase`: three shards, a Sentinel group, a Cluster (started
once for the class). Each starts its Redis and then the server under test with
:meth:`serverArguments` (extra ``startServer`` arguments; none unless a suite says)."""

from __future__ import annotations

from typing import Any

from twisted.internet import threads

from ws4tx.redis_address import RedisAddress

from test._cluster import Cluster
from test._sentinel import SentinelGroup


class _Topology:
    def serverArguments(self) -> dict[str, Any]:
        """Keyword arguments for ``startServer`` (e.g. ``handlers``)."""
        return {}


class Shards(_Topology):
    """Three Redis servers, channels placed by name."""

    async def _setUp(self: Any) -> None:
        from ws4tx.server.embedded import EmbeddedRedis

        self.servers = []
        for _ in range(3):
            server = EmbeddedRedis()
            server.start()
            self.addCleanup(server.stop)
            self.servers.append(server)
        await self.startServer(**self.serverArguments(), config={
            "redis_shards": tuple(s.address for s in self.servers)})

    async def redisAddress(self: Any) -> RedisAddress:
        address: RedisAddress = self.servers[0].address
        return address


class Sentinel(_Topology):
    """A master and its replica behind Sentinels."""

    async def _setUp(self: Any) -> None:
        self.group = SentinelGroup()
        await threads.deferToThread(self.group.start)
        self.addCleanup(self.group.stop)
        await self.startServer(**self.serverArguments())

    async def redisAddress(self: Any) -> RedisAddress:
        address: RedisAddress = self.group.address()
        return address


class ClassCluster:
    """A Redis Cluster of three primaries (with a replica of the first when ``replica``),
    started once for the test class (it takes a few seconds) and shared by its tests;
    to be put before the test case class. :meth:`Cluster.start` stops what it started
    when it fails."""

    cluster: Cluster
    replica = False

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(replica=cls.replica)
        cls.cluster.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()


class ClusterOfThree(ClassCluster, _Topology):
    """Three primaries of a Redis Cluster (started once for the class)."""

    async def _setUp(self: Any) -> None:
        await self.startServer(**self.serverArguments())

    async def redisAddress(self) -> RedisAddress:
        return RedisAddress(
            cluster_nodes=tuple(("127.0.0.1", s.port) for s in self.cluster.servers))
