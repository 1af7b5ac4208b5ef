"""Limits: connection caps, rate limits, and the token bucket on a Clock."""

from __future__ import annotations

import json
from typing import Any, Optional

import txaio
from twisted.internet import defer, endpoints, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource

from ws4tx import closecodes, envelope, schema
from ws4tx.server._forwarded import client_address, counted_as
from ws4tx.server._log import level, set_level
from ws4tx.server._ratelimit import Budgets, TokenBucket
from ws4tx.server.admission import AddressCounts
from ws4tx.server.config import ServerConfig
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory
from ws4tx.server.web import PushSite
from ws4tx.testing import MemoryBroker, MemoryBus

from test._server import ServerTestCase, identity_header
from test._wsclient import TIMEOUT, handshake_request, raw_request, status_of
from test.test_protocol import handshake, masked_text


class TokenBucketTests(SynchronousTestCase):
    """The token bucket, driven by a Clock."""

    def test_burstThenRate(self):
        """A full bucket allows a burst, then one token per 1/rate seconds."""
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=3, clock=clock)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.49)
        self.assertFalse(bucket.take())
        clock.advance(0.01)
        self.assertTrue(bucket.take())
        clock.advance(100)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])


class BudgetTests(SynchronousTestCase):
    """A budget per key, on a Clock."""

    def test_perKeyCostAndRefill(self):
        """Each key spends its own budget by cost; it refills at the rate."""
        clock = Clock()
        budgets = Budgets(rate=10, burst=100, clock=clock)
        self.assertEqual([budgets.take("john", 40) for _ in range(3)], [True, True, False])
        self.assertTrue(budgets.take("mary", 100))
        clock.advance(1.9)
        self.assertFalse(budgets.take("john", 40))
        clock.advance(0.1)
        self.assertTrue(budgets.take("john", 40))

    def test_forgetsRefilledKeysWhenFull(self):
        """Past max_keys, buckets that have refilled are forgotten; busy ones are kept."""
        clock = Clock()
        budgets = Budgets(rate=1, burst=10, clock=clock, max_keys=3)
        budgets.take("a", 10)
        budgets.take("b", 1)
        budgets.take("c", 1)
        clock.advance(1)
        budgets.take("d", 1)
        self.assertEqual(len(budgets), 2)  # "a" is still spending; "b", "c" refilled
        self.assertFalse(budgets.take("a", 10))


class StorageBoundTests(ServerTestCase):
    """What one user can store for replay is bounded: a budget of bytes per minute, and
    only the facilities the site names."""

    config = ServerTestCase.config.replace(store_budget=65536, expire=600)
    JOHN = identity_header("john")

    async def test_budgetBoundsWhatOneUserStores(self):
        """A user publishing 30 KB to 20 facilities stores two of them (64 KiB a minute);
        the others are delivered, acknowledged as not stored, and counted."""
        stored = []
        for n in range(20):
            facility = f"f{n}"
            sender = await self.client(f"/ws/{facility}?publish-broadcast", self.JOHN,
                                       protocols=(envelope.SUBPROTOCOL,))
            sender.send(envelope.encode_event("big", "x" * 30000, id=n))
            ack = json.loads(await sender.text())
            self.assertEqual(ack["id"], n)
            stored.append(ack["data"] is None)
            if ack["data"] is not None:
                self.assertEqual(ack["data"]["stored"], False)
                self.assertIn("storage budget", ack["data"]["reason"])
        self.assertEqual(stored, [True, True] + [False] * 18)
        keys = [k for k in self.redis.scan_iter("ws4tx:broadcast:*")]
        self.assertEqual(len(keys), 2)
        self.assertEqual(self.factory.node.counters()["store_refused"], 18)

    async def test_onlyNamedFacilitiesAreStored(self):
        """With stored_facilities, a message to another facility is published, not
        stored; one to a named facility is stored."""
        await self.service.stopService()
        await self.startServer(config={"stored_facilities": ("chat*",)})
        hello = envelope.encode_event("hello")
        for facility, kept in (("other", False), ("chatroom", True)):
            listener = await self.client(f"/ws/{facility}?subscribe-broadcast")
            sender = await self.client(f"/ws/{facility}?publish-broadcast", self.JOHN,
                                       protocols=(envelope.SUBPROTOCOL,))
            sender.send(envelope.encode_event("hello", id=1))
            self.assertEqual(json.loads(await sender.text()),  # published, and stored or not
                             {"ws4tx": "ack", "id": 1, "data": None})
            self.assertEqual(await listener.text(), hello)
            self.assertEqual(self.redis.get(f"ws4tx:broadcast:{facility}"),
                             hello.encode() if kept else None)


class HistoryBudgetTests(ServerTestCase):
    """History appends spend the storage budget too: past it a message of a facility with
    history is not published (the sender is told), and each new history stream costs what
    Redis spends on it, so one user makes a bounded number of them however many
    facilities the HISTORY globs admit."""

    config = ServerTestCase.config.replace(store_budget=65536, expire=600,
                                           history=(("f*", {"size": 100, "ttl": 600}),))
    JOHN = identity_header("john")

    async def _send(self, facility: str, text: str, n: int) -> dict:
        sender = await self.client(f"/ws/{facility}?publish-broadcast", self.JOHN,
                                   protocols=(envelope.SUBPROTOCOL,))
        sender.send(envelope.encode_event("big", text, id=n))
        ack = json.loads(await sender.text())
        self.assertEqual(ack["id"], n)
        await sender.close()
        return ack

    def _streams(self) -> list[bytes]:
        return [k for k in self.redis.scan_iter("ws4tx:history:*") if self.redis.type(k)
                == b"stream"]

    async def test_budgetBoundsHistoryAppends(self):
        """200 messages of 60 KB over 20 facilities with history: the first is published
        and kept; every later one is refused with an error ack saying why, published
        nowhere, and counted."""
        acks = [await self._send(f"f{n % 20}", "x" * 60000, n) for n in range(200)]
        self.assertEqual(acks[0], {"ws4tx": "ack", "id": 0, "data": None})
        for ack in acks[1:]:
            self.assertIn("over the storage budget", ack["error"])
            self.assertIn("not published (this facility keeps a history)", ack["error"])
        self.assertEqual(len(self._streams()), 1)
        self.assertEqual(self.factory.node.counters()["store_refused"], 199)

    async def test_newStreamsAreBoundedPerUser(self):
        """Small messages to 60 new facilities make at most STORE_BUDGET / 4096 (+1 for
        the refill meanwhile) streams; the rest are refused."""
        acks = [await self._send(f"f{n}", "hi", n) for n in range(60)]
        made = sum("error" not in ack for ack in acks)
        self.assertLessEqual(made, 65536 // 4096 + 1)
        self.assertGreaterEqual(made, 65536 // (4096 + 100))
        self.assertEqual(len(self._streams()), made)
        self.assertIn("over the storage budget", acks[-1]["error"])


class ConnectionLimitTests(ServerTestCase):
    """Caps on connections (clients connect directly: no trusted proxy)."""

    config = ServerTestCase.config.replace(max_connections=3, max_connections_per_ip=2,
                                           trusted_proxies=())

    async def test_perAddressCapAnswers429(self):
        """Past the per-address cap a handshake gets 429; closing one makes room. A
        WebSocket counts once (not also as the HTTP connection it upgraded from)."""
        a = await self.client("/ws/foobar")
        await self.client("/ws/foobar")
        self.assertEqual(self.factory.node.addresses["127.0.0.1"], 2)
        status, text = status_of(await raw_request(self.port, handshake_request("/ws/foobar")))
        self.assertEqual(status, 429)
        self.assertIn("too many connections", text)
        await a.close()
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        await self.client("/ws/foobar")

    async def test_processCapAnswers503(self):
        """Past the process-wide cap a handshake gets 503."""
        await self.service.stopService()
        await self.startServer(config={"max_connections": 2, "max_connections_per_ip": 0})
        await self.client("/ws/foobar")
        await self.client("/ws/foobar")
        status, _ = status_of(await raw_request(self.port, handshake_request("/ws/foobar")))
        self.assertEqual(status, 503)


class DefaultAddressCapTests(ServerTestCase):
    """The per-address cap is on by default, and never applies to what a trusted proxy
    sends without naming the client."""

    config = ServerTestCase.config.replace(
        max_connections_per_ip=ServerConfig().max_connections_per_ip)

    async def test_defaultCapAnswers429PastIt(self):
        """With the default configuration one client (named by the local proxy) gets its
        cap of connections, then 429, while another client still gets in."""
        cap = ServerConfig().max_connections_per_ip
        self.assertGreater(cap, 0)
        one = {"X-Forwarded-For": "198.51.100.7"}
        for _ in range(cap):
            await self.client("/ws/foobar", headers=one)
        status, text = status_of(await raw_request(
            self.port, handshake_request("/ws/foobar", one)))
        self.assertEqual((status, "too many connections" in text), (429, True))
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.8"})

    async def test_proxyThatNamesNoClientIsNotCapped(self):
        """From 127.0.0.1 (a trusted proxy by default) without a header naming the
        client, 150 connections are all accepted, not 100 as if they were one user; one
        warning (not one per connection) says how to fix the proxy."""
        with capturedLogs() as logged:
            for _ in range(150):
                await self.client("/ws/foobar")
        self.assertEqual(self.factory.node.addresses[None], 150)
        warnings = [e for e in logged
                    if "name no client" in str(e.get("log_format", ""))]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assertIn("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
                      formatEvent(warnings[0]))


class ProxyAddressTests(ServerTestCase):
    """Behind a trusted proxy the cap counts the client that Forwarded or
    X-Forwarded-For names."""

    config = ServerTestCase.config.replace(max_connections_per_ip=1,
                                           trusted_proxies=("127.0.0.0/8",))

    async def test_eachForwardedClientHasItsOwnCap(self):
        """Two clients behind the proxy each get their connection; a second one for the
        same client gets 429 even when it forges an address to the left."""
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.1"})
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.2"})
        forged = handshake_request("/ws/foobar",
                                   {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        status, _ = status_of(await raw_request(self.port, forged))
        self.assertEqual(status, 429)
        self.assertEqual(self.factory.node.addresses["198.51.100.1"], 1)

    async def test_forwardedHeaderNamesTheClient(self):
        """RFC 7239's Forwarded names the client as X-Forwarded-For does: quoted IPv6
        with a port, several hops; a forged hop to the left changes nothing; a forged
        Forwarded beside the proxy's X-Forwarded-For counts as the proxy itself."""
        await self.client("/ws/foobar", headers={
            "Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=http'})
        await self.client("/ws/foobar", headers={"Forwarded": "for=198.51.100.1"})
        for headers in ({"Forwarded": "for=203.0.113.9, for=198.51.100.1;proto=http"},
                        {"Forwarded": 'for="[2001:db8:cafe::99]"'}):
            status, _ = status_of(await raw_request(
                self.port, handshake_request("/ws/foobar", headers)))
            self.assertEqual(status, 429, headers)
        await self.client("/ws/foobar", headers={
            "Forwarded": "for=203.0.113.9", "X-Forwarded-For": "198.51.100.2"})
        self.assertEqual(self.factory.node.addresses["127.0.0.1"], 1)

    async def test_oneIPv6NetworkIsOneClient(self):
        """150 IPv6 addresses of one /64 behind the proxy count as one client: with the
        default cap of 100, 100 are accepted and 50 get 429; another /64 still gets in."""
        await self.service.stopService()
        await self.startServer(config={
            "max_connections_per_ip": ServerConfig().max_connections_per_ip})
        statuses = []
        for n in range(150):
            forwarded = handshake_request(
                "/ws/foobar", {"X-Forwarded-For": f"2001:db8:0:7::{n + 1:x}"})
            if n < 100:
                await self.client("/ws/foobar",
                                  headers={"X-Forwarded-For": f"2001:db8:0:7::{n + 1:x}"})
                statuses.append(101)
            else:
                statuses.append(status_of(await raw_request(self.port, forwarded))[0])
        self.assertEqual(statuses, [101] * 100 + [429] * 50)
        self.assertEqual(self.factory.node.addresses["2001:db8:0:7::/64"], 100)
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "2001:db8:0:8::1"})

    async def test_untrustedPeerCannotChooseItsAddress(self):
        """From a peer that is not a trusted proxy, Forwarded and X-Forwarded-For are
        ignored."""
        await self.service.stopService()
        await self.startServer(config={"trusted_proxies": ()})
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.1"})
        for headers in ({"X-Forwarded-For": "198.51.100.2"}, {"Forwarded": "for=198.51.100.3"}):
            other = handshake_request("/ws/foobar", headers)
            status, _ = status_of(await raw_request(self.port, other))
            self.assertEqual(status, 429)


class ClientAddressTests(SynchronousTestCase):
    """The client address, from the peer and Forwarded or X-Forwarded-For."""

    trusted = schema.trusted_networks(("10.0.0.0/8", "::1"))

    def check(self, table: list[tuple[str, dict[str, str], Optional[str]]]) -> None:
        for peer, headers, expected in table:
            self.assertEqual(client_address(peer, headers, self.trusted), expected,
                             (peer, headers))

    def test_rightmostUntrustedXForwardedFor(self):
        """The rightmost X-Forwarded-For entry that is not a trusted proxy (the leftmost
        if all are); from a trusted proxy that names nobody usable, None."""
        self.check([
            ("10.0.0.5", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
            ("10.0.0.5", {"x-forwarded-for": "6.6.6.6, 198.51.100.1"}, "198.51.100.1"),
            ("10.0.0.5", {"x-forwarded-for": "6.6.6.6, 198.51.100.1, 10.0.0.9"},
             "198.51.100.1"),
            ("10.0.0.5", {"x-forwarded-for": "10.0.0.7, 10.0.0.9"}, "10.0.0.7"),
            ("10.0.0.5", {"x-forwarded-for": "garbage, 198.51.100.1"}, "198.51.100.1"),
            ("10.0.0.5", {"x-forwarded-for": "198.51.100.1, garbage"}, None),
            ("10.0.0.5", {"x-forwarded-for": "198.51.100.1:4711"}, "198.51.100.1"),
            ("10.0.0.5", {"x-forwarded-for": "[2001:db8::1]:4711"}, "2001:db8::1"),
            ("10.0.0.5", {}, None),
            ("10.0.0.5", {"x-forwarded-for": ""}, None),
            ("::1", {"x-forwarded-for": "2001:db8::1"}, "2001:db8::1"),
            ("::ffff:10.0.0.5", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
            ("198.51.100.3", {"x-forwarded-for": "6.6.6.6"}, "198.51.100.3"),
            ("198.51.100.3", {}, "198.51.100.3"),
        ])

    def test_forwardedByRfc7239(self):
        """Forwarded's for= (RFC 7239): quoted IPv6 with or without a port, IPv4 with a
        port, several hops (in one header or several, joined by commas), other
        parameters, any case; the same walk as X-Forwarded-For; ``unknown``, an
        obfuscated identifier or a hop without for= names nobody."""
        self.check([
            ("10.0.0.5", {"forwarded": "for=198.51.100.1"}, "198.51.100.1"),
            ("10.0.0.5", {"forwarded": 'For="198.51.100.1:4711";proto=https;by=10.0.0.5'},
             "198.51.100.1"),
            ("10.0.0.5", {"forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17"),
            ("10.0.0.5", {"forwarded": 'for="[2001:db8:cafe::17]"'}, "2001:db8:cafe::17"),
            ("10.0.0.5", {"forwarded": "for=6.6.6.6, for=198.51.100.1;proto=http"},
             "198.51.100.1"),
            ("10.0.0.5", {"forwarded": "for=198.51.100.1, for=10.0.0.9"}, "198.51.100.1"),
            ("10.0.0.5", {"forwarded": 'for=198.51.100.1;host="a,b", for=10.0.0.9'},
             "198.51.100.1"),
            ("10.0.0.5", {"forwarded": "for=_hidden, for=198.51.100.1"}, "198.51.100.1"),
            ("10.0.0.5", {"forwarded": "for=198.51.100.1, for=unknown"}, None),
            ("10.0.0.5", {"forwarded": 'for="_gazonk"'}, None),
            ("10.0.0.5", {"forwarded": "proto=https"}, None),
            ("10.0.0.5", {"forwarded": "for=[2001:db8::1]"}, "2001:db8::1"),
            ("198.51.100.3", {"forwarded": "for=6.6.6.6"}, "198.51.100.3"),
        ])

    def test_bothHeaders(self):
        """With both headers, the client they agree on; when they disagree one of them is
        the client's own claim and nothing tells which: the proxy's own address."""
        self.check([
            ("10.0.0.5", {"forwarded": "for=198.51.100.1", "x-forwarded-for": "198.51.100.1"},
             "198.51.100.1"),
            ("10.0.0.5", {"forwarded": "for=6.6.6.6", "x-forwarded-for": "198.51.100.1"},
             "10.0.0.5"),
            ("10.0.0.5", {"forwarded": "for=unknown", "x-forwarded-for": "198.51.100.1"},
             "10.0.0.5"),
        ])

    def test_counted_as(self):
        """IPv4 counts as itself, IPv6 as its network of the prefix."""
        self.assertEqual(counted_as("198.51.100.1", 64), "198.51.100.1")
        self.assertEqual(counted_as("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::/64")
        self.assertEqual(counted_as("2001:db8:1:2:3:4:5:6", 56), "2001:db8:1::/56")
        self.assertEqual(counted_as("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6")


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked frame a server wrote."""
    frames = []
    while data:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append((data[0] & 0x0F, data[start:start + length]))
        data = data[start + length:]
    return frames


class RateLimitClockTests(SynchronousTestCase):
    """The rate limit of one client's messages, on a Clock: exact counts at exact times."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)  # Autobahn's close-handshake timer
        self.broker = MemoryBroker(MemoryBus(self.clock))
        config = ServerConfig(ping_interval=0, handshake_timeout=0, anonymous_publish=True,
                              rate_limit=5, rate_burst=5)
        self.factory = PushFactory(Node(config, self.broker, clock=self.clock),
                                   reactor=self.clock)
        self.factory.node.start()
        self.listener, self.listened = self.connect("/ws/foobar?subscribe-broadcast")
        self.proto, self.transport = self.connect(
            "/ws/foobar?publish-broadcast",
            f"Sec-WebSocket-Protocol: {envelope.SUBPROTOCOL}\r\n")
        self.sent = 0

    def connect(self, path: str, headers: str = "") -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(("127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(handshake(path, headers))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
        transport.clear()
        return proto, transport

    def send(self, count: int) -> tuple[int, int]:
        """Send ``count`` messages now; return how many were published and how many
        were answered by a rate-limit error event."""
        published = len(self.broker.published)
        for _ in range(count):
            self.proto.dataReceived(masked_text(f"m{self.sent}"))
            self.sent += 1
        frames = server_frames(self.transport.value())
        self.transport.clear()
        told = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
        for event in told:
            self.assertEqual(event, {"ws4tx": "event", "event": envelope.ERROR_EVENT,
                                     "data": {"message": "rate limit exceeded: message dropped"}})
        self.assertEqual([op for op, _ in frames if op != 0x1], [])
        return len(self.broker.published) - published, len(told)

    def test_burstThenRateThenClose(self):
        """A burst of 5 goes through; past it each message is dropped and the sender told;
        a token comes back every 0.2 s and at most 5 are saved up; the 16th message over
        the limit closes the client with 1008."""
        self.assertEqual(self.send(5), (5, 0))
        self.assertEqual(self.send(1), (0, 1))
        self.clock.advance(0.19)
        self.assertEqual(self.send(1), (0, 1))
        self.clock.advance(0.01)
        self.assertEqual(self.send(2), (1, 1))
        self.clock.advance(100)
        self.assertEqual(self.send(6), (5, 1))
        self.assertEqual(self.send(11), (0, 11))  # 15 over the limit so far: still open
        self.assertEqual(self.factory.node.stats["rate_limited"], 15)
        self.assertEqual(self.proto.state, self.proto.STATE_OPEN)
        self.proto.dataReceived(masked_text("one too many"))
        self.assertEqual(self.factory.node.stats["rate_limited"], 16)
        [(opcode, payload)] = server_frames(self.transport.value())
        self.assertEqual(opcode, 0x8)
        self.assertEqual(int.from_bytes(payload[:2], "big"), closecodes.POLICY_VIOLATION)
        self.assertEqual(payload[2:], b"rate limit exceeded")
        passed = [f"m{i}".encode() for i in (0, 1, 2, 3, 4, 7, 9, 10, 11, 12, 13)]
        self.assertEqual([p for _, p, _ in self.broker.published], passed)
        # Another client on the channel got exactly those, and is still open.
        self.clock.advance(0)
        self.assertEqual(server_frames(self.listened.value()), [(0x1, p) for p in passed])
        self.assertEqual(self.listener.state, self.listener.STATE_OPEN)


class RateLimitTests(ServerTestCase):
    """The rate limit through a real server."""

    async def test_heartbeatsAreNotRateLimited(self):
        """Heartbeats are answered whatever the rate."""
        await self.service.stopService()
        await self.startServer(config={"heartbeat": "--hb--", "rate_limit": 1, "rate_burst": 1})
        client = await self.client("/ws/foobar")
        for _ in range(20):
            client.send("--hb--")
        self.assertEqual([await client.text() for _ in range(20)], ["--hb--"] * 20)


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class HttpConnectionClockTests(SynchronousTestCase):
    """Plain HTTP connections (not upgraded) on a Clock: they count toward the
    per-address cap, and an idle keep-alive one is closed after ``http_idle_timeout``."""

    def setUp(self) -> None:
        self.clock = Clock()
        config = ServerConfig(max_connections_per_ip=2, trusted_proxies=("10.0.0.1",),
                              http_idle_timeout=15)
        self.addresses = AddressCounts(config)
        root = _Hello()
        self.site = PushSite(root, 5.0, self.clock, addresses=self.addresses,
                             timeout=config.http_idle_timeout)

    def connect(self, host: str) -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def test_idleKeepAliveIsClosedAfterTheIdleTimeout(self):
        """A keep-alive connection answered once is closed 15 s after its last request,
        not before; then it no longer counts."""
        channel, transport = self.connect("192.0.2.1")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"))
        self.assertEqual(self.addresses["192.0.2.1"], 1)
        self.clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.addresses.total(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closingAnIdleConnectionIsADebugLine(self):
        """Closing an idle keep-alive connection (every 15 s per idle browser connection)
        says nothing at the default level, info, where Twisted said ``Timing out client``
        each time; with ``--log-level debug`` it is a debug line."""
        self.addCleanup(set_level, level())
        for name, expected in (("info", []), ("debug", [LogLevel.debug])):
            set_level(name)
            channel, transport = self.connect("192.0.2.1")
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with capturedLogs() as events:
                self.clock.advance(15)
            self.assertTrue(transport.disconnecting)
            self.assertEqual([e["log_level"] for e in events], expected, name)
            channel.connectionLost(Failure(ConnectionDone()))

    def test_connectionsPastTheCapAreAnswered429AndClosed(self):
        """Two connections from one address are served; the third one's request is
        answered 429 with the reason and its connection closed. A trusted proxy's
        connections are not counted before their requests name anyone."""
        served = [self.connect("192.0.2.1") for _ in range(2)]
        proxied = [self.connect("10.0.0.1") for _ in range(5)]
        self.assertEqual(self.addresses.total(), 2)
        channel, transport = self.connect("192.0.2.1")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = transport.value().split(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 429"), head)
        self.assertIn(b"connection: close", head)
        self.assertIn(b"too many connections from your address", transport.value())
        self.assertTrue(transport.disconnecting)
        for other, other_transport in served + proxied:
            other.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(other_transport.value().startswith(b"HTTP/1.1 200"))
            self.assertFalse(other_transport.disconnecting)
        for each, _ in [*served, *proxied, (channel, transport)]:
            each.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.addresses.total(), 0)


class _KeepAlive(Protocol):
    """Sends one keep-alive request; ``answered`` fires with the status line, ``lost``
    when the server closes."""

    def __init__(self) -> None:
        self.answered: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n" in self.data and not self.answered.called:
            self.answered.callback(self.data.split(b"\r\n", 1)[0])

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.callback(b"")
        self.lost.callback(None)


class KeepAliveTests(ServerTestCase):
    """The attack of issue 26 #8: 500 plain HTTP keep-alive connections from one address
    (no trusted proxy), through a real server."""

    config = ServerTestCase.config.replace(
        max_connections_per_ip=ServerConfig().max_connections_per_ip, trusted_proxies=())

    async def test_keepAliveConnectionsCountTowardTheCap(self):
        """Of 500 keep-alive connections from one address, the cap's 100 are served and
        stay open; the other 400 are answered 429 and closed by the server at once."""
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        clients = [await endpoints.connectProtocol(endpoint, _KeepAlive())
                   for _ in range(500)]
        statuses = [await c.answered.addTimeout(TIMEOUT, reactor) for c in clients]
        self.assertEqual(statuses, [b"HTTP/1.1 404 Not Found"] * 100
                         + [b"HTTP/1.1 429 Too Many Requests"] * 400)
        for client in clients[100:]:
            await client.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(self.factory.node.addresses["127.0.0.1"], 100)
        self.assertEqual([c.lost.called for c in clients[:100]], [False] * 100)
        for client in clients[:100]:
            client.transport.loseConnection()
            await client.lost.addTimeout(TIMEOUT, reactor)
