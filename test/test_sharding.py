"""Sharding over several independent Redis servers: one pure function places every
channel and key (Jump hash), both halves use it, every audience is delivered across two
nodes and three real Redis servers, stored messages, history and presence live on their
channel's server, and losing one server interrupts only its channels."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import redis
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import _django_settings, _sync_redis, envelope, naming, sharding
from ws4tx.naming import Identity
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress, parse_list, urls_text
from ws4tx.redis_store import PublishError
from ws4tx.server.config import ServerConfig
from ws4tx.server.embedded import EmbeddedRedis, free_port
from ws4tx.server.metrics import NodeCollector
from ws4tx.server.sharded_broker import ShardedBroker

from test._control_contract import ControlAcrossNodesContract
from test._django import setup_django
from test._server import ServerTestCase, start_node
from test._topologies import ClassCluster
from test._wsclient import TIMEOUT, WSClient, connect

EVENTS = (envelope.SUBPROTOCOL,)
PREFIX = "ws4tx"
SHARDS = 3

_names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                        blacklist_characters=":{}"),
                 min_size=1, max_size=24)
_facilities = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.~/\-]{0,20}", fullmatch=True)
_audiences = st.sampled_from(naming.AUDIENCES)


def _channel(audience: str, facility: str, name: str) -> str:
    return naming.channel(PREFIX, audience, facility, name)


class PlacementTests(SynchronousTestCase):
    """The pure function: FNV-1a, Jump hash, hash tags."""

    def test_fnv1a64KnownVectors(self):
        self.assertEqual(sharding.fnv1a_64(b""), 0xCBF29CE484222325)
        self.assertEqual(sharding.fnv1a_64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(sharding.fnv1a_64(b"foobar"), 0x85944171F73967E8)

    def test_jumpHashMovesOnlyToTheNewBucketAndBalances(self):
        """Going from n to n+1 buckets, a key stays or moves to bucket n (never between
        old buckets), and the buckets get about the same share."""
        keys = [sharding.fnv1a_64(f"ws4tx:user:u{i}:chat".encode()) for i in range(4000)]
        for n in range(1, 12):
            moved = 0
            for key in keys:
                before, after = sharding.jump_hash(key, n), sharding.jump_hash(key, n + 1)
                self.assertIn(after, (before, n))
                moved += before != after
            # about 1/(n+1) of the keys move
            self.assertLess(abs(moved / len(keys) - 1 / (n + 1)), 0.04)
        counts = Counter(sharding.jump_hash(key, 3) for key in keys)
        for bucket in range(3):
            self.assertLess(abs(counts[bucket] / len(keys) - 1 / 3), 0.04)
        self.assertRaises(ValueError, sharding.jump_hash, 1, 0)

    def test_placementIsPinned(self):
        """Every node and Django process must place a channel alike, whatever their
        ws4tx version: these placements never change."""
        found = [sharding.shard_of(PREFIX, name, 3) for name in (
            "ws4tx:broadcast:chat", "ws4tx:user:john:chat", "ws4tx:group:staff:news",
            "ws4tx:control", "ws4tx:history:{user:john:chat}:s",
            "ws4tx:presence:{chat}:c")]
        self.assertEqual(found, PINNED)
        self.assertEqual(sharding.shard_of(PREFIX, "anything", 1), 0)

    @given(_audiences, _facilities, _names)
    def test_historyKeysLiveWithTheirChannel(self, audience, facility, name):
        channel = _channel(audience, facility, name)
        stream, meta = naming.history_keys(PREFIX, channel)
        for shards in (2, 3, 5):
            where = sharding.shard_of(PREFIX, channel, shards)
            self.assertEqual(sharding.shard_of(PREFIX, stream, shards), where)
            self.assertEqual(sharding.shard_of(PREFIX, meta, shards), where)
        unprefixed = naming.channel(None, audience, facility, name)
        self.assertEqual(sharding.shard_of(None, naming.history_keys(None, unprefixed)[0], 3),
                         sharding.shard_of(None, unprefixed, 3))

    @given(_facilities, _names)
    def test_presenceKeysAndChannelShareAShard(self, facility, user):
        keys = naming.presence_keys(PREFIX, facility)
        where = {sharding.shard_of(PREFIX, k, 3)
                 for k in (keys.connections, keys.info, keys.users, keys.user_prefix + user,
                           keys.events)}
        self.assertEqual(len(where), 1)


#: The shards of PlacementTests.test_placementIsPinned's names, out of three.
PINNED = [2, 2, 0, 0, 2, 0]


class AddressListTests(SynchronousTestCase):
    """How several servers are written."""

    def test_spacesListsAndSentinelCommas(self):
        a, b = "redis://a:6379/0", "redis+sentinel://s1:26379,s2:26379/mymaster?db=1"
        self.assertEqual(parse_list(f"  {a}\n {b} ", "x"),
                         (RedisAddress.from_url(a), RedisAddress.from_url(b)))
        self.assertEqual(parse_list([a, b], "x"), parse_list(f"{a} {b}", "x"))
        self.assertEqual(parse_list(urls_text(parse_list([a, b], "x")), "x"),
                         parse_list([a, b], "x"))
        with self.assertRaisesRegex(InvalidRedisAddress, "setting W.*listed twice"):
            parse_list([a, "redis://a:6379/0"], "setting W")
        for bad in ("", [], [a, ""], 5):
            self.assertRaises(InvalidRedisAddress, parse_list, bad, "x")

    def test_aClusterIsOneShardAmongOthers(self):
        """A ``redis+cluster://`` URL may be any shard of a list (and goes through the
        workers' environment intact); a cluster node given again, as a plain server or in
        another cluster URL, is refused in one line that names the fix, by the settings
        and by ``twistd ws4tx --redis``."""
        from twisted.python import usage

        from ws4tx.server.tap import Options

        cluster = "redis+cluster://c1:7000,c2:7001"
        for urls in ([cluster, "redis://a:6379/0"], ["redis://a:6379/0", cluster],
                     ["redis+sentinel://s1:26379/m", cluster, "redis+cluster://d1:7000"]):
            found = parse_list(urls, "x")
            self.assertEqual([a.is_cluster for a in found],
                             [u.startswith("redis+cluster") for u in urls])
            self.assertEqual(parse_list(urls_text(found), "x"), found)
        for urls in ([cluster, "redis://c2:7001/0"], [cluster, "redis+cluster://c1:7000"]):
            with self.assertRaisesRegex(InvalidRedisAddress,
                                        r"^setting W: c.:700. is in shard 1 and in shard 2: "
                                        "give each Redis Cluster once") as caught:
                parse_list(urls, "setting W")
            self.assertNotIn("\n", str(caught.exception))
            with self.assertRaisesRegex(usage.UsageError, "^--redis: .* is in shard 1 and"):
                Options().parseOptions(["--redis", urls[0], "--redis", urls[1]])

    def test_settingsAndEnvironment(self):
        from ws4tx import redis_address

        env = {"WS4TX_REDIS_URL": "redis://e1/0 redis://e2/0"}
        self.assertEqual(len(redis_address.shards_from_settings(SimpleNamespace(), env)), 2)
        listed = SimpleNamespace(WS4TX_REDIS_URL=["redis://s1/0", "redis://s2/0",
                                                  "redis://s3/0"])
        self.assertEqual([a.host for a in redis_address.shards_from_settings(listed, env)],
                         ["s1", "s2", "s3"])
        with self.assertRaisesRegex(InvalidRedisAddress, "3 Redis servers"):
            redis_address.from_settings(listed, env)

    def test_commandLineRepeatsRedis(self):
        from ws4tx.server.tap import Options

        options = Options()
        options.parseOptions(["--redis", "redis://a:1/0", "-r", "redis://b:2/0"])
        self.assertEqual(options["redis"], ["redis://a:1/0", "redis://b:2/0"])
        from twisted.python import usage

        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--redis", "embedded", "--redis", "redis://b:2/0"])
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--redis", "redis://b:2/0", "--redis", "redis://b:2/0"])


    def test_workersGetEveryServerInOrder(self):
        """--workers hands each worker the servers through the environment, in order."""
        from ws4tx.server.tap import WORKER_REDIS_ENV, _worker_environment

        shards = parse_list("redis://a:1/0 redis://b:2/0 redis://c:3/0", "x")
        config = ServerConfig(redis=shards[0], redis_shards=shards)
        env = _worker_environment(config, {})
        self.assertEqual(parse_list(env[WORKER_REDIS_ENV], "x"), shards)
        self.assertEqual(config.shards, shards)
        self.assertEqual(ServerConfig().shards, (RedisAddress(),))


def _start_servers(testcase: Any) -> list[EmbeddedRedis]:
    servers = []
    for _ in range(SHARDS):
        server = EmbeddedRedis()
        server.start()
        testcase.addCleanup(server.stop)
        servers.append(server)
    return servers


class BothHalvesAgreeTests(SynchronousTestCase):
    """The Django side and the server place every channel on the same server: the same
    function, and the full path (what the Django side publishes and stores is on the
    server the Twisted side subscribes to)."""

    def setUp(self) -> None:
        setup_django()
        self.servers = _start_servers(self)
        self.addresses = tuple(s.address for s in self.servers)
        _sync_redis.use_url(urls_text(self.addresses))
        self.addCleanup(_sync_redis.reset)
        self.broker = ShardedBroker([object()] * SHARDS, _django_settings.prefix())  # type: ignore[list-item]
        self.direct = [redis.Redis.from_url(s.url) for s in self.servers]
        for client in self.direct:
            self.addCleanup(client.close)

    @settings(max_examples=300, deadline=None)
    @given(_audiences, _facilities, _names)
    def test_sameFunction(self, audience, facility, name):
        channel = _channel(audience, facility, name)
        self.assertEqual(_sync_redis.shard_index(channel), self.broker.shardOf(channel))
        stream, _ = naming.history_keys(PREFIX, channel)
        self.assertEqual(_sync_redis.shard_index(stream), self.broker.shardOf(channel))

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["user", "group"]), _names), min_size=1,
                    max_size=6, unique=True), _facilities)
    def test_publishedKeysAreOnTheChannelsServer(self, audiences, facility):
        """Publish (stored, and on a facility with history) from the Django side to
        several channels at once: each channel's stored message and history stream are
        on the server the Twisted side names, and on no other."""
        from django.test import override_settings

        from ws4tx import api

        users = [n for kind, n in audiences if kind == "user"]
        groups = [n for kind, n in audiences if kind == "group"]
        for history in (False, True):
            extra = {"WS4TX_HISTORY": {facility: {"size": 5, "ttl": 60}}} if history else {}
            with override_settings(**extra):
                api.publish(facility, f"hello {history}", users=users, groups=groups,
                            expire=60)
            for kind, name in audiences:
                channel = _channel(kind, facility, name)
                stream, _ = naming.history_keys(PREFIX, channel)
                where = self.broker.shardOf(channel)
                for index, client in enumerate(self.direct):
                    self.assertEqual(client.exists(channel), int(index == where), channel)
                    self.assertEqual(client.exists(stream), int(history and index == where))
                    if index == where:
                        self.assertEqual(client.get(channel), f"hello {history}".encode())
        for client in self.direct:
            client.flushdb()


class MixedListAgreementTests(SynchronousTestCase):
    """With a Redis Cluster among the shards, both halves place each channel on the same
    shard, and the Django side names it as that shard knows it: under its cluster name
    with SPUBLISH on the cluster, as it is with PUBLISH elsewhere (no server needed:
    placement reads the addresses only)."""

    def setUp(self) -> None:
        setup_django()
        self.addresses = parse_list(["redis://a:6379/0", "redis+cluster://c1:7000,c2:7001",
                                     "redis://b:6379/0"], "x")
        _sync_redis.use_url(urls_text(self.addresses))
        self.addCleanup(_sync_redis.reset)
        self.broker = ShardedBroker([object()] * 3, PREFIX)  # type: ignore[list-item]

    @settings(max_examples=300, deadline=None)
    @given(_audiences, _facilities, _names)
    def test_sameShardAndNameOnBothHalves(self, audience, facility, name):
        from ws4tx import _ops

        channel = _channel(audience, facility, name)
        shard = self.broker.shardOf(channel)
        self.assertEqual(_sync_redis.shard_index(channel), shard)
        self.assertEqual(_sync_redis.on_cluster(channel), shard == 1)
        op = _ops._publish_plain([channel], b"x", 0, _sync_redis.on_cluster)
        batch = next(op)
        (call,) = batch.calls
        self.assertEqual(call.name, channel)  # placed by the channel, on both halves
        self.assertEqual(call.command, ("SPUBLISH", naming.cluster_channel(channel), b"x")
                         if shard == 1 else ("PUBLISH", channel, b"x"))
        op.close()

    def test_registryAndControlFollowTheFirstShard(self):
        """The control channel, reply channels and registry are on the first shard: with
        a plain server first they keep their plain names, with a cluster first their
        cluster names (the control tag's slot)."""
        from ws4tx import _ops, control

        for first, addresses in ((False, self.addresses),
                                 (True, self.addresses[1:] + self.addresses[:1])):
            _sync_redis.use_url(urls_text(addresses))
            self.assertEqual(_sync_redis.on_cluster(None), first)
            channel = naming.control_channel(PREFIX)
            batch = next(_ops.command(control.Disconnect(sessions=frozenset({"s"})),
                                      _sync_redis.on_cluster))
            (call,) = batch.calls
            self.assertEqual(_sync_redis.shard_index(channel), 0)
            self.assertEqual(call.command[:2], ("SPUBLISH", naming.cluster_name(PREFIX, channel))
                             if first else ("PUBLISH", channel))


class _ShardedNodesCase(ServerTestCase):
    """Two nodes and the Django side over three Redis servers."""

    config = ServerTestCase.config.replace(presence=("pres",), presence_ttl=5.0)

    async def _setUp(self) -> None:
        setup_django()
        self.servers = _start_servers(self)
        self.addresses = tuple(s.address for s in self.servers)
        _sync_redis.use_url(urls_text(self.addresses))
        self.addCleanup(_sync_redis.reset)
        self.redis_server = self.servers[0]
        self.redis = redis.Redis.from_url(self.servers[0].url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.nodes = [await self.startNode(), await self.startNode()]

    async def startNode(self) -> SimpleNamespace:
        config = self.config.replace(redis=self.addresses[0], redis_shards=self.addresses)
        node = await start_node(self, config)
        self.assertIsInstance(node.service.broker, ShardedBroker)
        return node

    async def on(self, node: SimpleNamespace, path: str,
                 headers: Optional[dict[str, str]] = None,
                 protocols: tuple[str, ...] = ()) -> WSClient:
        client = await connect(node.port, path, headers=headers, protocols=protocols)
        self.addCleanup(client.close)
        await node.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return client

    def facilities(self, count: int) -> list[str]:
        """``count`` facilities whose broadcast channels are on each server in turn."""
        broker = self.nodes[0].service.broker
        found: list[str] = []
        i = 0
        while len(found) < count:
            name = f"room{i}"
            i += 1
            if broker.shardOf(naming.broadcast_channel(PREFIX, name)) == \
                    len(found) % len(broker.shards):
                found.append(name)
        return found


class ShardedServerTests(ControlAcrossNodesContract, _ShardedNodesCase):
    """Every audience, stored messages, presence and outages over three servers."""

    async def test_everyAudienceDeliversToExactlyItsRecipients(self):
        """Clients of three people on two nodes, on facilities spread over the three
        servers; the Django side publishes to each audience in turn: every client gets
        exactly the messages of its audiences, in order, and nothing else."""
        people = {
            "alice": Identity("alice", frozenset({"staff"}), "sa"),
            "bob": Identity("bob", frozenset({"staff", "ops"}), "sb"),
            "carol": Identity("carol", frozenset(), "sc"),
        }
        session_keys = {name: f"key-{name}" for name in people}
        people = {name: Identity(i.user, i.groups,
                                 _django_settings.session_channel(session_keys[name]))
                  for name, i in people.items()}
        facilities = self.facilities(6)
        flags = "subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
        clients: dict[tuple[str, str, int], WSClient] = {}
        for f_index, facility in enumerate(facilities):
            for p_index, (name, who) in enumerate(people.items()):
                node = self.nodes[(f_index + p_index) % 2]
                headers = {"x-test-identity":
                           f"{who.user};{','.join(sorted(who.groups))};{who.session}"}
                clients[(facility, name, 0)] = await self.on(
                    node, f"/ws/{facility}?{flags}", headers)
        used = {self.nodes[0].service.broker.shardOf(c)
                for f in facilities for who in people.values()
                for c in naming.audience_channels(PREFIX, f, naming.AUDIENCES, who)}
        self.assertEqual(used, set(range(SHARDS)))

        from ws4tx import api

        sends = [
            ({"broadcast": True}, set(people)),
            ({"users": ["alice"]}, {"alice"}),
            ({"users": ["bob", "carol"]}, {"bob", "carol"}),
            ({"groups": ["staff"]}, {"alice", "bob"}),
            ({"groups": ["ops"]}, {"bob"}),
            ({"sessions": [session_keys["carol"]]}, {"carol"}),
            ({"users": ["nobody"], "groups": ["nogroup"]}, set()),
        ]
        expected: dict[tuple[str, str, int], list[str]] = {key: [] for key in clients}
        for facility in facilities:
            for number, (audience, recipients) in enumerate(sends):
                text = f"{facility}/{number}"
                await threads.deferToThread(api.publish, facility, text, expire=0,
                                            **audience)
                for name in recipients:
                    # one frame per channel of the audience the client listens to
                    who = people[name]
                    times = len(set(naming.channels_for(
                        PREFIX, facility, broadcast=audience.get("broadcast", False),
                        users=audience.get("users", ()), groups=audience.get("groups", ()),
                        sessions=[_django_settings.session_channel(k)
                                  for k in audience.get("sessions", ())]))
                        & set(naming.audience_channels(PREFIX, facility, naming.AUDIENCES,
                                                       who)))
                    expected[(facility, name, 0)].extend([text] * times)
        # "end" on every channel marks the end: each channel is on one server, which
        # delivers in order, so once a client has its "end" on each of its channels it
        # has everything (messages of different servers may arrive in any order)
        for facility in facilities:
            await threads.deferToThread(
                api.publish, facility, "end", broadcast=True, users=list(people),
                groups=["staff", "ops"], sessions=list(session_keys.values()), expire=0)
        for (facility, name, _), client in clients.items():
            ends = len(naming.audience_channels(PREFIX, facility, naming.AUDIENCES,
                                                people[name]))
            got = []
            while ends:
                text = await client.text()
                if text == "end":
                    ends -= 1
                else:
                    got.append(text)
            self.assertEqual(sorted(got), sorted(expected[(facility, name, 0)]),
                             (facility, name))

    async def test_storedMessagesAndPresenceAreOnTheChannelsServer(self):
        """A client joining later gets the message stored on its channel's server; a
        facility's presence is kept on the server of its keys and read from there by the
        Django side."""
        from django.test import override_settings

        from ws4tx import api

        override = override_settings(WS4TX_PRESENCE=["pres"])
        override.enable()
        self.addCleanup(override.disable)
        broker = self.nodes[0].service.broker
        for facility in self.facilities(3):
            await threads.deferToThread(api.publish, facility, f"kept {facility}",
                                        broadcast=True, expire=60)
            client = await self.on(self.nodes[1], f"/ws/{facility}?subscribe-broadcast")
            self.assertEqual(await client.text(), f"kept {facility}")
        await self.on(self.nodes[0], "/ws/pres?subscribe-broadcast",
                      {"x-test-identity": "dora;;sd"})
        keys = naming.presence_keys(PREFIX, "pres")
        where = broker.shardOf(keys.connections)
        deadline = time.monotonic() + TIMEOUT
        while not await threads.deferToThread(api.presence, "pres"):
            self.assertLess(time.monotonic(), deadline, "presence never written")
            await _tick()
        self.assertEqual([e["user"] for e in await threads.deferToThread(api.presence, "pres")],
                         ["dora"])
        for index, server in enumerate(self.servers):
            client = redis.Redis.from_url(server.url)
            self.addCleanup(client.close)
            self.assertEqual(client.exists(keys.connections), int(index == where))

    async def test_infoAndChannelsGatherEveryNodeEveryTime(self):
        """The registry, the control channel and every reply channel are on the first
        server, for both halves: ``api.info()`` and ``api.channels()`` (and their
        ServerAPI twins) get both nodes' answers every time (each query has its own
        reply channel, which hashed to any server before), and ``api.disconnect()``
        reaches both nodes."""
        from ws4tx import api, closecodes

        for node in self.nodes:
            if not node.factory.node._announced:
                await node.factory.node.whenRegistered().addTimeout(TIMEOUT, reactor)
        ids = sorted(node.factory.node.id for node in self.nodes)
        kim = [await self.on(node, "/ws/chat?subscribe-user", {"x-test-identity": "kim;;sk"})
               for node in self.nodes]
        server = self.nodes[1].service.server
        for _ in range(4):
            for info in (await threads.deferToThread(api.info), await server.info()):
                self.assertEqual((sorted(n["id"] for n in info["nodes"]), info["missing"]),
                                 (ids, []))
            for found in (await threads.deferToThread(api.channels, "*:kim:*"),
                          await server.channels("*:kim:*")):
                self.assertEqual(found, {"channels": {"ws4tx:user:kim:chat": 2},
                                         "nodes": ids, "missing": []})
        keys = naming.nodes_keys(PREFIX)
        self.assertEqual(self.redis.zcard(keys.connections), 2)  # on the first server
        self.assertEqual(await threads.deferToThread(api.disconnect, users=["kim"]), 2)
        for client in kim:
            code, _ = await client.closed.addTimeout(TIMEOUT, reactor)
            self.assertEqual(code, closecodes.CLOSED_BY_SITE)

    async def test_oneServerLostInterruptsOnlyItsChannels(self):
        """SIGKILL one Redis: the event clients of its channels (on both nodes) are told
        ws4tx.interrupted, the others are not and keep getting what the Django side
        publishes; once it is back, its clients are told ws4tx.resumed and get messages
        again."""
        from ws4tx import api

        facilities = self.facilities(3)  # broadcast channel of facilities[i] on server i
        clients = {(facility, n): await self.on(self.nodes[n],
                                                f"/ws/{facility}?subscribe-broadcast",
                                                {"x-test-identity": "erin;;se"}, EVENTS)
                   for facility in facilities for n in (0, 1)}
        lost, kept = facilities[0], facilities[1:]
        self.servers[0].stop(signal.SIGKILL)
        for n in (0, 1):
            self.assertEqual(await _nextEvent(clients[(lost, n)]), envelope.INTERRUPTED_EVENT)
        for facility in kept:
            await threads.deferToThread(api.publish, facility, f"still {facility}",
                                        broadcast=True, expire=0)
            for n in (0, 1):
                # the first frame since the loss: no ws4tx.interrupted came first
                self.assertEqual(await clients[(facility, n)].text(), f"still {facility}")
        with self.assertRaises(PublishError):
            await threads.deferToThread(api.publish, lost, "nowhere", broadcast=True,
                                        expire=0)
        # one publish to channels of a live server and of the lost one: the live one's
        # clients get it and it is stored there, and the error names the lost server
        broker = self.nodes[0].service.broker
        stranded = next(f"x{i}" for i in range(1000) if broker.shardOf(
            naming.channel(PREFIX, naming.USER, kept[0], f"x{i}")) == 0)
        with self.assertRaisesRegex(PublishError, f":{self.servers[0].port}/"):
            await threads.deferToThread(api.publish, kept[0], "partly", broadcast=True,
                                        users=[stranded], expire=60)
        for n in (0, 1):
            self.assertEqual(await clients[(kept[0], n)].text(), "partly")
        live = redis.Redis.from_url(self.servers[1].url)
        self.addCleanup(live.close)
        self.assertEqual(live.get(naming.broadcast_channel(PREFIX, kept[0])), b"partly")
        for n in (0, 1):
            self.assertEqual(self.nodes[n].service.node.health().up, True)
            self.assertGreaterEqual(self.nodes[n].service.broker.stats["shard_outages"], 1)
            scraped = {m.name: m for m in NodeCollector(self.nodes[n].service.node).collect()}
            self.assertEqual(scraped["ws4tx_redis_shard_outages"].samples[0].value, 1)
            self.assertEqual(scraped["ws4tx_redis_up"].samples[0].value, 1)

        # a client connecting meanwhile is told, whichever its channels, and told again
        # once every server is back
        late = await self.on(self.nodes[0], f"/ws/{kept[0]}?subscribe-broadcast",
                             {"x-test-identity": "fred;;sf"}, EVENTS)
        self.assertEqual(await _nextEvent(late), envelope.INTERRUPTED_EVENT)

        self.servers[0].start()
        for n in (0, 1):
            self.assertEqual(await _nextEvent(clients[(lost, n)], timeout=30.0),
                             envelope.RESUMED_EVENT)
        self.assertEqual(await _nextEvent(late), envelope.RESUMED_EVENT)
        await threads.deferToThread(api.publish, lost, "back", broadcast=True, expire=0)
        for n in (0, 1):
            self.assertEqual(await clients[(lost, n)].text(), "back")


async def _nextEvent(client: WSClient, timeout: float = TIMEOUT) -> str:
    """The next ws4tx event name (skipping raw messages)."""
    while True:
        frame = await client.text(timeout)
        if frame.startswith('{"ws4tx"'):
            return str(json.loads(frame)["event"])


def _tick() -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, 0.05, lambda: None)


@pytest.mark.system
class TwistdShardsTests(unittest.TestCase):
    """``twistd ws4tx --redis … --redis … --redis …`` with ``--workers 2``."""

    async def test_repeatedRedisShardsEveryWorker(self):
        """Each worker keeps one subscriber on each server; a channel's messages, sent
        on its own server, reach clients of both workers."""
        from test._process import Twistd

        servers = _start_servers(self)
        port = free_port()
        child = Twistd().start("--workers", "2", "--listen",
                               f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                               *[arg for s in servers for arg in ("--redis", s.url)])
        self.addCleanup(child.stop, "KILL")
        await child.waitFor("(?s)" + ".*".join(["Redis subscriber connected"] * 6))
        direct = [redis.Redis.from_url(s.url) for s in servers]
        for client in direct:
            self.addCleanup(client.close)
            self.assertEqual(len([c for c in client.client_list() if int(c["sub"])]), 2)
        placed = ShardedBroker([object()] * SHARDS, PREFIX)  # type: ignore[list-item]
        for index in range(SHARDS):
            facility = next(f"t{i}" for i in range(1000)
                            if placed.shardOf(naming.broadcast_channel(PREFIX, f"t{i}"))
                            == index)
            channel = naming.broadcast_channel(PREFIX, facility)
            direct[index].set(channel, "stored", ex=60)
            clients = []
            for _ in range(6):  # the kernel spreads them over both workers
                client = await connect(port, f"/ws/{facility}?subscribe-broadcast")
                self.addCleanup(client.close)
                self.assertEqual(await client.text(), "stored")  # replayed: subscribed
                clients.append(client)
            self.assertGreaterEqual(direct[index].publish(channel, f"on {index}"), 1)
            for client in clients:
                self.assertEqual(await client.text(), f"on {index}")
        self.assertEqual(await child.stop("TERM"), 0, child.output[-3000:])


@pytest.mark.system
class SentinelShardTests(_ShardedNodesCase):
    """A shard may be a Sentinel group: one shard is, the other a plain server; the
    group's master crashes and only its channels are interrupted, then follow the
    promoted replica."""

    async def _setUp(self) -> None:
        from test._sentinel import SentinelGroup

        setup_django()
        self.group = SentinelGroup()
        await threads.deferToThread(self.group.start)
        self.addCleanup(self.group.stop)
        plain = EmbeddedRedis()
        plain.start()
        self.addCleanup(plain.stop)
        self.servers = [self.group.master, plain]
        self.addresses = (self.group.address(), plain.address)
        _sync_redis.use_url(urls_text(self.addresses))
        self.addCleanup(_sync_redis.reset)
        self.nodes = [await self.startNode(), await self.startNode()]

    async def test_masterCrashInterruptsOnlyItsShard(self):
        from ws4tx import api

        from test.test_sentinel import RESUME_BOUND

        grouped, plain = self.facilities(2)
        clients = {(facility, n): await self.on(self.nodes[n],
                                                f"/ws/{facility}?subscribe-broadcast",
                                                {"x-test-identity": "ivy;;si"}, EVENTS)
                   for facility in (grouped, plain) for n in (0, 1)}
        for facility in (grouped, plain):
            await threads.deferToThread(api.publish, facility, "before", broadcast=True,
                                        expire=0)
            for n in (0, 1):
                self.assertEqual(await clients[(facility, n)].text(), "before")
        self.group.crash_master()
        for n in (0, 1):
            self.assertEqual(await _nextEvent(clients[(grouped, n)]),
                             envelope.INTERRUPTED_EVENT)
        await threads.deferToThread(api.publish, plain, "unbothered", broadcast=True,
                                    expire=0)
        for n in (0, 1):
            self.assertEqual(await clients[(plain, n)].text(), "unbothered")
        for n in (0, 1):
            self.assertEqual(await _nextEvent(clients[(grouped, n)], timeout=RESUME_BOUND),
                             envelope.RESUMED_EVENT)
        # the Django side follows the promoted replica too (a retry or two)
        for _ in range(100):  # bounded
            try:
                await threads.deferToThread(api.publish, grouped, "after", broadcast=True,
                                            expire=0)
                break
            except PublishError:
                await _tick()
        for n in (0, 1):
            self.assertEqual(await clients[(grouped, n)].text(), "after")


@pytest.mark.system
class ClusterShardTests(ClassCluster, ControlAcrossNodesContract, _ShardedNodesCase):
    """A shard may be a Redis Cluster: the first shard is a three-primary cluster (so
    the node registry, the control channel and the reply channels live there, in the
    control tag's slot, with SPUBLISH), the second a plain server. Both halves place a
    channel on its shard by the same jump hash, and within the cluster on its
    partition's slot; the site's queries and commands across two nodes (the control
    contract) hold."""

    #: Which shard the cluster is (the other is the plain server).
    cluster_index = 0

    async def _setUp(self) -> None:
        setup_django()
        self.rc = self.cluster.cluster_client()
        self.addCleanup(self.rc.close)
        # what a test's nodes left (their registry entries above all) goes with them
        self.addCleanup(self.rc.flushall)
        self.plain_server = EmbeddedRedis()
        self.plain_server.start()
        self.addCleanup(self.plain_server.stop)
        self.plain = redis.Redis.from_url(self.plain_server.url, socket_timeout=5)
        self.addCleanup(self.plain.close)
        addresses = [self.plain_server.address]
        addresses.insert(self.cluster_index, RedisAddress.from_url(self.cluster.url))
        self.addresses = tuple(addresses)
        _sync_redis.use_url(urls_text(self.addresses))
        self.addCleanup(_sync_redis.reset)
        # a facility with history on each shard; the site and every node keep the same
        # (the Django side checks it against the registry before it publishes)
        self.kept = {name: {"size": 5, "ttl": 60} for name in _onEachShard("hist", 2)}
        from django.test import override_settings

        from ws4tx import _history_check

        same = override_settings(WS4TX_HISTORY=self.kept)
        same.enable()
        self.addCleanup(same.disable)
        _history_check.forget()
        self.addCleanup(_history_check.forget)
        self.nodes = [await self.startNode(), await self.startNode()]

    async def startNode(self, **changes: Any) -> SimpleNamespace:  # type: ignore[override]
        from ws4tx.server.cluster import ClusterBroker
        from ws4tx.server.redis_broker import RedisBroker

        config = self.config.replace(redis=self.addresses[0], redis_shards=self.addresses,
                                     history=self.kept, **changes)
        node = await start_node(self, config)
        broker = node.service.broker
        self.assertIsInstance(broker, ShardedBroker)
        kinds: list[type] = [RedisBroker]
        kinds.insert(self.cluster_index, ClusterBroker)
        self.assertEqual([type(shard) for shard in broker.shards], kinds)
        return node

    def _stored(self, channel: str) -> tuple[Optional[bytes], Optional[bytes]]:
        """The message stored for ``channel`` on the cluster (under its cluster name)
        and on the plain server."""
        return self.rc.get(naming.cluster_channel(channel)), self.plain.get(channel)

    async def test_bothHalvesPlaceAlike(self):
        """The Django side and a node name the same shard for every channel and know
        which shard is the cluster."""
        broker = self.nodes[0].service.broker
        for i in range(200):
            channel = naming.broadcast_channel(PREFIX, f"f{i}")
            shard = broker.shardOf(channel)
            self.assertEqual(_sync_redis.shard_index(channel), shard)
            self.assertEqual(_sync_redis.on_cluster(channel), shard == self.cluster_index)
        # the registry's shard
        self.assertEqual(_sync_redis.on_cluster(None), self.cluster_index == 0)

    async def test_deliveredAndStoredOnTheirShard(self):
        """What the Django side publishes reaches the clients of both nodes on either
        shard, is stored on its channel's shard only (on the cluster under its cluster
        name), and a client joining later gets it."""
        from ws4tx import api

        facilities = self.facilities(2)
        for where, facility in enumerate(facilities):
            channel = naming.broadcast_channel(PREFIX, facility)
            live = [await self.on(node, f"/ws/{facility}?subscribe-broadcast")
                    for node in self.nodes]
            await threads.deferToThread(api.publish, facility, f"kept {where}",
                                        broadcast=True, expire=60)
            for client in live:
                self.assertEqual(await client.text(), f"kept {where}")
            kept = f"kept {where}".encode()
            self.assertEqual(self._stored(channel), (kept, None)
                             if where == self.cluster_index else (None, kept))
            later = await self.on(self.nodes[1], f"/ws/{facility}?subscribe-broadcast")
            self.assertEqual(await later.text(), f"kept {where}")
        for node in self.nodes:
            if not node.factory.node._announced:
                await node.factory.node.whenRegistered().addTimeout(TIMEOUT, reactor)
        registry = naming.nodes_keys(PREFIX).connections
        self.assertEqual((self.rc.zcard(registry), self.plain.zcard(registry)),
                         (2, 0) if self.cluster_index == 0 else (0, 2))

    async def test_asyncApiOnEitherShard(self):
        """The asynchronous API (redis.asyncio clients: a cluster client for the cluster
        shard) publishes and stores on each channel's shard as the synchronous one does."""
        import asyncio

        from ws4tx import _async_redis, api

        async def publish(facility: str, text: str) -> Any:
            try:
                return await api.apublish(facility, text, broadcast=True, expire=60)
            finally:
                await _async_redis.aclose()

        for where, facility in enumerate(self.facilities(2)):
            channel = naming.broadcast_channel(PREFIX, facility)
            live = [await self.on(node, f"/ws/{facility}?subscribe-broadcast")
                    for node in self.nodes]
            sent = await threads.deferToThread(
                lambda facility=facility: asyncio.run(publish(facility, "async")))
            self.assertEqual(sent, 2)  # one subscriber per node
            for client in live:
                self.assertEqual(await client.text(), "async")
            self.assertEqual(self._stored(channel), (b"async", None)
                             if where == self.cluster_index else (None, b"async"))

    async def test_historyAndRecoveryOnEitherShard(self):
        """On a facility with history, both halves write and read one history per
        channel, on its shard (the cluster's under its partition's tag); an event client
        that comes back with its position gets exactly what it missed."""
        from ws4tx import api, history

        retention = history.Retention(5, 60)
        node = self.nodes[0]
        for where, facility in enumerate(self.kept):
            channel = naming.broadcast_channel(PREFIX, facility)
            first = await self.on(node, f"/ws/{facility}?subscribe-broadcast",
                                  protocols=EVENTS)
            await threads.deferToThread(api.publish, facility, "seen", broadcast=True)
            seen = json.loads(await first.text())
            if seen.get("event") == envelope.POSITIONS_EVENT:
                seen = json.loads(await first.text())
            self.assertEqual((seen["offset"], seen["data"]), (1, "seen"))
            await first.close()
            await threads.deferToThread(api.publish, facility, "missed 0",
                                        broadcast=True)
            published = await node.service.broker.publishWithHistory(
                channel, b"missed 1", retention)
            self.assertEqual(published.position.offset, 3)
            back = await self.on(
                node, f"/ws/{facility}?subscribe-broadcast&recover={channel}:"
                f"{seen['epoch']}:{seen['offset']}", protocols=EVENTS)
            got = [json.loads(await back.text()) for _ in range(2)]
            self.assertEqual([(f["offset"], f["data"]) for f in got],
                             [(2, "missed 0"), (3, "missed 1")])
            recovered = json.loads(await back.text())
            self.assertEqual(recovered["event"], envelope.RECOVERED_EVENT)
            self.assertTrue(recovered["data"]["recovered"])
            found = await threads.deferToThread(api.history, facility, broadcast=True,
                                                since=1)
            self.assertEqual([p.payload for p in found.publications],
                             [b"missed 0", b"missed 1"])
            read = await node.service.broker.history(channel, retention)
            self.assertEqual(len(read.publications), 3)
            stream, _ = naming.history_keys(PREFIX, channel)
            cluster_stream, _ = naming.cluster_history_keys(PREFIX, channel)
            self.assertEqual((self.rc.exists(cluster_stream), self.plain.exists(stream)),
                             (1, 0) if where == self.cluster_index else (0, 1))


@pytest.mark.system
class ClusterSecondShardTests(ClusterShardTests):
    """The same with a plain server first (the registry and control channel there, with
    PUBLISH) and the cluster second."""

    cluster_index = 1


def _onEachShard(stem: str, shards: int) -> list[str]:
    """Facilities ``<stem><n>`` whose broadcast channels are on shard 0, 1... in turn."""
    found: list[str] = []
    i = 0
    while len(found) < shards:
        name = f"{stem}{i}"
        i += 1
        if naming.shard_of(PREFIX, naming.broadcast_channel(PREFIX, name), shards) == \
                len(found):
            found.append(name)
    return found


class _Member:
    """A client for the router: records what it is told."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.identity = Identity(name)
        self.facility = "f"
        self.told: list[str] = []
        self.got: list[bytes] = []
        #: The length of each run it was handed (one read's messages, at once).
        self.runs: list[int] = []

    def deliver(self, prepared: Any, channel: str, payload: bytes) -> None:
        self.got.append(payload)

    def deliverRun(self, run: Any, channel: str) -> None:
        self.runs.append(len(run.items))
        for prepared, payload in run.items:
            self.deliver(prepared, channel, payload)

    # told once per outage, as PushProtocol tells its client
    def deliveryInterrupted(self) -> None:
        if self.told[-1:] != ["interrupted"]:
            self.told.append("interrupted")

    def deliveryResumed(self) -> None:
        if self.told[-1:] == ["interrupted"]:
            self.told.append("resumed")

    def messagesDropped(self, count: int) -> None:
        self.told.append(f"dropped {count}")

    def closeWith(self, code: int, reason: str) -> None:
        self.told.append(f"closed {code}")

    def channelRecovered(self, channel: str, recovered: bool, reason: Optional[str],
                         position: Any, messages: int) -> None:
        self.told.append(f"recovered {channel}" if recovered else f"lost {channel}")


class OutageBookkeepingTests(SynchronousTestCase):
    """The router and the sharded broker in memory: who is told what when servers come
    and go, including two at once."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from ws4tx.server.router import Router
        from ws4tx.testing import MemoryBroker, MemoryBus

        self.clock = Clock()
        self.shards = [MemoryBroker(MemoryBus(self.clock)) for _ in range(SHARDS)]
        self.broker = ShardedBroker(self.shards, PREFIX)
        self.router = Router(self.broker, lambda payload, binary: SimpleNamespace(),
                             clock=self.clock)
        self.broker.start(self.router)
        # one channel on each server
        self.on = {}
        for i in range(1000):
            channel = f"{PREFIX}:broadcast:c{i}"
            self.on.setdefault(self.broker.shardOf(channel), channel)
            if len(self.on) == SHARDS:
                break

    def test_aServersReadReachesTheRouterAsOneRead(self):
        """What one server's subscriber reads in one go reaches the router as one read
        (the composite passes its start and end on): its clients get it at once."""
        member = _Member("m")
        self.router.join(member, [self.on[1]])
        self.clock.advance(0)
        listener = self.shards[1].listener
        listener.readStarted()
        listener.messageReceived(self.on[1], b"a")
        listener.messageReceived(self.on[1], b"b")
        self.assertEqual(member.got, [])
        listener.readEnded()
        self.assertEqual((member.got, member.runs), ([b"a", b"b"], [2]))

    def test_aClientIsResumedOnlyWhenAllItsServersAreBack(self):
        both, alone = _Member("both"), _Member("alone")
        self.router.join(both, [self.on[0], self.on[1]])
        self.router.join(alone, [self.on[2]])
        self.shards[0].disconnect()
        self.assertEqual((both.told, alone.told), (["interrupted"], []))
        self.shards[1].disconnect()
        self.shards[0].reconnect()
        self.assertEqual(both.told, ["interrupted"])  # its other server is still down
        self.shards[1].reconnect()
        self.assertEqual(both.told, ["interrupted", "resumed"])
        self.assertNotIn("interrupted", alone.told)
        self.assertEqual(self.broker.stats["shard_outages"], 2)

    def test_oneServerBackRecoversOnlyItsChannels(self):
        """When one server comes back, only its channels (of facilities with history)
        are read since their positions, and only their clients are told recovered: a
        client whose server never went down is told nothing, and nothing of its
        channel is read again."""
        from ws4tx.history import History, Position
        from ws4tx.server.router import Router
        from ws4tx.testing import MemoryBroker, MemoryBus

        reads: list[str] = []

        def read(channel: str, since: Position) -> defer.Deferred[History]:
            reads.append(channel)
            return defer.succeed(History(since.epoch, since.offset))

        shards = [MemoryBroker(MemoryBus(self.clock)) for _ in range(SHARDS)]
        broker = ShardedBroker(shards, PREFIX)
        router = Router(broker, lambda payload, binary: SimpleNamespace(), clock=self.clock,
                        has_history=lambda channel: True, read_history=read)
        broker.start(router)
        self.clock.advance(0)
        steady, hit, both = _Member("steady"), _Member("hit"), _Member("both")
        router.join(steady, [self.on[0]])
        router.join(hit, [self.on[1]])
        router.join(both, [self.on[0], self.on[1]])
        self.clock.advance(0)
        for channel in (self.on[0], self.on[1]):
            router.learned(channel, Position(3, "e"))
        shards[1].disconnect()
        shards[1].reconnect()
        self.clock.advance(0)
        self.assertEqual(reads, [self.on[1]])
        self.assertEqual(steady.told, [])
        self.assertEqual(hit.told, ["interrupted", "resumed", f"recovered {self.on[1]}"])
        self.assertEqual(both.told, ["interrupted", "resumed", f"recovered {self.on[1]}"])
        # every server lost and back: each channel is read once, by its server's return
        for shard in shards:
            shard.disconnect()
        for shard in shards:
            shard.reconnect()
        self.clock.advance(0)
        self.assertEqual(sorted(reads), sorted([self.on[1], self.on[0], self.on[1]]))
        self.assertEqual(steady.told, ["interrupted", "resumed", f"recovered {self.on[0]}"])

    def test_messagesGoToTheirServerAndBack(self):
        member = _Member("m")
        self.router.join(member, list(self.on.values()))
        for index, channel in self.on.items():
            self.broker.publish(channel, channel.encode(), 60)
            self.assertEqual(self.shards[index].published[-1][0], channel)
            self.assertEqual(self.shards[index].bus.get(channel), channel.encode())
            for other in set(range(SHARDS)) - {index}:
                self.assertIsNone(self.shards[other].bus.get(channel))
        self.clock.advance(0)
        self.assertEqual(sorted(member.got), sorted(c.encode() for c in self.on.values()))
        barrier = self.broker.barrier()
        self.clock.advance(0)
        self.assertTrue(barrier.called)
