"""An SSE stream fed by POSTs, resumed by Last-Event-ID, on every Redis topology: shards,
Sentinel, Cluster (single Redis: test_posting). What a POST publishes lands in the history
of each of its channels on whichever server holds them; the stream comes back with one id
for all its channels and gets exactly what it missed."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor

from ws4tx import envelope, sharding

from test import _topologies
from test._server import ServerTestCase, identity_header
from test._sseclient import SSEClient, post, request
from test._wsclient import TIMEOUT

#: Whole Redis topologies (Sentinel groups, clusters): run in one tox env.
pytestmark = pytest.mark.system

HISTORY = {"chat*": {"size": 300, "ttl": 600}}
#: A facility whose two channels are on two servers, of three shards and of a cluster.
STREAM = "/ws/chat1?subscribe-broadcast&subscribe-user"
SEND = "/ws/chat1?publish-broadcast&publish-user"
JOHN = identity_header("john")
CHANNELS = ["ws4tx:broadcast:chat1", "ws4tx:user:john:chat1"]


class _Contract:
    """What every topology must do; mixed into a ServerTestCase whose Redis is one."""

    config = ServerTestCase.config.replace(history=HISTORY)

    async def stream(self: Any, **headers: str) -> SSEClient:
        response, client = await request(self.port, STREAM, {**JOHN, **headers})
        self.addCleanup(client.close)
        self.assertEqual(response.code, 200)
        told = "ws4tx.recovered" if "last-event-id" in headers else "ws4tx.positions"
        await client.until(lambda c: bool(c.named(told)))
        return client

    async def send(self: Any, n: int) -> None:
        status, _, body = await post(self.port, SEND,
                                     envelope.encode_event("note", n, n).encode(), JOHN)
        self.assertEqual((status, body), (200, [{"ws4tx": "ack", "id": n, "data": None}]))

    @staticmethod
    def got(client: SSEClient) -> list[tuple[str, Any]]:
        import json

        return [(m.json()["channel"], json.loads(m.json()["data"])["data"])
                for m in client.messages()]

    async def test_postedMessagesStreamAndResume(self: Any) -> None:
        """Each POST reaches both channels of the stream (each on its own server where
        the topology splits them); after a drop, two more POSTs; the stream resumed by
        its last id gets those four messages, each channel's in order, once."""
        client = await self.stream()
        await self.send(1)
        await client.until(lambda c: len(c.messages()) == 2)
        self.assertEqual(sorted(self.got(client)), [(CHANNELS[0], 1), (CHANNELS[1], 1)])
        last = client.last_id
        assert last is not None
        client.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        await self.send(2)
        await self.send(3)
        again = await self.stream(**{"last-event-id": last})
        self.assertEqual(again.named("ws4tx.recovered")[0].json()["recovered"], True)
        got = self.got(again)
        for channel in CHANNELS:
            self.assertEqual([n for c, n in got if c == channel], [2, 3])
        self.assertEqual(len(got), 4)


class ShardsTests(_Contract, _topologies.Shards, ServerTestCase):
    """Three Redis servers, channels placed by name."""

    def test_channelsOnTwoServers(self) -> None:
        """The stream's channels are placed on two of the three servers."""
        self.assertEqual(len({sharding.shard_of("ws4tx", c, 3) for c in CHANNELS}), 2)


class SentinelTests(_Contract, _topologies.Sentinel, ServerTestCase):
    """A master and its replica behind Sentinels."""


class ClusterTests(_Contract, _topologies.ClusterOfThree, ServerTestCase):
    """Three primaries of a Redis Cluster (started once for the class)."""

    def test_channelsOnTwoPrimaries(self) -> None:
        """The stream's channels are served by two of the three primaries."""
        with self.cluster.client(self.cluster.servers[0]) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        owners = {next(r[2][1] for r in ranges if r[0] <= slot <= r[1])
                  for slot in (sharding.key_slot(sharding.routing_name("ws4tx", c))
                               for c in CHANNELS)}
        self.assertEqual(len(owners), 2)
