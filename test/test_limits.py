"""Limits: connection caps, rate limits, and the token bucket on a Clock."""

from __future__ import annotations

import json
from typing import Any

import txaio
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import closecodes, envelope, schema
from ws4tx.server._forwarded import client_address
from ws4tx.server._ratelimit import Budgets, TokenBucket
from ws4tx.server.config import ServerConfig
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory
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
    """Caps on connections."""

    config = ServerTestCase.config.replace(max_connections=3, max_connections_per_ip=2)

    async def test_perAddressCapAnswers429(self):
        """Past the per-address cap a handshake gets 429; closing one makes room."""
        a = await self.client("/ws/foobar")
        await self.client("/ws/foobar")
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
    """The per-address cap is on by default."""

    config = ServerTestCase.config.replace(
        max_connections_per_ip=ServerConfig().max_connections_per_ip)

    async def test_defaultCapAnswers429PastIt(self):
        """With the default configuration one address gets its cap of connections, then
        429, while another client address (named by a trusted proxy) still gets in."""
        cap = ServerConfig().max_connections_per_ip
        self.assertGreater(cap, 0)
        for _ in range(cap):
            await self.client("/ws/foobar")
        status, text = status_of(await raw_request(self.port, handshake_request("/ws/foobar")))
        self.assertEqual((status, "too many connections" in text), (429, True))
        # 127.0.0.1 is a trusted proxy by default: the client it names counts on its own.
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.7"})


class ProxyAddressTests(ServerTestCase):
    """Behind a trusted proxy the cap counts the address X-Forwarded-For names."""

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

    async def test_untrustedPeerCannotChooseItsAddress(self):
        """From a peer that is not a trusted proxy, X-Forwarded-For is ignored."""
        await self.service.stopService()
        await self.startServer(config={"trusted_proxies": ()})
        await self.client("/ws/foobar", headers={"X-Forwarded-For": "198.51.100.1"})
        other = handshake_request("/ws/foobar", {"X-Forwarded-For": "198.51.100.2"})
        status, _ = status_of(await raw_request(self.port, other))
        self.assertEqual(status, 429)


class ClientAddressTests(SynchronousTestCase):
    """The client address, from the peer and X-Forwarded-For."""

    trusted = schema.trusted_networks(("10.0.0.0/8", "::1"))

    def test_rightmostUntrustedAddress(self):
        for peer, header, expected in [
            ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
            ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
            ("10.0.0.5", "6.6.6.6, 198.51.100.1, 10.0.0.9", "198.51.100.1"),
            ("10.0.0.5", "10.0.0.7, 10.0.0.9", "10.0.0.7"),
            ("10.0.0.5", "garbage, 198.51.100.1", "198.51.100.1"),
            ("10.0.0.5", "198.51.100.1, garbage", "10.0.0.5"),
            ("10.0.0.5", None, "10.0.0.5"),
            ("::1", "2001:db8::1", "2001:db8::1"),
            ("198.51.100.3", "6.6.6.6", "198.51.100.3"),
        ]:
            self.assertEqual(client_address(peer, header, self.trusted), expected,
                             (peer, header))


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
