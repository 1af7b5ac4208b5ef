"""A user in 200 groups on a facility with history, on one ``/ws/`` connection (issue #22):
the positions of every group channel travel in a subscribe frame, never in the URL, so a
server restart costs the client nothing it would have to squeeze under the query-length
cap; it reconnects, resubscribes with its positions and recovers every missed message of
every group exactly once, in order. Real Redis, real servers, a real WebSocket client."""

from __future__ import annotations

import json
from typing import Any

from ws4tx import envelope, history, naming
from ws4tx.server.node import RECOVERED

from test._server import ServerTestCase, identity_header

GROUPS = tuple(f"team{i:03d}" for i in range(200))
JOHN = identity_header("john", GROUPS, "s-john")
RETENTION = history.Retention(20, 600)
CHANNELS = [f"ws4tx:group:{g}:chat" for g in GROUPS]
#: The groups that get messages while the client is away, and how many each.
MISSED = {GROUPS[0]: 3, GROUPS[7]: 1, GROUPS[99]: 4, GROUPS[150]: 2, GROUPS[199]: 5}


class ManyGroupsTests(ServerTestCase):

    async def _setUp(self) -> None:
        import redis

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startNode()

    async def startNode(self) -> None:
        await self.startServer(config={"history": {"chat": {"size": 20, "ttl": 600}},
                                       "max_subscriptions": 250})

    def publishWithHistory(self, channel: str, payload: bytes) -> history.Position:
        keys, args = history.publish_args(
            channel, channel, *naming.history_keys("ws4tx", channel), payload, RETENTION, 0)
        reply = self.redis.eval(history.script(history.PUBLISH_SCRIPT), len(keys),
                                *keys, *args)
        return history.parse_published(reply).position

    async def frame(self, client: Any) -> dict[str, Any]:
        payload, binary = await client.next()
        self.assertFalse(binary)
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def subscribeRecovering(self, client: Any, positions: dict[str, history.Position]
                                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Subscribe every group channel with ``positions`` in the frame: the messages
        that came before the ``ws4tx.recovered`` event, and its data."""
        frame = json.dumps({"ws4tx": "subscribe", "id": 1, "facility": "chat",
                            "audiences": {"groups": True},
                            "recover": {c: f"{p.epoch}:{p.offset}"
                                        for c, p in positions.items()}})
        # What would be 414 in a URL (past max_query_length) is an ordinary frame.
        self.assertGreater(len(frame), 4 * self.factory.config.max_query_length)
        client.send(frame)
        answer = await self.frame(client)
        self.assertEqual((answer["ws4tx"], answer["id"]), ("subscribed", 1), answer)
        self.assertEqual(sorted(answer["channels"]), CHANNELS)
        got = []
        while True:
            frame_ = await self.frame(client)
            if frame_.get("event") == envelope.RECOVERED_EVENT:
                return got, frame_["data"]
            self.assertEqual(frame_["ws4tx"], "pub", frame_)
            got.append(frame_)

    async def test_aUserIn200GroupsRecoversEveryGroupAfterARestart(self) -> None:
        """Positions of 200 group channels in one subscribe frame on /ws/; the server
        restarts while several groups get messages; the client resubscribes on the new
        server with the positions it saw and gets exactly the missed messages of each
        group, in order, once, then recovered: true for all 200, then live ones."""
        positions = {c: self.publishWithHistory(c, b"before") for c in CHANNELS}
        client = await self.client("/ws/", JOHN, protocols=(envelope.SUBPROTOCOL,),
                                   subscribed=False)
        got, recovered = await self.subscribeRecovering(client, positions)
        self.assertEqual(got, [])
        self.assertIs(recovered["recovered"], True, recovered)
        self.assertEqual(recovered["channels"], {
            c: {"recovered": True, "messages": 0} for c in CHANNELS})
        # A live message updates what the client has seen.
        live = self.publishWithHistory(CHANNELS[7], b"seen live")
        seen = await self.frame(client)
        self.assertEqual((seen["channel"], seen["offset"], seen["data"]),
                         (CHANNELS[7], live.offset, "seen live"))
        positions[CHANNELS[7]] = history.Position(seen["offset"], seen["epoch"])

        # The server goes away (its clients with it) and comes back as a new process
        # would: a new node on the same Redis.
        await self.service.stopService()
        await client.closed
        missed: dict[str, list[str]] = {}
        for round_ in range(max(MISSED.values())):
            for group, count in MISSED.items():
                if round_ < count:
                    channel = f"ws4tx:group:{group}:chat"
                    text = f"missed {group} {round_}"
                    self.publishWithHistory(channel, text.encode())
                    missed.setdefault(channel, []).append(text)
        await self.startNode()

        again = await self.client("/ws/", JOHN, protocols=(envelope.SUBPROTOCOL,),
                                  subscribed=False)
        got, recovered = await self.subscribeRecovering(again, positions)
        by_channel: dict[str, list[tuple[int, str]]] = {}
        for frame in got:
            by_channel.setdefault(frame["channel"], []).append((frame["offset"],
                                                                frame["data"]))
        expected = {}
        for channel, texts in missed.items():
            first = positions[channel].offset + 1
            expected[channel] = [(first + i, text) for i, text in enumerate(texts)]
        self.assertEqual(by_channel, expected)
        self.assertEqual(len(got), sum(MISSED.values()))
        self.assertIs(recovered["recovered"], True, recovered)
        self.assertEqual(recovered["channels"], {
            c: {"recovered": True, "messages": len(missed.get(c, ()))} for c in CHANNELS})
        self.assertEqual(self.factory.node.recoveries, {RECOVERED: 1})

        # Live again, after what was recovered, on a group that missed some and one that
        # did not.
        for channel in (CHANNELS[99], CHANNELS[3]):
            position = self.publishWithHistory(channel, b"after")
            frame = await self.frame(again)
            self.assertEqual((frame["channel"], frame["offset"], frame["data"]),
                             (channel, position.offset, "after"))
