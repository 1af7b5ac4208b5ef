"""Server-Sent Events (issue 23, the server half): a real server and a real Redis the test
starts; a real HTTP client (twisted.web's Agent) reading the stream as it comes."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import control
from ws4tx.history import Position, Retention
from ws4tx.redis_address import RedisAddress
from ws4tx.server import _sse_format

from test._recovering import publish_with_history
from test._redisgate import RedisGate
from test._server import ServerTestCase, identity_header
from test._sseclient import SSEClient, request
from test._wsclient import TIMEOUT, never_reading

HISTORY = {"chat*": {"size": 300, "ttl": 600}}
RETENTION = Retention(300, 600)
CHAT = "ws4tx:broadcast:chat"
PATH = "/ws/chat?subscribe-broadcast"


def _publications(client: SSEClient) -> list[str]:
    return [e.json()["data"] for e in client.messages()]


class _SSETestCase(ServerTestCase):
    async def stream(self, path: str = PATH, **headers: str) -> SSEClient:
        """An admitted stream, its channels subscribed and its position known."""
        response, client = await request(self.port, path, headers)
        self.addCleanup(client.close)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        return client


    async def missedOneEach(self, prefix: str, count: int
                            ) -> tuple[str, dict[str, str], str, list[str]]:
        """A stream of ``count`` group channels (of a facility with history) that got one
        message each, then closed; one more published on each: its path, identity
        headers, last event id and channels, for a reconnect with Last-Event-ID."""
        groups = tuple(f"{prefix}{count}x{i}" for i in range(count))
        channels = [f"ws4tx:group:{g}:chat" for g in groups]
        who = identity_header("alice", groups)
        path = "/ws/chat?subscribe-group"
        client = await self.stream(path, **who)
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        for channel in channels:
            publish_with_history(self.redis, channel, b"before", RETENTION)
        await client.until(lambda c: len(c.messages()) == count)
        last = client.last_id
        assert last is not None
        client.close()
        await client.until(lambda c: c.ended)
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        for channel in channels:
            publish_with_history(self.redis, channel, b"missed", RETENTION)
        return path, who, last, channels


class SSETests(_SSETestCase):
    """An SSE stream is admitted as a handshake and delivers what a ws4tx.v1 client gets."""

    config = ServerTestCase.config.replace(history=HISTORY,
                                           allowed_origins=("https://site.example",))

    def publish_(self, payload: str) -> Position:
        return publish_with_history(self.redis, CHAT, payload.encode(), RETENTION)

    async def test_foreignOriginWithCookieRefused(self) -> None:
        """A page of another site cannot open a stream with the user's cookies: 403 with
        the refusal's reason, as its WebSocket handshake would get; nobody joined."""
        response, client = await request(self.port, PATH, {
            "origin": "https://evil.example", "cookie": "sessionid=abc"})
        await client.until(lambda c: c.ended)
        self.assertEqual(response.code, 403)
        self.assertIn(b"this Origin is not allowed", client.raw)
        self.assertEqual(self.factory.node.clientCount(), 0)

    async def test_queryOverTheCapRefused(self) -> None:
        """A query longer than ``max_query_length`` is refused with 414."""
        response, client = await request(self.port, PATH + "&x=" + "a" * 2100)
        await client.until(lambda c: c.ended)
        self.assertEqual(response.code, 414)

    async def test_messagesArriveAsEventsWithPositions(self) -> None:
        """Each publication is an event whose data is the ws4tx.v1 publication envelope
        and whose id holds the channel's position; the node counts the SSE client."""
        client = await self.stream()
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        self.publish_("m1")
        self.publish_("m2")
        await client.until(lambda c: len(c.messages()) == 2)
        self.assertEqual(_publications(client), ["m1", "m2"])
        first = client.messages()[0].json()
        tag = _sse_format.channels_tag([CHAT])
        self.assertEqual(client.messages()[0].id, f"{tag}.{first['epoch']}:{first['offset']}")
        self.assertEqual(client.messages()[1].id,
                         f"{tag}.{first['epoch']}:{first['offset'] + 1}")
        node = self.factory.node
        self.assertEqual((node.clientCount(), node.stats["sse_accepted"]), (1, 1))

    async def test_multiLinePayloadOnSeveralDataLines(self) -> None:
        """A raw payload with line breaks arrives whole (one data: line per line)."""
        client = await self.stream("/ws/news?subscribe-broadcast")
        await client.until(lambda c: self.factory.node.clientCount() == 1)
        await self.factory.node.router.barrier()
        self.publish("ws4tx:broadcast:news", "one\ntwo\nthree")
        await client.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(client.messages()[0].data, "one\ntwo\nthree")
        self.assertIn(b"data: one\ndata: two\ndata: three\n\n", client.raw)
        self.assertIsNone(client.messages()[0].id)

    async def test_framedForTheClientsHttpVersion(self) -> None:
        """An HTTP/1.1 client gets each event in a chunk of its own; an HTTP/1.0 one (a
        proxy that speaks it to its upstream) gets the events as they are, the end of the
        connection ending the stream. So do the messages of one read, written to each
        stream at once."""
        raw = {}
        for version in (b"1.1", b"1.0"):
            client = SSEClient()
            await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
            self.addCleanup(client.close)
            assert client.transport is not None
            client.transport.write(b"GET /ws/news?subscribe-broadcast HTTP/" + version
                                   + b"\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            await client.until(lambda c: b": ws4tx\n\n" in c.raw)
            raw[version] = client
        await client.until(lambda c: self.factory.node.clientCount() == 2)
        await self.factory.node.router.barrier()
        self.publish("ws4tx:broadcast:news", "hello")
        for client in raw.values():
            await client.until(lambda c: len(c.messages()) == 1)
        self.assertTrue(raw[b"1.1"].raw.startswith(b"HTTP/1.1 200 "))
        self.assertTrue(raw[b"1.1"].raw.endswith(
            b"\r\n\r\n9\r\n: ws4tx\n\n\r\nd\r\ndata: hello\n\n\r\n"), raw[b"1.1"].raw)
        self.assertTrue(raw[b"1.0"].raw.startswith(b"HTTP/1.0 200 "))
        self.assertTrue(raw[b"1.0"].raw.endswith(b"\r\n\r\n: ws4tx\n\ndata: hello\n\n"),
                        raw[b"1.0"].raw)
        pipe = self.redis.pipeline(transaction=False)
        for text in ("one", "two\nlines", "three"):
            pipe.publish("ws4tx:broadcast:news", text)
        pipe.execute()
        for client in raw.values():
            await client.until(lambda c: len(c.messages()) == 4)
        self.assertTrue(raw[b"1.1"].raw.endswith(
            b"d\r\ndata: hello\n\n\r\nb\r\ndata: one\n\n\r\n"
            b"17\r\ndata: two\ndata: lines\n\n\r\nd\r\ndata: three\n\n\r\n"), raw[b"1.1"].raw)
        self.assertTrue(raw[b"1.0"].raw.endswith(
            b"data: hello\n\ndata: one\n\ndata: two\ndata: lines\n\ndata: three\n\n"),
            raw[b"1.0"].raw)

    async def test_binaryMessageOfAReadLeftOutAndCounted(self) -> None:
        """SSE carries text: a binary message among the messages of one read is left out
        (counted), the text ones around it arrive in order."""
        client = await self.stream("/ws/news?subscribe-broadcast")
        await client.until(lambda c: self.factory.node.clientCount() == 1)
        await self.factory.node.router.barrier()
        pipe = self.redis.pipeline(transaction=False)
        for payload in (b"before", b"\xff\xfe", b"after"):
            pipe.publish("ws4tx:broadcast:news", payload)
        pipe.execute()
        await client.until(lambda c: len(c.messages()) == 2)
        self.assertEqual([m.data for m in client.messages()], ["before", "after"])
        self.assertEqual(self.factory.node.stats["sse_binary_dropped"], 1)

    async def test_overTlsEventsArriveWhole(self) -> None:
        """Over TLS a stream's events go through the TLS connection as over TCP: whole, in
        their chunks."""
        from twisted.internet import endpoints, ssl

        certificate = ssl.KeyPair.generate(size=2048).selfSignedCert(1, commonName="127.0.0.1")
        port = await endpoints.SSL4ServerEndpoint(
            reactor, 0, certificate.options(), interface="127.0.0.1").listen(self.service.site)
        self.addCleanup(port.stopListening)
        client = SSEClient()
        await connectProtocol(endpoints.SSL4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, ssl.CertificateOptions(),
            timeout=TIMEOUT), client)
        self.addCleanup(client.close)
        assert client.transport is not None
        client.transport.write(b"GET /ws/news?subscribe-broadcast HTTP/1.1\r\nHost: x\r\n"
                               b"Accept: text/event-stream\r\n\r\n")
        await client.until(lambda c: self.factory.node.clientCount() == 1)
        await self.factory.node.router.barrier()
        self.publish("ws4tx:broadcast:news", "over tls")
        await client.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(client.messages()[0].data, "over tls")
        self.assertTrue(client.raw.endswith(b"\r\n10\r\ndata: over tls\n\n\r\n"), client.raw)

    async def test_reconnectWithLastEventIdRecoversExactlyWhatWasMissed(self) -> None:
        """A stream that dropped comes back with its last id: the messages published
        meanwhile, once, in order, then the verdict; then live ones as usual."""
        client = await self.stream()
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        self.publish_("m1")
        await client.until(lambda c: len(c.messages()) == 1)
        last = client.last_id
        assert last is not None
        client.close()
        await client.until(lambda c: c.ended)
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        for payload in ("m2", "m3", "m4"):
            self.publish_(payload)
        again = await self.stream(**{"last-event-id": last})
        await again.until(lambda c: bool(c.named("ws4tx.recovered")))
        self.assertEqual(_publications(again), ["m2", "m3", "m4"])
        self.assertEqual(again.named("ws4tx.recovered")[0].json()["recovered"], True)
        self.publish_("m5")
        await again.until(lambda c: len(c.messages()) == 4)
        self.assertEqual(_publications(again), ["m2", "m3", "m4", "m5"])
        self.assertEqual(self.factory.node.recoveries["none"], 1)

    async def test_oneIdResumesEveryChannelOfTheStream(self) -> None:
        """A stream of two channels (broadcast and the user's) resumes both from one
        Last-Event-ID: each gets what it missed, nothing else."""
        path = "/ws/chat?subscribe-broadcast&subscribe-user"
        user = "ws4tx:user:alice:chat"
        client = await self.stream(path, **identity_header("alice"))
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        self.publish_("b1")
        publish_with_history(self.redis, user, b"u1", RETENTION)
        await client.until(lambda c: len(c.messages()) == 2)
        last = client.last_id
        assert last is not None
        client.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        self.publish_("b2")
        publish_with_history(self.redis, user, b"u2", RETENTION)
        publish_with_history(self.redis, user, b"u3", RETENTION)
        again = await self.stream(path, **{"last-event-id": last, **identity_header("alice")})
        await again.until(lambda c: bool(c.named("ws4tx.recovered")))
        got = [(m.json()["channel"], m.json()["data"]) for m in again.messages()]
        self.assertEqual(sorted(got), [(CHAT, "b2"), (user, "u2"), (user, "u3")])
        self.assertEqual([d for c, d in got if c == user], ["u2", "u3"])
        verdict = again.named("ws4tx.recovered")[0].json()
        self.assertEqual((verdict["recovered"], sorted(verdict["channels"])), (True, [CHAT, user]))

    async def test_malformedLastEventIdIsAnUnknownPosition(self) -> None:
        """A Last-Event-ID that is not one of this stream's ids is an unknown position:
        the client is told (recovered: false), and goes on live."""
        client = await self.stream(**{"last-event-id": "garbage,\u00e9:::"})
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        verdict = client.named("ws4tx.recovered")[0].json()
        self.assertEqual((verdict["recovered"], verdict["reason"]), (False, "position"))
        self.publish_("m1")
        await client.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(_publications(client), ["m1"])

    async def test_forgedLastEventIdCostsOneRead(self) -> None:
        """A well-formed id with a position the channel never reached is refused by the
        history read it makes (one), the client told, and nothing replayed."""
        epoch = self.publish_("m1").epoch
        tag = _sse_format.channels_tag([CHAT])
        reads = self.factory.node.reads.stats["history_reads"]
        forged = f"{tag}.{epoch}:99999999"
        client = await self.stream(**{"last-event-id": forged})
        await client.until(lambda c: bool(c.named("ws4tx.recovered")))
        verdict = client.named("ws4tx.recovered")[0].json()
        self.assertFalse(verdict["recovered"])
        self.assertEqual(client.messages(), [])
        self.assertEqual(self.factory.node.reads.stats["history_reads"] - reads, 1)
        self.publish_("m2")
        await client.until(lambda c: len(c.messages()) == 1)
        self.assertEqual(_publications(client), ["m2"])

    async def test_disconnectClosesTheStream(self) -> None:
        """The site's disconnect (``api.disconnect``, logout) ends a user's stream with a
        last ``ws4tx.closed`` event saying why; the node forgets the client."""
        client = await self.stream("/ws/chat?subscribe-user", **identity_header("alice"))
        await client.until(lambda c: bool(c.named("ws4tx.positions")))
        node = self.factory.node
        self.publish(node.control_channel, control.encode(
            control.Disconnect(users=frozenset({"alice"}), reason="logged out")))
        await client.until(lambda c: c.ended)
        closed = client.named("ws4tx.closed")[0].json()
        self.assertEqual(closed["reason"], "logged out")
        await node.whenDrained().addTimeout(TIMEOUT, reactor)
        self.assertEqual(node.addresses.total(), 0)



class SSEHeartbeatTests(_SSETestCase):
    """Heartbeats of an SSE stream."""

    config = ServerTestCase.config.replace(ping_interval=30.0)

    async def test_heartbeatsOnTheNodesClock(self) -> None:
        """A comment every ping interval, on the node's clock: none before it is due,
        one when it is."""
        node = self.factory.node
        clock = node.clock = task.Clock()  # what the stream's timers run on
        client = await self.stream("/ws/news?subscribe-broadcast")
        await client.until(lambda c: node.clientCount() == 1)
        await node.router.barrier()
        clock.advance(29.9)
        self.publish("ws4tx:broadcast:news", "marker")
        await client.until(lambda c: len(c.messages()) == 1)
        self.assertNotIn(_sse_format.PING, client.raw)
        clock.advance(0.1)
        await client.until(lambda c: _sse_format.PING in c.raw)
        client.close()
        await node.whenDrained().addTimeout(TIMEOUT, reactor)
        self.assertEqual(clock.getDelayedCalls(), [])


class SSESlowConsumerTests(_SSETestCase):
    """The bounds of a slow WebSocket client apply to a stream."""

    config = ServerTestCase.config.replace(max_queue_bytes=64 * 1024)

    async def test_streamThatIsNotReadIsDropped(self) -> None:
        """A stream whose client stops reading is dropped once more than
        ``max_queue_bytes`` wait for it (counted as a slow consumer), while another stream
        of the channel gets every message."""
        node = self.factory.node
        normal = await self.stream("/ws/news?subscribe-broadcast")
        await never_reading(self, self.port, b"GET /ws/news?subscribe-broadcast HTTP/1.1\r\n"
                            b"Host: x\r\nAccept: text/event-stream\r\n\r\n")
        await node.router.barrier()
        loop, sent = self.publishSteadily("ws4tx:broadcast:news")
        while node.stats["slow_consumers"] == 0:
            # Dropped well before the socket buffers and the queue hold 20 MB.
            self.assertLess(sent[0], 1000)
            seen = len(normal.events)  # the next message, then look again
            await normal.until(lambda c, seen=seen: len(c.events) > seen)
        loop.stop()
        last = sent[0] - 1
        await normal.until(lambda c: c.messages()[-1].data.startswith(f"{last} "))
        numbers = [int(m.data.split(" ", 1)[0]) for m in normal.messages()]
        self.assertEqual(numbers, list(range(last + 1)))
        self.assertEqual(node.clientCount(), 1)
        self.assertEqual(node.addresses.total(), 1)


class HistoryGetTests(_SSETestCase):
    """``GET <URL>&history&since=<id>``: the stored messages after a position, as JSON."""

    config = SSETests.config

    async def get(self, query: str, **headers: str) -> tuple[Any, Any]:
        response, client = await request(self.port, PATH + "&history&since=" + query,
                                         headers, accept="application/json")
        await client.until(lambda c: c.ended)
        return response, json.loads(client.raw)

    async def test_pagesAfterAPositionSealedOnesCacheable(self) -> None:
        """70 messages: from offset 0 a full page of 64 (more after it: it cannot change,
        so a cache may keep it), then from its ``next`` the last 6 (not cacheable)."""
        epoch = ""
        for n in range(70):
            epoch = publish_with_history(self.redis, CHAT, f"m{n}".encode(), RETENTION).epoch
        tag = _sse_format.channels_tag([CHAT])
        response, body = await self.get(f"{tag}.{epoch}:0")
        self.assertEqual(response.code, 200)
        page = body["channels"][CHAT]
        self.assertEqual([m["data"] for m in page["messages"]], [f"m{n}" for n in range(64)])
        self.assertEqual([m["offset"] for m in page["messages"]], list(range(1, 65)))
        self.assertFalse(page["complete"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"),
                         [b"public, max-age=600"])
        self.assertEqual(body["next"], f"{tag}.{epoch}:64")
        response, body = await self.get(body["next"])
        page = body["channels"][CHAT]
        self.assertEqual([m["data"] for m in page["messages"]], [f"m{n}" for n in range(64, 70)])
        self.assertTrue(page["complete"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    async def test_malformedOrForgedPositionRefusedOrTold(self) -> None:
        """A ``since`` that is not an id of this URL is refused (400); a position the
        channel never reached says why, sends nothing, and is not cached."""
        epoch = publish_with_history(self.redis, CHAT, b"m", RETENTION).epoch
        response, body = await self.get("nonsense")
        self.assertEqual(response.code, 400)
        tag = _sse_format.channels_tag([CHAT])
        response, body = await self.get(f"{tag}.{epoch}:999999")
        page = body["channels"][CHAT]
        self.assertEqual((page["messages"], page["reason"]), ([], "position"))
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    async def test_admittedAsAHandshake(self) -> None:
        """A page of another site with the user's cookie is refused (403)."""
        response, body = await self.get("x", origin="https://evil.example",
                                        cookie="sessionid=abc")
        self.assertEqual((response.code, body["reason"]), (403, "this Origin is not allowed"))


class SSECapTests(_SSETestCase):
    """A stream counts as a connection of its client's address."""

    # 127.0.0.1 is not a proxy here: its connections are capped.
    config = ServerTestCase.config.replace(max_connections_per_ip=1, trusted_proxies=())

    async def test_perAddressCapCountsStreams(self) -> None:
        """With a cap of one connection per address, a second stream from it is refused
        with 429; once the first ends, a stream is admitted again."""
        first = await self.stream("/ws/news?subscribe-broadcast")
        response, refused = await request(self.port, "/ws/news?subscribe-broadcast")
        await refused.until(lambda c: c.ended)
        self.assertEqual(response.code, 429)
        first.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        await self.stream("/ws/news?subscribe-broadcast")


#: The commands the histories script runs inside Redis (``INFO commandstats`` counts them).
SCRIPT_INNER = ("hmget", "expire", "xrange", "xrevrange", "del", "hset")


class ReconnectCostTests(_SSETestCase):
    """What a reconnect with ``Last-Event-ID`` costs Redis: the issue's promise is one
    round trip for all the stream's channels, so the commands it runs must not grow with
    the number of channels (counted by Redis itself, ``INFO commandstats``)."""

    config = ServerTestCase.config.replace(history={"chat": {"size": 300, "ttl": 600}})

    def commands(self) -> dict[str, int]:
        stats = self.redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    async def reconnect_cost(self, count: int) -> dict[str, int]:
        """The commands Redis ran for a reconnect, with a Last-Event-ID, of a stream of
        ``count`` channels that each missed one message (the subscriber's own commands
        left out: subscribing is not reading)."""
        path, who, last, channels = await self.missedOneEach("g", count)
        before = self.commands()
        again = await self.stream(path, **{"last-event-id": last, **who})
        await again.until(lambda c: bool(c.named("ws4tx.recovered")))
        after = self.commands()
        verdict = again.named("ws4tx.recovered")[0].json()
        self.assertTrue(verdict["recovered"], verdict)
        self.assertEqual(sorted(m.json()["channel"] for m in again.messages()),
                         sorted(channels))
        again.close()
        await again.until(lambda c: c.ended)
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        ran = {name: after[name] - before.get(name, 0) for name in after
               if after[name] != before.get(name, 0)}
        for mine in ("info", "subscribe", "unsubscribe", "psubscribe", "ping"):
            ran.pop(mine, None)
        # Redis counts the commands a script runs as well: the histories script's
        # reads inside Redis (a few per channel) are work, not round trips.
        for inner in SCRIPT_INNER:
            ran.pop(inner, None)
        return ran

    async def websocket_reconnect_cost(self, count: int) -> dict[str, int]:
        """The commands Redis ran for a WebSocket event client of ``count`` channels
        that reconnects with its positions (``recover=``), each channel having missed one
        message (the subscriber's own commands and the script's inner ones left out)."""
        groups = tuple(f"w{count}x{i}" for i in range(count))
        channels = [f"ws4tx:group:{g}:chat" for g in groups]
        who = identity_header("alice", groups)
        for channel in channels:
            publish_with_history(self.redis, channel, b"before", RETENTION)
        first = await self.client("/ws/chat?subscribe-group", headers=who,
                                  protocols=("ws4tx.v1",))
        told = json.loads((await first.next())[0])
        self.assertEqual(told["event"], "ws4tx.positions", told)
        seen = told["data"]["channels"]
        await first.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        for channel in channels:
            publish_with_history(self.redis, channel, b"missed", RETENTION)
        recover = "".join(f"&recover={channel}:{seen[channel]['epoch']}:"
                          f"{seen[channel]['offset']}" for channel in channels)
        before = self.commands()
        client = await self.client(f"/ws/chat?subscribe-group{recover}", headers=who,
                                   protocols=("ws4tx.v1",))
        got: list[dict[str, Any]] = []
        while not got or got[-1].get("event") != "ws4tx.recovered":
            payload, _ = await client.next()
            got.append(json.loads(payload))
        after = self.commands()
        self.assertTrue(got[-1]["data"]["recovered"], got[-1])
        self.assertEqual(sorted((m["channel"], m["data"]) for m in got[:-1]),
                         [(channel, "missed") for channel in sorted(channels)])
        await client.close()
        await self.factory.node.whenDrained().addTimeout(TIMEOUT, reactor)
        ran = {name: after[name] - before.get(name, 0) for name in after
               if after[name] != before.get(name, 0)}
        for mine in ("info", "subscribe", "unsubscribe", "psubscribe", "ping",
                     *SCRIPT_INNER):
            ran.pop(mine, None)
        return ran

    async def test_websocketReconnectWithPositionsCostDoesNotGrowWithChannels(self) -> None:
        """The same holds for a WebSocket event client that reconnects with its
        positions: one MGET, one histories call and the barrier's PUBLISH, for 1, 10 or 30
        channels (a WebSocket URL holds fewer positions than a Last-Event-ID: the server
        caps its query string)."""
        costs = {n: await self.websocket_reconnect_cost(n) for n in (1, 10, 30)}
        expected = {"mget": 1, "evalsha": 1, "publish": 1}
        self.assertEqual(costs, dict.fromkeys(costs, expected), costs)

    async def test_lastEventIdReconnectCostDoesNotGrowWithChannels(self) -> None:
        """A reconnect of 1, 10 and 50 channels sends Redis the same commands: one MGET
        (the stored messages), one call of the histories script (every channel's
        history) and the barrier's PUBLISH."""
        costs = {n: await self.reconnect_cost(n) for n in (1, 10, 50)}
        self.assertEqual(costs[1], {"mget": 1, "evalsha": 1, "publish": 1}, costs)
        self.assertEqual(costs[50], costs[1], costs)
        self.assertEqual(costs[10], costs[1], costs)


class ReconnectRoundTripTests(_SSETestCase):
    """A reconnect with ``Last-Event-ID`` takes one Redis round trip for all its channels:
    the barrier that orders its reads against the live messages goes right after them on
    the command connection, without waiting for their answers (Redis runs it after them).
    Redis's answers on the command connection are held (by a proxy) until the barrier is
    sent: a server that waits for the reads' answers first would send it only once they
    are let through after a while."""

    config = ServerTestCase.config.replace(history={"chat": {"size": 300, "ttl": 600}})

    async def redisAddress(self) -> RedisAddress:
        self.gate = RedisGate(self.redis_server.port)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.gate)
        self.addCleanup(port.stopListening)
        return RedisAddress(host="127.0.0.1", port=port.getHost().port)

    async def reconnect(self, count: int) -> None:
        path, who, last, channels = await self.missedOneEach("r", count)
        self.gate.hold(until_sent=b"barrier:", patience=2.0)
        again = await self.stream(path, **{"last-event-id": last, **who})
        await again.until(lambda c: bool(c.named("ws4tx.recovered")))
        self.assertEqual(self.gate.outcome, "sent",
                         "the barrier waited for the answers to the reads")
        verdict = again.named("ws4tx.recovered")[0].json()
        self.assertTrue(verdict["recovered"], verdict)
        self.assertEqual(sorted((m.json()["channel"], m.json()["data"])
                                for m in again.messages()),
                         [(channel, "missed") for channel in sorted(channels)])

    async def test_oneChannel(self) -> None:
        """One channel: the barrier goes before the reads are answered."""
        await self.reconnect(1)

    async def test_tenChannels(self) -> None:
        """Ten channels: still one round trip (the reads of all of them, then the
        barrier)."""
        await self.reconnect(10)


class MessageEventsTests(SynchronousTestCase):
    """A message's events, their data lines made once for all its streams, are the bytes
    each stream would have made of it."""

    def test_sameBytesAsEachStreamWouldMake(self) -> None:
        events = _sse_format.MessageEvents()
        one, two = b"first\r\nline", b"second\rone\n"
        for payload, id in ((one, None), (one, "t.e:1"), (two, "t.e:2"), (two, None),
                            (one, "t.e:3")):
            self.assertEqual(events.event(payload, id), _sse_format.event(payload, id=id))
        self.assertEqual(events.event(two), b"data: second\ndata: one\ndata: \n\n")

    def test_anEqualPayloadOfAnotherMessage(self) -> None:
        """Another message's payload, even one of the same text, gets its own lines."""
        events = _sse_format.MessageEvents()
        first = b"x" * 10
        self.assertEqual(events.event(first), b"data: xxxxxxxxxx\n\n")
        second = bytes(bytearray(b"y" * 10))
        self.assertEqual(events.event(second, "i"), b"id: i\ndata: yyyyyyyyyy\n\n")

    def test_writtenOncePerMessageAndKey(self) -> None:
        """What a stream writes of a message is made once for all streams that give the
        same key (the same bytes object), as its event framed for the connection (an
        HTTP/1.1 chunk when chunked); another key or another message gets its own."""
        chunks = _sse_format.MessageEvents(chunked=True)
        made: list[str] = []

        def id_() -> str:
            made.append("t.e:1")
            return "t.e:1"

        payload = b"hello"
        first = chunks.written(payload)
        self.assertEqual(first, b"d\r\ndata: hello\n\n\r\n")
        self.assertIs(chunks.written(payload), first)
        with_id = chunks.written(payload, "t", id_)
        self.assertEqual(with_id, _sse_format.chunk(_sse_format.event(payload, id="t.e:1")))
        self.assertIs(chunks.written(payload, "t", id_), with_id)
        self.assertEqual(made, ["t.e:1"])
        other = bytes(bytearray(payload))
        self.assertEqual(chunks.written(other), first)
        self.assertIsNot(chunks.written(other), first)
        plain = _sse_format.MessageEvents()
        self.assertEqual(plain.written(payload, "t", id_), b"id: t.e:1\ndata: hello\n\n")
