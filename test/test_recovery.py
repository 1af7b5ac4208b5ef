"""Recovering missed messages on reconnect (issue #11): the pure merge from tables, and
the server end to end on a real Redis with real WebSocket clients that speak ws4tx.v1."""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope, history, naming
from ws4tx.history import GAP, History, Merge, Position, Publication, merge

from test._server import ServerTestCase
from test._wsclient import handshake_request, raw_request, status_of

E = "e1"


def _history(top: int, offsets: list[int], epoch: str = E) -> History:
    return History(epoch, top, [Publication(o, b"m%d" % o) for o in offsets])


def _p(offset: int, epoch: str = E) -> Position:
    return Position(offset, epoch)


class MergeTests(SynchronousTestCase):
    """history.merge: what a client that saw ``position`` gets, from a history read and
    the live messages held meanwhile."""

    #: (name, client's position, history read, live positions,
    #:  expected: recovered, reason, offsets recovered from the history, live kept)
    TABLE: list[tuple[str, Position, History, list[Optional[Position]],
                      bool, Optional[str], list[int], list[bool]]] = [
        ("nothing missed, nothing live", _p(3), _history(3, []), [], True, None, [], []),
        ("missed three", _p(2), _history(5, [3, 4, 5]), [], True, None, [3, 4, 5], []),
        ("live after the read", _p(2), _history(3, [3]), [_p(4), _p(5)],
         True, None, [3], [True, True]),
        ("live duplicates of the read are dropped", _p(2), _history(4, [3, 4]),
         [_p(3), _p(4), _p(5)], True, None, [3, 4], [False, False, True]),
        ("history duplicates of the position are skipped", _p(3), _history(4, [2, 3, 4]),
         [], True, None, [4], []),
        ("a live message without a position goes as it came", _p(1), _history(1, []),
         [None, _p(2)], True, None, [], [True, True]),
        ("empty stream of a fresh epoch at offset 0", _p(0), _history(0, []), [],
         True, None, [], []),
        ("epoch changed", _p(2), _history(3, [1, 2, 3], epoch="e2"), [_p(4, "e2")],
         False, "epoch", [], [True]),
        ("trimmed: the first entry is past the position", _p(2), _history(9, [5, 6, 7, 8, 9]),
         [], False, "trimmed", [], []),
        ("trimmed: the stream is empty below its last offset", _p(2), _history(4, []), [],
         False, "trimmed", [], []),
        ("trimmed: the stream stops short of its last offset", _p(2), _history(5, [3, 4]),
         [], False, "trimmed", [], []),
        ("a hole in the history", _p(2), _history(5, [3, 5]), [], False, GAP, [], []),
        ("a hole between history and live", _p(2), _history(3, [3]), [_p(5)],
         False, GAP, [], [True]),
        ("a live message of another epoch", _p(2), _history(3, [3]), [_p(1, "e2")],
         False, "epoch", [], [True]),
        ("a position the stream never reached", _p(7), _history(3, [1, 2, 3]), [],
         False, "position", [], []),
    ]

    def test_table(self) -> None:
        for name, position, read, live, ok, reason, offsets, kept in self.TABLE:
            got = merge(position, read, live)
            self.assertEqual(
                (got.recovered, got.reason, [p.offset for p in got.publications],
                 list(got.live)), (ok, reason, offsets, kept), name)

    def test_failureSendsNothingOfTheHistory(self) -> None:
        got = merge(_p(2), _history(9, [8, 9]), [_p(10)])
        self.assertEqual(got, Merge(False, "trimmed", (), (True,)))

    def test_recoverParameters(self) -> None:
        self.assertEqual(history.parse_recover(["ws4tx:broadcast:chat:ab12:7",
                                                "ws4tx:user:a:b:chat:ff:0"]),
                         {"ws4tx:broadcast:chat": Position(7, "ab12"),
                          "ws4tx:user:a:b:chat": Position(0, "ff")})
        for bad in ("", "chat", "chat:e", ":e:1", "chat:e:-1", "chat:e f:1", "chat:e:x"):
            self.assertRaises(ValueError, history.parse_recover, [bad])

    def test_publicationEnvelope(self) -> None:
        text = envelope.encode_publication("c", 3, "e", b"hi \xc3\xa9")
        self.assertEqual(json.loads(text), {"ws4tx": "pub", "channel": "c", "offset": 3,
                                            "epoch": "e", "data": "hi \u00e9"})
        binary = json.loads(envelope.encode_publication("c", 4, "e", b"\xff\x00"))
        self.assertEqual(binary["data64"], "/wA=")
        # Only the server sends them: one met on a channel is forged.
        self.assertIsNotNone(envelope.server_voice(text))


class FanOutTests(SynchronousTestCase):
    """The position rides on the message the router prepares once, through its backlog;
    the publication envelope is built once per message for every event client."""

    def test_positionReachesEveryClientOnOneFrame(self) -> None:
        from twisted.internet.task import Clock

        from ws4tx.server import deflate, router
        from ws4tx.testing import MemoryBroker, MemoryBus

        from test.test_routing import FakeClient

        clock = Clock()
        broker = MemoryBroker(MemoryBus(clock))
        routing = router.Router(broker, deflate.Message, clock=clock,
                                has_history=lambda channel: True)
        broker.start(routing)
        clients = [FakeClient() for _ in range(3)]
        for client in clients:
            routing.join(client, ["ch"])
        clock.advance(0)
        # More than a turn's frames: the last messages wait in the backlog.
        count = router.FRAMES_PER_TURN // len(clients) + 2
        for offset in range(1, count + 1):
            routing.messageReceived("ch", history.with_position(b"m", Position(offset, E)))
        self.assertGreater(routing.backlog, 0)
        while routing.backlog:
            clock.advance(0)
        frames = clients[0].frames
        self.assertEqual([f.position for f in frames],
                         [Position(o, E) for o in range(1, count + 1)])
        last = frames[-1]
        self.assertTrue(all(c.frames[-1] is last for c in clients))
        published = last.published("ch")
        self.assertIs(last.published("ch"), published)
        self.assertEqual(json.loads(published.payload)["offset"], count)
        self.assertEqual(last.payload, b"m")


HISTORY = {"chat*": {"size": 5, "ttl": 600}}
CHAT = "ws4tx:broadcast:chat"
EVENTS = ("ws4tx.v1",)


class RecoveryTests(ServerTestCase):
    """A real server and Redis; messages are published by the publish script, as either
    half publishes them."""

    async def _setUp(self) -> None:
        import redis

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startServer(config={"history": HISTORY})

    def publishWithHistory(self, payload: bytes) -> Position:
        keys, args = history.publish_args(
            CHAT, CHAT, *naming.history_keys("ws4tx", CHAT), payload,
            history.Retention(5, 600), 0)
        reply = self.redis.eval(history.script(history.PUBLISH_SCRIPT), len(keys),
                                *keys, *args)
        return history.parse_published(reply).position

    async def frame(self, client: Any) -> dict[str, Any]:
        payload, binary = await client.next()
        self.assertFalse(binary)
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def restart(self) -> None:
        """Stop the server (its clients are dropped) and start another on the same
        Redis."""
        await self.service.stopService()
        await self.startServer(config={"history": HISTORY})

    async def positions(self, client: Any) -> dict[str, Any]:
        """The channels of the ws4tx.positions event ``client`` gets next."""
        told = await self.frame(client)
        self.assertEqual(told["event"], envelope.POSITIONS_EVENT)
        channels: dict[str, Any] = told["data"]["channels"]
        return channels

    async def test_eventClientsGetPositionsRawClientsThePayload(self) -> None:
        events = await self.client("/ws/chat?subscribe-broadcast", protocols=EVENTS)
        raw = await self.client("/ws/chat?subscribe-broadcast")
        start = await self.positions(events)
        position = self.publishWithHistory(b"hello")
        self.assertEqual(start, {CHAT: {"epoch": position.epoch, "offset": 0}})
        self.assertEqual(await raw.next(), (b"hello", False))
        self.assertEqual(await self.frame(events), {
            "ws4tx": "pub", "channel": CHAT, "offset": 1, "epoch": position.epoch,
            "data": "hello"})

    async def test_aClientThatGotNothingYetRecoversFromWhereItJoined(self) -> None:
        """A client told the position at which it joined (it got no message) recovers
        from there after a reconnect: the messages published meanwhile, not older
        ones."""
        self.publishWithHistory(b"before")
        client = await self.client("/ws/chat?subscribe-broadcast", protocols=EVENTS)
        start = (await self.positions(client))[CHAT]
        self.assertEqual(start["offset"], 1)
        await self.restart()
        self.publishWithHistory(b"while away")
        again = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={CHAT}:{start['epoch']}:{start['offset']}",
            protocols=EVENTS)
        got = await self.frame(again)
        self.assertEqual((got["offset"], got["data"]), (2, "while away"))
        recovered = await self.frame(again)
        self.assertEqual(recovered["data"]["recovered"], True)

    async def test_aFailedRecoveryGivesTheNewPosition(self) -> None:
        """After recovered: false the client is told where the channel stands now (it
        would otherwise ask with its dead position on every reconnect)."""
        now = self.publishWithHistory(b"one")
        client = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={CHAT}:0ld:1", protocols=EVENTS)
        self.assertEqual(await self.positions(client), {CHAT: {"epoch": now.epoch,
                                                              "offset": 1}})
        recovered = await self.frame(client)
        self.assertEqual(recovered["data"]["reason"], "epoch")

    async def test_reconnectAfterRestartRecoversExactlyTheMissedOnes(self) -> None:
        """The server is down while N messages are published: the client that comes
        back with its position gets exactly those N, in order, once, told it
        recovered, then live messages."""
        client = await self.client("/ws/chat?subscribe-broadcast", protocols=EVENTS)
        await self.positions(client)
        self.publishWithHistory(b"seen")
        seen = await self.frame(client)
        await self.restart()
        missed = [self.publishWithHistory(b"missed %d" % i) for i in range(3)]
        again = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={CHAT}:{seen['epoch']}:{seen['offset']}",
            protocols=EVENTS)
        got = [await self.frame(again) for _ in missed]
        self.assertEqual([(f["offset"], f["data"]) for f in got],
                         [(2, "missed 0"), (3, "missed 1"), (4, "missed 2")])
        recovered = await self.frame(again)
        self.assertEqual(recovered["event"], envelope.RECOVERED_EVENT)
        self.assertEqual(recovered["data"], {
            "recovered": True, "channels": {CHAT: {"recovered": True, "messages": 3}}})
        self.publishWithHistory(b"live")
        live = await self.frame(again)
        self.assertEqual((live["offset"], live["data"]), (5, "live"))

    async def test_pastTheWindowTheClientIsToldItDidNotRecover(self) -> None:
        seen = self.publishWithHistory(b"seen")
        for i in range(6):  # the history keeps 5
            self.publishWithHistory(b"missed %d" % i)
        client = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={CHAT}:{seen.epoch}:{seen.offset}",
            protocols=EVENTS)
        # No part of the history: the stored replay (none here), the channel's
        # position now, then the event.
        self.assertEqual((await self.positions(client))[CHAT]["offset"], 7)
        recovered = await self.frame(client)
        self.assertEqual(recovered["data"], {
            "recovered": False, "reason": "trimmed",
            "channels": {CHAT: {"recovered": False, "reason": "trimmed"}}})

    async def test_anotherEpochIsNotRecovered(self) -> None:
        self.publishWithHistory(b"one")
        client = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={CHAT}:0ld:1", protocols=EVENTS)
        await self.positions(client)
        recovered = await self.frame(client)
        self.assertEqual((recovered["data"]["recovered"], recovered["data"]["reason"]),
                         (False, "epoch"))

    async def test_aChannelNotTheClientsIsNeverRead(self) -> None:
        """A client names only channels it listens to: another one is not recovered."""
        other = "ws4tx:user:someone:chat"
        client = await self.client(
            f"/ws/chat?subscribe-broadcast&recover={other}:ab:0", protocols=EVENTS)
        await self.positions(client)
        recovered = await self.frame(client)
        self.assertEqual(recovered["data"], {"recovered": False, "reason": "position",
                                             "channels": {}})

    async def test_malformedRecoverIsRefusedWith400(self) -> None:
        response = await raw_request(self.port, handshake_request(
            "/ws/chat?subscribe-broadcast&recover=nonsense"))
        self.assertEqual(status_of(response)[0], 400)
