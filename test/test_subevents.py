"""Events for a subscription's facility (issue #22): an event envelope naming a facility
reaches that facility's handler only on a connection subscribed to it, and what the
server sends a subscription (its handler's emits, its facility's events, its presence)
names the facility; on real servers and Redis with real WebSocket clients."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope
from ws4tx.server.handlers import EventHandler

from test._server import ServerTestCase, identity_header
from test._sseclient import post

EVENTS = (envelope.SUBPROTOCOL,)
JOHN = identity_header("john", ("staff",), "s-john")
CHAT = "ws4tx:broadcast:chat"


class _Handler(EventHandler):
    """Answers ``whoami`` with its facility and the client's, after emitting to the
    client; ``shout`` emits to every subscriber of its facility's broadcast."""

    called: list[str] = []

    def on_whoami(self, client: Any, data: Any) -> dict[str, Any]:
        self.called.append(self.facility)
        client.emit("hello", {"from": self.facility})
        return {"handler": self.facility, "client": client.facility,
                "user": client.identity.user, "data": data}

    async def on_shout(self, client: Any, data: Any) -> str:
        await self.server.emit("shouted", data, facility=self.facility, broadcast=True)
        return "sent"


class Chat(_Handler):
    facility = "chat"


class Notes(_Handler):
    facility = "notes"


class Secret(_Handler):
    facility = "secret"


def event(name: str, data: Any = None, id: Any = None, facility: Any = None) -> str:
    obj: dict[str, Any] = {"ws4tx": "event", "event": name, "data": data}
    if id is not None:
        obj["id"] = id
    if facility is not None:
        obj["facility"] = facility
    return json.dumps(obj, separators=(",", ":"))


def subscribe(id: int, facility: str, **audiences: Any) -> str:
    return json.dumps({"ws4tx": "subscribe", "id": id, "facility": facility,
                       "audiences": audiences})


class FrameTests(SynchronousTestCase):
    """The facility field (pure)."""

    def test_anEventNamesItsFacility(self) -> None:
        """A client's event may name a facility (a non-empty string, else refused with
        its id); without one it is the URL's."""
        self.assertEqual(envelope.decode(event("x", 1, 2, "chat")),
                         envelope.Event("x", 1, 2, "chat"))
        self.assertEqual(envelope.decode(event("x")), envelope.Event("x"))
        for bad in ("", 5, ["chat"]):
            with self.assertRaises(envelope.InvalidEnvelope) as caught:
                envelope.decode(event("x", id=3, facility=bad))
            self.assertEqual(caught.exception.id, 3)
            self.assertIn("'facility' must be a non-empty string", str(caught.exception))

    def test_taggingAddsTheFacilityToEventsOnly(self) -> None:
        """An event envelope is tagged with the facility (and a tag already in it does not
        survive); a raw payload is not an event and is left alone."""
        tagged = envelope.tag_event(envelope.encode_event("m", {"a": 1}).encode(), "chat")
        assert tagged is not None
        self.assertEqual(json.loads(tagged), {"ws4tx": "event", "event": "m",
                                              "data": {"a": 1}, "facility": "chat"})
        self.assertIsNone(envelope.tag_event(b"hello", "chat"))
        self.assertIsNone(envelope.tag_event(b'{"ws4tx":"event",', "chat"))

    def test_aFacilityOnAChannelIsForged(self) -> None:
        """Only the server names an event's facility: one met on a channel is forged
        (a publisher on one facility cannot pass its event off as another's)."""
        self.assertEqual(envelope.server_voice(event("x", facility="chat").encode()),
                         "an event naming its facility")
        self.assertIsNone(envelope.server_voice(event("x").encode()))


class SubscriptionEventTests(ServerTestCase):
    """A client on /ws/ with subscriptions to two facilities, each with its handler."""

    config = ServerTestCase.config.replace(presence=("chat",))

    async def startServer(self, wait: bool = True, **kwargs: Any) -> None:
        _Handler.called = []
        kwargs.setdefault("handlers", [Chat, Notes, Secret])
        await super().startServer(wait, **kwargs)

    async def frame(self, client: Any) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(await client.text())
        return decoded

    async def until(self, client: Any, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of ``kind`` with ``fields`` (presence events of its own join
        may come first)."""
        while True:
            frame = await self.frame(client)
            if frame["ws4tx"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame
            self.assertEqual(frame.get("event"), "ws4tx.presence", frame)

    async def subscribed(self) -> Any:
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "chat", broadcast=True))
        await self.until(client, "subscribed", id=1)
        client.send(subscribe(2, "notes", user=True))
        await self.until(client, "subscribed", id=2)
        return client

    async def test_eventsReachTheirFacilitysHandler(self) -> None:
        """Each event goes to the handler of the facility it names, which sees the
        subscription as its client (its facility, its user); the handler's emit to it
        names the facility, and the acknowledgement follows, as on a URL."""
        client = await self.subscribed()
        client.send(event("whoami", "a", id=10, facility="chat"))
        self.assertEqual(await self.until(client, "event", event="hello"), {
            "ws4tx": "event", "event": "hello", "data": {"from": "chat"}, "facility": "chat"})
        self.assertEqual(await self.until(client, "ack"), {
            "ws4tx": "ack", "id": 10, "data": {"handler": "chat", "client": "chat",
                                              "user": "john", "data": "a"}})
        client.send(event("whoami", "b", id=11, facility="notes"))
        self.assertEqual(await self.until(client, "event", event="hello"), {
            "ws4tx": "event", "event": "hello", "data": {"from": "notes"},
            "facility": "notes"})
        self.assertEqual((await self.until(client, "ack"))["data"]["handler"], "notes")
        self.assertEqual(_Handler.called, ["chat", "notes"])

    async def test_anEventForAFacilityNotSubscribedIsRefused(self) -> None:
        """A facility the connection holds no subscription to is refused, its handler
        never called: with an error ack, or a ws4tx.error without an id; an unknown event
        of a subscribed facility is refused too, and nothing is published."""
        client = await self.subscribed()
        client.send(event("whoami", id=5, facility="secret"))
        self.assertEqual(await self.until(client, "ack"), {
            "ws4tx": "ack", "id": 5,
            "error": "not subscribed to 'secret': an event for a facility needs a "
                     "subscription to it"})
        client.send(event("whoami", facility="secret"))
        error = await self.until(client, "event", event="ws4tx.error")
        self.assertIn("not subscribed to 'secret'", error["data"]["message"])
        self.assertNotIn("facility", error)
        client.send(event("nothing", id=6, facility="chat"))
        self.assertEqual(await self.until(client, "ack"), {
            "ws4tx": "ack", "id": 6, "error": "no handler for event 'nothing' of 'chat'"})
        client.send(event("ws4tx.anything", id=7, facility="chat"))
        self.assertIn("are the server's", (await self.until(client, "ack"))["error"])
        self.assertEqual(_Handler.called, [])

    async def test_bareURLWithoutSubscriptionReachesNoHandler(self) -> None:
        """On /ws/ without any subscription, naming a facility with a handler is
        refused: a subscription (authorized as a URL would be) is the only way in."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(event("whoami", id=1, facility="chat"))
        self.assertIn("not subscribed to 'chat'", (await self.until(client, "ack"))["error"])
        self.assertEqual(_Handler.called, [])

    async def test_theFacilitysEventsNameItForASubscriptionOnly(self) -> None:
        """A handler's emit to its facility's broadcast reaches a subscription with the
        facility named, and a client of the facility's URL exactly as before."""
        sub = await self.subscribed()
        url = await self.client("/ws/chat?subscribe-broadcast", JOHN, protocols=EVENTS)
        sub.send(event("shout", "hi", id=3, facility="chat"))
        seen = []
        while len(seen) < 2:  # the ack and the broadcast, in either order
            frame = await self.frame(sub)
            if frame.get("event") != "ws4tx.presence":
                seen.append(frame)
        self.assertIn({"ws4tx": "ack", "id": 3, "data": "sent"}, seen)
        self.assertIn({"ws4tx": "event", "event": "shouted", "data": "hi",
                       "facility": "chat"}, seen)
        self.assertEqual(await self.until(url, "event", event="shouted"), {
            "ws4tx": "event", "event": "shouted", "data": "hi"})

    async def test_rawMessagesNameTheirChannel(self) -> None:
        """A raw message of a channel without history reaches a subscription in a
        publication envelope that names its channel and has no position (text as
        ``data``, binary as ``data64``), and so does the channel's stored message when it
        subscribes (a frame that names nothing could be any facility's); a client of the
        facility's URL gets both as they were published."""
        self.redis.set(CHAT, b"stored before")
        sub = await self.client("/ws/", JOHN, protocols=EVENTS)
        sub.send(subscribe(1, "chat", broadcast=True))
        await self.until(sub, "subscribed", id=1)
        self.assertEqual(await self.until(sub, "pub"), {
            "ws4tx": "pub", "channel": CHAT, "data": "stored before"})
        url = await self.client("/ws/chat?subscribe-broadcast", JOHN, protocols=EVENTS)
        self.assertEqual(self.publish(CHAT, "plain text"), 1)  # the node's one subscriber
        self.assertEqual(self.publish(CHAT, b"\xff\x00"), 1)
        self.assertEqual(await self.until(sub, "pub"), {
            "ws4tx": "pub", "channel": CHAT, "data": "plain text"})
        self.assertEqual(await self.until(sub, "pub"), {
            "ws4tx": "pub", "channel": CHAT, "data64": "/wA="})
        raw = []
        while len(raw) < 3:
            message = await url.next()
            if not message[0].startswith(b'{"ws4tx":"event"'):  # presence, in any order
                raw.append(message)
        self.assertEqual(raw, [(b"stored before", False), (b"plain text", False),
                               (b"\xff\x00", True)])

    async def test_presenceNamesItsFacilityForASubscription(self) -> None:
        """ws4tx.presence names its facility for a subscription; a URL client of the
        facility gets it as before."""
        sub = await self.subscribed()
        joined = await self.until(sub, "event", event="ws4tx.presence")
        self.assertEqual(joined["facility"], "chat")
        self.assertEqual([e["user"] for e in joined["data"]["joined"]], ["john"])
        url = await self.client("/ws/chat?subscribe-broadcast", JOHN, protocols=EVENTS)
        seen = await self.until(url, "event", event="ws4tx.presence")
        self.assertNotIn("facility", seen)
        other = await self.until(sub, "event", event="ws4tx.presence")
        self.assertEqual(other["facility"], "chat")

    async def test_aPostNamingAnotherFacilityIsRefused(self) -> None:
        """A POST has no subscription: an event naming a facility other than its URL's
        is refused, its handler never called; naming its own is as without."""
        status, _, body = await post(self.port, "/ws/notes",
                                     event("whoami", id=1, facility="secret").encode(),
                                     JOHN)
        self.assertEqual((status, body[0]["id"]), (200, 1))
        self.assertIn("not subscribed to 'secret'", body[0]["error"])
        status, _, body = await post(self.port, "/ws/notes",
                                     event("whoami", 2, id=2, facility="notes").encode(),
                                     JOHN)
        self.assertEqual(body[-1]["data"]["handler"], "notes")
        self.assertEqual(_Handler.called, ["notes"])


class RateTests(ServerTestCase):
    """Events for a subscription count against the connection's rate limit."""

    config = ServerTestCase.config.replace(rate_limit=0.001, rate_burst=2)

    async def startServer(self, wait: bool = True, **kwargs: Any) -> None:
        _Handler.called = []
        kwargs.setdefault("handlers", [Chat])
        await super().startServer(wait, **kwargs)

    async def test_subscriptionEventsOverTheRateAreDropped(self) -> None:
        """Past the burst an event for a subscription is dropped, its handler not
        called, and the client told as for any message."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "chat", broadcast=True))
        self.assertEqual(json.loads(await client.text())["ws4tx"], "subscribed")
        client.send(event("whoami", id=2, facility="chat"))
        self.assertEqual(json.loads(await client.text())["event"], "hello")
        self.assertEqual(json.loads(await client.text())["id"], 2)
        client.send(event("whoami", id=3, facility="chat"))
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "event", "event": "ws4tx.error",
            "data": {"message": "rate limit exceeded: message dropped"}})
        self.assertEqual(_Handler.called, ["chat"])
