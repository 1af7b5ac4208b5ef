"""Channels added and left at run time by ``subscribe`` and ``unsubscribe`` frames (issue
#22), on a real server and Redis with real WebSocket clients that speak ws4tx.v1."""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope, history, naming
from ws4tx.server.auth import HandshakeRequest

from test._server import ServerTestCase, identity_from_header, identity_header
from test._wsclient import TIMEOUT

EVENTS = (envelope.SUBPROTOCOL,)
JOHN = identity_header("john", ("staff",), "s-john")
HISTORY = {"chat*": {"size": 5, "ttl": 600}}
NOTES_BROADCAST = "ws4tx:broadcast:notes"
NOTES_JOHN = "ws4tx:user:john:notes"
CHAT = "ws4tx:broadcast:chat"


def subscribe(id: Optional[int], facility: str, recover: Optional[dict[str, str]] = None,
              **audiences: Any) -> str:
    frame: dict[str, Any] = {"ws4tx": "subscribe", "id": id, "facility": facility,
                             "audiences": audiences}
    if id is None:
        del frame["id"]
    if recover is not None:
        frame["recover"] = recover
    return json.dumps(frame, separators=(",", ":"))


def unsubscribe(id: int, facility: str, **audiences: Any) -> str:
    return json.dumps({"ws4tx": "unsubscribe", "id": id, "facility": facility,
                       "audiences": audiences}, separators=(",", ":"))


class FrameTests(SynchronousTestCase):
    """The frames' shape (pure)."""

    def test_subscribeDecodes(self) -> None:
        """A subscribe names a facility, audiences (groups: a list or true) and
        positions."""
        frame = envelope.decode(subscribe(3, "chat", {CHAT: "e1:4"}, broadcast=True,
                                          groups=["staff", "staff"]))
        self.assertEqual(frame, envelope.Subscribe(
            3, "chat", envelope.Audiences(broadcast=True, groups=("staff",)),
            ((CHAT, "e1:4"),)))
        assert isinstance(frame, envelope.Subscribe)
        self.assertEqual(frame.audiences.names(), {"broadcast", "group"})

    def test_malformedFramesSayWhy(self) -> None:
        """Each malformed subscribe is refused with what is wrong, and the id to answer."""
        cases = {
            subscribe(1, "chat", everyone=True): "unknown audience 'everyone'",
            subscribe(1, "chat", groups=5): "'groups' must be true or a list",
            subscribe(1, "chat", user="yes"): "audience 'user' must be true or false",
            subscribe(1, "chat"): "'audiences' must be a non-empty object",
            subscribe(1, "chat", user=False): "no audience chosen",
            subscribe(1, "", user=True): "'facility' must be a non-empty string",
            subscribe(1, "chat", [], user=True): "'recover' must be an object",
            subscribe(None, "chat", user=True): "needs an id",
            subscribe(1, "chat", user=True)[:-1] + ',"x":1e999}': "out of range",
            subscribe(1, "chat", user=True)[:-1] + ',"grant":5}': "'grant' must be a string",
            subscribe(1, "chat", user=True)[:-1] + ',"grant":"%s"}' % ("g" * 2049):
                "'grant' must be a string of at most 2048",
        }
        for text, why in cases.items():
            with self.assertRaises(envelope.InvalidEnvelope) as caught:
                envelope.decode(text)
            self.assertIn(why, str(caught.exception), text)
            self.assertEqual(caught.exception.kind, "subscribe")
        with self.assertRaises(envelope.InvalidEnvelope) as caught:
            envelope.decode(unsubscribe(1, "chat", user=True)[:-1] + ',"grant":"g"}')
        self.assertIn("unknown field 'grant'", str(caught.exception))

    def test_answersAreTheServersVoice(self) -> None:
        """A subscribed, unsubscribed or refused answer met on a channel is forged."""
        for text in (envelope.encode_subscribed(1, "chat", [CHAT]),
                     envelope.encode_unsubscribed(1, "chat", [CHAT]),
                     envelope.encode_refused(1, "no")):
            self.assertIsNotNone(envelope.server_voice(text.encode()))


class SubscribeTests(ServerTestCase):
    """Event clients on the WebSocket URL itself (``/ws/``) subscribing by frames."""

    async def _setUp(self) -> None:
        import redis

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startServer(config={"history": HISTORY, "max_subscriptions": 4})

    async def frame(self, client: Any) -> dict[str, Any]:
        payload, binary = await client.next()
        self.assertFalse(binary)
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def message(self, client: Any) -> tuple[str, str]:
        """The channel and payload of the next frame, a raw message as a subscription
        gets it: in a publication envelope without a position."""
        frame = await self.frame(client)
        self.assertEqual(sorted(frame), ["channel", "data", "ws4tx"], frame)
        self.assertEqual(frame["ws4tx"], "pub")
        return frame["channel"], frame["data"]

    async def subscribed(self, client: Any, frame: str) -> dict[str, Any]:
        client.send(frame)
        answer = await self.frame(client)
        self.assertEqual(answer["ws4tx"], "subscribed", answer)
        return answer

    def publishWithHistory(self, channel: str, payload: bytes) -> history.Position:
        keys, args = history.publish_args(
            channel, channel, *naming.history_keys("ws4tx", channel), payload,
            history.Retention(5, 600), 0)
        reply = self.redis.eval(history.script(history.PUBLISH_SCRIPT), len(keys),
                                *keys, *args)
        return history.parse_published(reply).position

    async def test_subscribeOnTheBareURLDelivers(self) -> None:
        """An event client on /ws/ (no facility, no channel) subscribes to a facility's
        broadcast and its own user channel, is answered with them, and gets what is
        published on both."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        answer = await self.subscribed(client, subscribe(1, "notes", broadcast=True,
                                                         user=True))
        self.assertEqual(answer, {"ws4tx": "subscribed", "id": 1, "facility": "notes",
                                  "channels": [NOTES_BROADCAST, NOTES_JOHN]})
        self.assertEqual(self.publish(NOTES_BROADCAST, "to all"), 1)
        self.assertEqual(await self.message(client), (NOTES_BROADCAST, "to all"))
        self.assertEqual(self.publish(NOTES_JOHN, "to john"), 1)
        self.assertEqual(await self.message(client), (NOTES_JOHN, "to john"))
        self.assertEqual(self.factory.node.clientCount(), 1)

    async def test_bareURLIsForEventClientsOnly(self) -> None:
        """A raw (ws4redis) client still needs a facility: /ws/ is refused (400)."""
        from test._wsclient import handshake_request, raw_request, status_of

        status, _ = status_of(await raw_request(self.port, handshake_request("/ws/")))
        self.assertEqual(status, 400)

    async def test_refusedSubscribeChangesNothing(self) -> None:
        """A group that is not the client's, or a user channel for an anonymous client,
        is refused with the reason; the subscription already there keeps delivering."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True))
        client.send(subscribe(2, "notes", groups=["admins"]))
        self.assertEqual(await self.frame(client), {
            "ws4tx": "refused", "id": 2,
            "reason": "not allowed: 'admins' is not one of your groups"})
        anonymous = await self.client("/ws/", protocols=EVENTS)
        anonymous.send(subscribe(3, "notes", user=True))
        self.assertEqual(await self.frame(anonymous), {
            "ws4tx": "refused", "id": 3, "reason": "not allowed: the user audience of notes"})
        client.send(subscribe(4, "notes", broadcast=True))
        self.assertEqual(await self.frame(client), {
            "ws4tx": "refused", "id": 4, "reason": f"already subscribed: {NOTES_BROADCAST}"})
        self.assertEqual(self.publish(NOTES_BROADCAST, "still here"), 1)
        self.assertEqual(await self.message(client), (NOTES_BROADCAST, "still here"))
        self.assertEqual(self.factory.node.stats["subscribes_refused"], 3)

    async def test_subscribeWithPositionsRecoversExactlyTheMissed(self) -> None:
        """A client that saw a channel up to a position and subscribes again (on a new
        connection) with it gets exactly the messages published meanwhile, in order,
        then recovered: true, then live ones."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "chat", broadcast=True))
        positions = await self.frame(client)
        self.assertEqual(positions["event"], envelope.POSITIONS_EVENT)
        self.publishWithHistory(CHAT, b"seen")
        seen = await self.frame(client)
        self.assertEqual((seen["ws4tx"], seen["data"]), ("pub", "seen"))
        await client.close()
        missed = [self.publishWithHistory(CHAT, b"missed %d" % i) for i in range(3)]
        again = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(again, subscribe(
            1, "chat", {CHAT: f"{seen['epoch']}:{seen['offset']}"}, broadcast=True))
        got = [await self.frame(again) for _ in missed]
        self.assertEqual([(f["offset"], f["data"]) for f in got],
                         [(2, "missed 0"), (3, "missed 1"), (4, "missed 2")])
        recovered = await self.frame(again)
        self.assertEqual(recovered["event"], envelope.RECOVERED_EVENT)
        self.assertEqual(recovered["data"], {"recovered": True, "channels": {
            CHAT: {"recovered": True, "messages": 3}}})
        self.publishWithHistory(CHAT, b"live")
        live = await self.frame(again)
        self.assertEqual((live["offset"], live["data"]), (5, "live"))

    async def test_unsubscribeStopsDelivery(self) -> None:
        """After unsubscribe (answered with the channels left) nothing of them comes;
        the other subscription goes on, and the node unsubscribes Redis."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True, user=True))
        client.send(unsubscribe(2, "notes", broadcast=True))
        self.assertEqual(await self.frame(client), {
            "ws4tx": "unsubscribed", "id": 2, "facility": "notes",
            "channels": [NOTES_BROADCAST]})
        self.assertNotIn(NOTES_BROADCAST, self.factory.node.router.hub.channels())
        self.publish(NOTES_BROADCAST, "gone")
        self.publish(NOTES_JOHN, "kept")
        self.assertEqual(await self.message(client), (NOTES_JOHN, "kept"))
        client.send(unsubscribe(3, "notes", broadcast=True))
        self.assertEqual(await self.frame(client), {
            "ws4tx": "refused", "id": 3,
            "reason": "not subscribed to those channels of notes"})
        client.send(unsubscribe(4, "notes", user=True))
        self.assertEqual((await self.frame(client))["channels"], [NOTES_JOHN])
        self.assertEqual(self.factory.node.router.memberCount(), 1)

    async def test_subscriptionsAreCapped(self) -> None:
        """Past max_subscriptions channels a subscribe is refused and nothing of it is
        added; leaving channels makes room again."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True, user=True,
                                                session=True))
        client.send(subscribe(2, "news", broadcast=True, user=True))
        self.assertEqual(await self.frame(client), {
            "ws4tx": "refused", "id": 2,
            "reason": "too many subscriptions: at most 4 channels per connection"})
        self.assertNotIn("ws4tx:broadcast:news", self.factory.node.router.hub.channels())
        await self.subscribed(client, subscribe(3, "news", broadcast=True))
        client.send(unsubscribe(4, "notes", session=True))
        self.assertEqual((await self.frame(client))["ws4tx"], "unsubscribed")
        await self.subscribed(client, subscribe(5, "news", user=True))

    async def test_forgedFramesGetAClearErrorAndChangeNothing(self) -> None:
        """Malformed frames are answered (refused with the reason when they carry an id,
        else ws4tx.error); the connection and its subscriptions are as they were."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True))
        client.send(subscribe(2, "notes", everyone=True))
        refused = await self.frame(client)
        self.assertEqual((refused["ws4tx"], refused["id"]), ("refused", 2))
        self.assertIn("unknown audience 'everyone'", refused["reason"])
        client.send(subscribe(None, "notes", user=True))
        error = await self.frame(client)
        self.assertEqual(error["event"], envelope.ERROR_EVENT)
        self.assertIn("needs an id", error["data"]["message"])
        client.send(subscribe(3, "bad facility", user=True))
        refused = await self.frame(client)
        self.assertEqual((refused["ws4tx"], refused["id"]), ("refused", 3))
        client.send(subscribe(4, "notes", {"nonsense": "x"}, user=True))
        refused = await self.frame(client)
        self.assertIn("invalid recover", refused["reason"])
        hub = self.factory.node.router.hub
        self.assertEqual(sorted(hub.channels()), [NOTES_BROADCAST])
        self.assertEqual(self.publish(NOTES_BROADCAST, "unchanged"), 1)
        self.assertEqual(await self.message(client), (NOTES_BROADCAST, "unchanged"))

    async def test_theSitesSubscribeKeepsTheCap(self) -> None:
        """A subscribe by the site (on the control channel) is not authorized but still
        bounded by max_subscriptions: past it nothing is added and the client is told
        nothing; within it the client is told which channels it got."""
        from ws4tx import control

        node = self.factory.node
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True, user=True,
                                                session=True))
        control_channel = naming.control_channel("ws4tx")
        self.publish(control_channel, control.encode(control.subscribe("news",
                                                                       users=["john"])))
        self.publish(control_channel, control.encode(control.subscribe(
            "news", groups=["staff"], audiences=["group"], reason="staff news")))
        told = await self.frame(client)
        self.assertEqual((told["event"], told["data"]), (envelope.SUBSCRIBED_EVENT, {
            "facility": "news", "audiences": ["group"], "reason": "staff news",
            "channels": ["ws4tx:group:staff:news"]}))
        self.assertEqual(node.counters()["subscribed_by_site"], 1)
        self.assertNotIn("ws4tx:broadcast:news", node.router.hub.channels())
        self.assertEqual(self.publish("ws4tx:group:staff:news", "staff"), 1)
        self.assertEqual(await self.message(client), ("ws4tx:group:staff:news", "staff"))

    async def test_aGrantNeedsAServerThatReadsThem(self) -> None:
        """A server whose authenticator reads no grants (not the Django one) refuses a
        subscribe with a grant, and says so."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "notes", broadcast=True)[:-1] + ',"grant":"g"}')
        self.assertEqual(await self.frame(client), {
            "ws4tx": "refused", "id": 1,
            "reason": "invalid grant: this server does not read grants"})

    async def test_closingLeavesEverySubscription(self) -> None:
        """A connection that goes away takes its subscriptions with it: no member, no
        channel left on the node."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        await self.subscribed(client, subscribe(1, "notes", broadcast=True, user=True))
        await client.close()
        await self.factory.test_left.get()
        node = self.factory.node
        self.assertEqual((node.router.memberCount(), node.clientCount()), (0, 0))
        self.assertEqual(list(node.router.hub.channels()), [])


class PresenceTests(ServerTestCase):
    """A subscription to a facility with presence is in it, as a connection is."""

    config = ServerTestCase.config.replace(presence=("*",))

    async def test_aSubscriptionIsInItsFacilitysPresence(self) -> None:
        """The bare URL itself is in no presence; a subscription to chat is (with its
        user) until it unsubscribes."""
        presence = self.factory.node.presence
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        self.assertEqual(presence.entries(""), [])
        client.send(subscribe(1, "chat", broadcast=True))
        self.assertEqual(json.loads(await client.text())["ws4tx"], "subscribed")
        self.assertEqual([e.user for e in presence.entries("chat")], ["john"])
        client.send(unsubscribe(2, "chat", broadcast=True))
        answer = json.loads(await client.text())
        while answer["ws4tx"] != "unsubscribed":  # presence events of its own join
            answer = json.loads(await client.text())
        self.assertEqual(presence.entries("chat"), [])


class RateTests(ServerTestCase):
    """Subscribe frames count against the client's rate limit."""

    config = ServerTestCase.config.replace(rate_limit=0.001, rate_burst=1)

    async def test_subscribeOverTheRateIsRefused(self) -> None:
        """A subscribe over the rate limit is answered refused, and adds nothing."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "notes", broadcast=True))
        self.assertEqual(json.loads(await client.text())["ws4tx"], "subscribed")
        client.send(subscribe(2, "notes", user=True))
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "refused", "id": 2, "reason": "rate limit exceeded: subscribe dropped"})
        self.assertEqual(list(self.factory.node.router.hub.channels()), [NOTES_BROADCAST])


class HeldAuthenticator:
    """The test identity; a subscribe's authorization runs through an
    :class:`~ws4tx.server._authgate.AuthGate` (one at once) as the Django authenticator's
    does, in a "thread" the test finishes (:meth:`finish`)."""

    def __init__(self) -> None:
        from ws4tx.server._authgate import AuthGate

        self.gate = AuthGate(concurrency=1, queue=5)
        #: The work started for subscribes (as threads would be), in order.
        self.started: list[defer.Deferred[Any]] = []

    def authenticate(self, request: HandshakeRequest) -> Any:
        identity = identity_from_header(request)
        if not request.facility:  # the connection itself, on /ws/
            return identity

        def start() -> defer.Deferred[Any]:
            work: defer.Deferred[Any] = defer.Deferred()
            work.addCallback(lambda _: identity)
            self.started.append(work)
            return work

        return self.gate.run(start)

    def finish(self, index: int) -> None:
        self.started[index].callback(None)


class AuthorizationTests(ServerTestCase):
    """What a subscribe costs before and after its authorization."""

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        self.authenticator = HeldAuthenticator()
        await self.startServer(authenticator=self.authenticator,
                               config={"presence": ("*",), "max_subscriptions": 4})

    async def test_aClientAtItsCapCostsNoAuthorization(self) -> None:
        """A subscribe that would go past the cap, counting the channels of one still
        being authorized, is refused at once: no authorization work starts for it."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "notes", broadcast=True, user=True, session=True))
        client.send(subscribe(2, "news", broadcast=True, user=True))
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "refused", "id": 2,
            "reason": "too many subscriptions: at most 4 channels per connection"})
        self.assertEqual(len(self.authenticator.started), 1)
        self.authenticator.finish(0)
        self.assertEqual(json.loads(await client.text())["ws4tx"], "subscribed")
        client.send(subscribe(3, "news", broadcast=True, user=True))
        self.assertEqual(json.loads(await client.text())["reason"],
                         "too many subscriptions: at most 4 channels per connection")
        client.send(subscribe(4, "notes", user=True))
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "refused", "id": 4, "reason": f"already subscribed: {NOTES_JOHN}"})
        self.assertEqual(len(self.authenticator.started), 1)

    async def test_anAuthorizationFinishingAfterCloseJoinsNothing(self) -> None:
        """A connection that closes while its subscribes are authorized: the one waiting
        for the gate leaves its queue (its work never starts), the running one's answer
        is ignored; no member, no presence entry, nothing answered or counted."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "chat", broadcast=True))
        client.send(subscribe(2, "notes", user=True))
        gate, node = self.authenticator.gate, self.factory.node
        while gate.waiting < 1:  # the second frame reached the gate
            await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual((gate.running, len(self.authenticator.started)), (1, 1))
        await client.close()
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(gate.waiting, 0)
        self.authenticator.finish(0)
        self.assertEqual(len(self.authenticator.started), 1)
        self.assertEqual(gate.running, 0)
        self.assertEqual((node.router.memberCount(), node.clientCount()), (0, 0))
        self.assertEqual(node.presence.entries("chat"), [])
        self.assertEqual(list(node.router.hub.channels()), [])
        self.assertEqual((node.stats["subscribes"], node.stats["subscribes_refused"]),
                         (0, 0))
