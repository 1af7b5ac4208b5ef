"""Presence (setting PRESENCE): the server's nodes keep who is connected in Redis, the
Django side reads it, event clients hear who came and went, coalesced; a node killed with
SIGKILL leaves no ghosts past PRESENCE_TTL."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope, naming, presence, schema
from ws4tx.naming import Identity
from ws4tx.server.config import ServerConfig
from ws4tx.server.embedded import free_port
from ws4tx.server.node import Node
from ws4tx.testing import MemoryBroker, MemoryBus

from test._process import Twistd
from test._server import ServerTestCase, identity_header
from test._wsclient import WSClient, connect

LUA = Path(__file__).resolve().parent.parent / "ws4tx" / "lua"
EVENTS = (envelope.SUBPROTOCOL,)
TTL = 1.5


class PureTests(SynchronousTestCase):
    """Names, settings and the scripts' files."""

    def test_keysShareOneHashTagAndNeverNameAClientChannel(self):
        keys = naming.presence_keys("ws4tx", "chat")
        self.assertEqual((keys.connections, keys.info, keys.users, keys.user_prefix,
                          keys.events),
                         ("ws4tx:presence:{chat}:c", "ws4tx:presence:{chat}:i",
                          "ws4tx:presence:{chat}:u", "ws4tx:presence:{chat}:u:",
                          "ws4tx:presence:{chat}:e"))
        for audience in naming.AUDIENCES:
            self.assertFalse(keys.events.startswith(f"ws4tx:{audience}:"))
        self.assertEqual(naming.presence_keys(None, "chat").events, "presence:{chat}:e")

    def test_settingTakesGlobsAndNamesABadOne(self):
        config = ServerConfig().replace(presence=["chat*"])
        self.assertEqual(config.presence, ("chat*",))
        self.assertTrue(config.has_presence("chat-1"))
        self.assertFalse(config.has_presence("news"))
        with self.assertRaisesRegex(ValueError, "presence.*'a:b' is not a facility"):
            ServerConfig().replace(presence=["a:b"])
        with self.assertRaisesRegex(ValueError, "presence-ttl"):
            ServerConfig().replace(presence_ttl=0)
        self.assertEqual(schema.get("presence").where, schema.SHARED)

    def test_scriptsAreTheFilesShippedInThePackage(self):
        for name in (presence.UPDATE_SCRIPT, presence.READ_SCRIPT):
            text = (LUA / name).read_bytes()
            self.assertEqual(presence.script(name), text)
            self.assertEqual(presence.script_sha(name), hashlib.sha1(text).hexdigest())


class _Client:
    """What presence sees of a connection."""

    def __init__(self, user: str | None, speaks_events: bool = False) -> None:
        self.identity = Identity(user=user)
        self.facility = "chat"
        self.speaks_events = speaks_events
        self.events: list[tuple[str, Any]] = []
        self.channels = ("ws4tx:broadcast:chat",)

    def emit(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))


class CoalescingTests(SynchronousTestCase):
    """The batching, on a task.Clock and the memory broker."""

    def setUp(self):
        self.clock = task.Clock()
        self.bus = MemoryBus(self.clock)
        self.broker = MemoryBroker(self.bus)
        self.node = Node(ServerConfig(presence=("chat",), presence_ttl=15), self.broker,
                         clock=self.clock)
        self.node.start()
        self.clock.advance(0)

    def test_500ClientsAtOnceAreOneWriteAndOneEvent(self):
        watcher = _Client("watcher", speaks_events=True)
        self.node.presence.joined(watcher)
        crowd = [_Client(f"u{i}") for i in range(500)]
        for client in crowd:
            self.node.presence.joined(client)
        self.clock.advance(presence.BATCH_DELAY)
        self.clock.advance(0)
        self.assertEqual(self.node.counters()["presence_writes"], 1)
        [(name, data)] = watcher.events
        self.assertEqual(name, envelope.PRESENCE_EVENT)
        self.assertEqual(len(data["joined"]), 501)
        self.assertEqual(len(self.bus.presence["ws4tx:presence:{chat}:c"]), 501)
        for client in crowd:
            self.node.presence.left(client)
        self.clock.advance(presence.BATCH_DELAY)
        self.clock.advance(0)
        self.assertEqual(len(watcher.events), 2)
        self.assertEqual(len(watcher.events[1][1]["left"]), 500)
        self.assertEqual(list(self.bus.presence["ws4tx:presence:{chat}:c"]),
                         [data["joined"][0]["id"]])

    def test_refreshIsOneWritePerFacilityAndAnnouncesNothingNew(self):
        watcher = _Client("watcher", speaks_events=True)
        for client in [watcher, *(_Client(f"u{i}") for i in range(50))]:
            self.node.presence.joined(client)
        self.clock.advance(presence.BATCH_DELAY)
        self.clock.advance(0)
        self.clock.advance(5)  # a third of the ttl
        self.clock.advance(0)
        self.assertEqual(self.node.counters()["presence_writes"], 2)
        self.assertEqual(len(watcher.events), 1)

    def test_facilityWithoutPresenceWritesNothing(self):
        client = _Client("a", speaks_events=True)
        client.facility = "news"
        self.node.presence.joined(client)
        self.clock.advance(1)
        # (The node registry is the node's own, not a facility's presence.)
        self.assertEqual([k for k in self.bus.presence if k.startswith("ws4tx:presence:")],
                         [])
        self.assertEqual(self.node.counters()["presence_writes"], 0)


async def presence_events(client: WSClient, until: Any) -> list[dict[str, Any]]:
    """The ws4tx.presence events ``client`` gets (each wait bounded) until ``until(events)``
    is true."""
    events: list[dict[str, Any]] = []
    while not until(events):
        message = envelope.decode(await client.text())
        if isinstance(message, envelope.Event) and message.event == envelope.PRESENCE_EVENT:
            events.append(message.data)
    return events


def joined(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for event in events for entry in event["joined"]]


def left(events: list[dict[str, Any]]) -> list[str]:
    return [conn for event in events for conn in event["left"]]


@pytest.mark.system
class _BothHalves(ServerTestCase):
    """Server nodes write the presence in a real Redis, the Django side reads it."""

    #: The nodes' PRESENCE_TTL (a refresh every third of it).
    presence_ttl = TTL

    async def _setUp(self) -> None:
        import redis

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.useDjangoSide(WS4TX_PRESENCE=["chat*"])
        await self.startServer(config={"presence": ("chat*",),
                                       "presence_ttl": self.presence_ttl})

    async def watcher(self, user: str = "alice") -> WSClient:
        client = await self.client("/ws/chat?subscribe-broadcast",
                                   headers=identity_header(user), protocols=EVENTS)
        await presence_events(client, lambda events: any(
            e["user"] == user for e in joined(events)))
        return client



class BothHalvesTests(_BothHalves):
    """The presence written by nodes and read by the Django side, with a short TTL."""

    async def test_presenceListsExactlyTheConnectedUsers(self):
        from ws4tx import api

        watcher = await self.watcher()
        await self.client("/ws/chat?subscribe-broadcast", headers=identity_header("bob"))
        await self.client("/ws/chat?subscribe-broadcast")  # anonymous
        second = await self.client("/ws/chat?subscribe-broadcast",
                                   headers=identity_header("alice"))
        await presence_events(watcher, lambda events: len(joined(events)) == 3)
        now = time.time()
        entries = api.presence("chat")
        self.assertEqual(sorted((e["user"] or "") for e in entries),
                         ["", "alice", "alice", "bob"])
        self.assertEqual(len({e["id"] for e in entries}), 4)
        for entry in entries:
            self.assertLess(abs(entry["since"] - now), 30)
        self.assertEqual(api.presence_stats("chat"), {"clients": 4, "users": 2})
        # One of alice's two connections goes: alice is still there.
        await second.close()
        events = await presence_events(watcher, lambda events: left(events))
        self.assertEqual(len(left(events)), 1)
        self.assertIn(left(events)[0], {e["id"] for e in entries if e["user"] == "alice"})
        self.assertEqual(api.presence_stats("chat"), {"clients": 3, "users": 2})
        self.assertEqual(sorted((e["user"] or "") for e in api.presence("chat")),
                         ["", "alice", "bob"])

    async def test_aUsersLastConnectionLeavingDropsTheUser(self):
        from ws4tx import api

        watcher = await self.watcher()
        bob = await self.client("/ws/chat?subscribe-broadcast", headers=identity_header("bob"))
        await presence_events(watcher, lambda events: joined(events))
        self.assertEqual(api.presence_stats("chat"), {"clients": 2, "users": 2})
        await bob.close()
        await presence_events(watcher, lambda events: left(events))
        self.assertEqual(api.presence_stats("chat"), {"clients": 1, "users": 1})
        self.assertEqual([e["user"] for e in api.presence("chat")], ["alice"])

    async def test_facilityWithoutPresenceIsRefusedAndWritesNothing(self):
        from ws4tx import api

        await self.client("/ws/news?subscribe-broadcast", headers=identity_header("bob"))
        with self.assertRaisesRegex(ValueError, "keeps no presence"):
            api.presence("news")
        with self.assertRaisesRegex(ValueError, "keeps no presence"):
            api.presence_stats("news")
        self.assertEqual(self.redis.keys("*presence*"), [])

    async def test_killedNodeLeavesThePresenceWithinTheTtl(self):
        """A second node (twistd) killed with SIGKILL: its client is gone from
        ``api.presence`` and announced as left within PRESENCE_TTL plus one refresh."""
        from ws4tx import api

        watcher = await self.watcher()
        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--redis", self.redis_server.url, "--presence", "chat",
                               "--presence-ttl", str(TTL))
        self.addCleanup(child.stop, "KILL")
        await child.waitFor(f"Site starting on {port}")
        await child.waitFor("Redis subscriber connected")
        remote = await connect(port, "/ws/chat?subscribe-broadcast")
        self.addCleanup(remote.close)
        events = await presence_events(watcher, lambda events: joined(events))
        [ghost] = joined(events)
        self.assertIsNone(ghost["user"])
        entries = api.presence("chat")
        self.assertEqual(sorted(e["user"] or "" for e in entries), ["", "alice"])
        self.assertIn(ghost["id"], [e["id"] for e in entries])
        self.assertEqual(api.presence_stats("chat"), {"clients": 2, "users": 1})
        killed = time.monotonic()
        await child.stop("KILL")
        events = await presence_events(watcher, lambda events: left(events))
        converged = time.monotonic() - killed
        self.assertEqual(left(events), [ghost["id"]])
        self.assertLessEqual(converged, TTL + TTL / 3 + 1.0)
        self.assertEqual([e["user"] for e in api.presence("chat")], ["alice"])
        self.assertEqual(api.presence_stats("chat"), {"clients": 1, "users": 1})
        # Nothing of the dead node's client is left in Redis.
        keys = naming.presence_keys("ws4tx", "chat")
        self.assertEqual(self.redis.zcard(keys.connections), 1)
        self.assertEqual(self.redis.hlen(keys.info), 1)
        self.assertNotIn(ghost["id"].encode(), self.redis.hkeys(keys.info))
        print(f"killed node's client announced as left after {converged:.2f} s "
              f"(ttl {TTL} s)")


class AudienceTests(ServerTestCase):
    """Presence by audience: the connections that listen to one user, group, session or
    broadcast channel of a facility, read by both halves; and the site's info in the
    entries, from the facility's handler."""

    async def _setUp(self) -> None:
        import redis

        from ws4tx.server.handlers import EventHandler

        class Chat(EventHandler):
            facility = "chat"

            async def presence_info(self, client):
                user = client.identity.user
                return {"name": user.title()} if user else None

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        self.useDjangoSide(WS4TX_PRESENCE=["chat*"])
        await self.startServer(config={"presence": ("chat*",), "presence_ttl": TTL},
                               handlers=[Chat])

    def sid(self, key: str) -> str:
        from django.conf import settings

        return naming.session_channel_id(settings.SECRET_KEY, key)

    async def crowd(self) -> tuple[WSClient, dict[str, WSClient]]:
        everything = "/ws/chat?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
        watcher = await self.client("/ws/chat?subscribe-broadcast",
                                    headers=identity_header("watcher"), protocols=EVENTS)
        clients = {
            "alice": await self.client(everything, identity_header(
                "alice", ("staff",), self.sid("key-a"))),
            "bob": await self.client("/ws/chat?subscribe-broadcast&subscribe-group",
                                     identity_header("bob", ("staff", "dev"))),
            "carol": await self.client("/ws/chat?subscribe-user",
                                       identity_header("carol", ("dev",))),
            "anon": await self.client("/ws/chat?subscribe-broadcast&subscribe-session",
                                      identity_header(session=self.sid("key-n"))),
        }
        await presence_events(watcher, lambda events: len(joined(events)) == 5)
        return watcher, clients

    async def test_eachAudienceListsTheConnectionsOnItsChannel(self):
        from ws4tx import api

        watcher, clients = await self.crowd()
        server = self.service.server

        def users(entries):
            return sorted(e["user"] or "" for e in entries)

        cases = [({"groups": ["staff"]}, ["alice", "bob"]), ({"groups": ["dev"]}, ["bob"]),
                 ({"users": ["carol"]}, ["carol"]), ({"users": ["bob"]}, []),
                 ({"broadcast": True}, ["", "alice", "bob", "watcher"]),
                 ({}, ["", "alice", "bob", "carol", "watcher"])]
        for audience, expected in cases:
            self.assertEqual(users(api.presence("chat", **audience)), expected, audience)
            self.assertEqual(users(await server.presence("chat", **audience)), expected,
                             audience)
            stats = {"clients": len(expected), "users": len([u for u in expected if u])}
            self.assertEqual(api.presence_stats("chat", **audience), stats, audience)
            self.assertEqual(await server.presence_stats("chat", **audience), stats)
        # Sessions: keys on the Django side, channel ids for handlers.
        self.assertEqual(users(api.presence("chat", sessions=["key-n"])), [""])
        self.assertEqual(users(await server.presence("chat", sessions=[self.sid("key-a")])),
                         ["alice"])
        # Leaving leaves every audience too.
        await clients["bob"].close()
        await presence_events(watcher, lambda events: left(events))
        self.assertEqual(users(api.presence("chat", groups=["staff"])), ["alice"])
        self.assertEqual(api.presence_stats("chat", groups=["dev"]), {"clients": 0, "users": 0})

    async def test_oneAudienceAtATime(self):
        from ws4tx import api

        for audience in ({"users": ["a", "b"]}, {"broadcast": True, "groups": ["staff"]}):
            self.assertRaises(ValueError, api.presence, "chat", **audience)
            self.failureResultOf(self.service.server.presence("chat", **audience), ValueError)
        self.failureResultOf(self.service.server.presence("news"), ValueError)

    async def test_theSitesInfoIsInTheEntriesAndTheEvents(self):
        from ws4tx import api

        watcher = await self.client("/ws/chat?subscribe-broadcast",
                                    headers=identity_header("watcher"), protocols=EVENTS)
        await self.client("/ws/chat?subscribe-broadcast")
        events = await presence_events(watcher, lambda events: len(joined(events)) == 2)
        self.assertEqual(sorted(str(e.get("info")) for e in joined(events)),
                         ["None", "{'name': 'Watcher'}"])
        self.assertEqual(sorted(str(e.get("info")) for e in api.presence("chat")),
                         ["None", "{'name': 'Watcher'}"])


def _nested(depth: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for _ in range(depth - 1):
        info = {"x": info}
    return info


#: What the test handler's presence_info gives each user.
_INFOS: dict[str, Any] = {
    "nan": {"score": float("nan")},
    "deep": _nested(1500),
    "accents": {"bio": "é" * 1900},       # 3,800 bytes of UTF-8 (11,400 ASCII-escaped)
    "long": {"bio": "é" * 2100},          # 4,200 bytes of UTF-8
    "list": ["not", "an", "object"],
}


class SiteInfoTests(ServerTestCase):
    """The site's presence info is checked once, as it comes from the facility's handler:
    info JSON cannot carry or too deep or too long is left out with a warning that says
    why, the client is in the presence without it, and every presence event goes on."""

    async def _setUp(self) -> None:
        from ws4tx.server.handlers import EventHandler

        class Chat(EventHandler):
            facility = "chat"

            def presence_info(self, client):
                return _INFOS.get(client.identity.user or "")

        await super()._setUp()
        await self.service.stopService()
        await self.startServer(config={"presence": ("chat",), "presence_ttl": TTL},
                               handlers=[Chat])

    def test_checkInfoSaysWhy(self):
        """The pure check: bytes of UTF-8, depth, finite numbers, a JSON object."""
        self.assertEqual(presence.check_info(_INFOS["accents"]), _INFOS["accents"])
        self.assertEqual(presence.check_info(_nested(presence.MAX_INFO_DEPTH)),
                         _nested(presence.MAX_INFO_DEPTH))
        for info, why in ((_INFOS["nan"], "nan"), (_INFOS["deep"], "nested more than 32"),
                          (_nested(presence.MAX_INFO_DEPTH + 1), "nested more than 32"),
                          (_INFOS["long"], "4210 bytes of JSON, over 4096"),
                          (_INFOS["list"], "not a dict"), ({1: "a"}, "not a string"),
                          ({"a": {"b": [float("-inf")]}}, "-inf"),
                          ({"a": object()}, "object, which is not JSON")):
            with self.assertRaisesRegex(ValueError, why):
                presence.check_info(info)

    async def test_badInfoIsLeftOutAndPresenceGoesOn(self):
        from twisted.logger import globalLogPublisher

        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "presence info" in event.get("log_format", ""):
                warnings.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        watcher = await self.client("/ws/chat?subscribe-broadcast",
                                    headers=identity_header("watcher"), protocols=EVENTS)
        await presence_events(watcher, lambda events: len(joined(events)) == 1)
        for user in _INFOS:
            await self.client("/ws/chat?subscribe-broadcast", identity_header(user))
        events = await presence_events(watcher, lambda events: len(joined(events)) == 5)
        infos = {e["user"]: e.get("info") for e in joined(events)}
        self.assertEqual(infos, {"nan": None, "deep": None, "accents": _INFOS["accents"],
                                 "long": None, "list": None})
        self.assertEqual(len(warnings), 4, warnings)
        for why in ("nan", "nested more than 32", "4210 bytes", "not a dict"):
            self.assertTrue(any(why in w for w in warnings), (why, warnings))
        # The presence still announces who comes and goes.
        late = await self.client("/ws/chat?subscribe-broadcast", identity_header("late"))
        await presence_events(watcher, lambda events: any(
            e["user"] == "late" for e in joined(events)))
        await late.close()
        await presence_events(watcher, lambda events: left(events))
        self.assertEqual(self.flushLoggedErrors(), [])


class CrowdTests(_BothHalves):
    """500 connections at once. Their handshakes hold the test's reactor (which runs the
    node too) for seconds on a busy machine: a TTL as short as the other tests' would let
    the first entries expire before the late refresh, which is no fault of the node."""

    presence_ttl = 30.0

    async def test_500SimultaneousConnectsAreCoalesced(self):
        watcher = await self.watcher()
        started = time.monotonic()
        crowd = await defer.gatherResults([
            defer.ensureDeferred(connect(self.port, "/ws/chat?subscribe-broadcast",
                                         headers=identity_header(f"u{i}")))
            for i in range(500)])
        for client in crowd:
            self.addCleanup(client.close)
        events = await presence_events(watcher, lambda events: len(joined(events)) == 500)
        elapsed = time.monotonic() - started
        self.assertEqual(len({e["id"] for e in joined(events)}), 500)
        # At most one event per batch delay (and far fewer than one per client).
        self.assertLessEqual(len(events), elapsed / presence.BATCH_DELAY + 2)
        self.assertLess(len(events), 50)
        print(f"500 connects: {len(events)} presence events in {elapsed:.2f} s")
        from ws4tx import api
        self.assertEqual(api.presence_stats("chat"), {"clients": 501, "users": 501})
        started = time.monotonic()
        await defer.gatherResults([client.close() for client in crowd])
        events = await presence_events(watcher, lambda events: len(left(events)) == 500)
        elapsed = time.monotonic() - started
        self.assertLessEqual(len(events), elapsed / presence.BATCH_DELAY + 2)
        self.assertLess(len(events), 50)
        self.assertEqual(api.presence_stats("chat"), {"clients": 1, "users": 1})
