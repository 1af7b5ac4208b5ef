"""The event envelope on the server: handlers, acknowledgements, errors, and the
interruption events, through real WebSocket clients and a real Redis."""

from __future__ import annotations

import json
import signal


from ws4tx import envelope
from ws4tx.handlers import EventHandler, EventRefused

from test._server import ServerTestCase, identity_header

EVENTS = (envelope.SUBPROTOCOL,)
JOHN = identity_header("john", ("chatusers",), "s-john")


class Chat(EventHandler):
    """A handler like an application's: greets, echoes, broadcasts, fails on demand."""

    facility = "chat"
    closed: list = []

    def on_connect(self, client):
        client.emit("welcome", {"user": client.identity.user})

    def on_close(self, client):
        Chat.closed.append(client.identity.user)

    def on_echo(self, client, data):
        return data

    async def on_shout(self, client, data):
        await self.server.emit("shouted", {"by": client.identity.user, "text": data},
                               facility="chat", broadcast=True)
        return "sent"

    def on_slow(self, client, data):
        return self.server.run_in_thread(lambda: data * 2)

    def on_refuse(self, client, data):
        raise EventRefused("not allowed")

    def on_crash(self, client, data):
        raise RuntimeError("secret internals")


def event(name, data=None, id=None) -> str:
    return envelope.encode_event(name, data, id)


async def next_envelope(client):
    return json.loads(await client.text())


class EventTests(ServerTestCase):
    """Clients that speak ws4tx.v1."""

    async def _setUp(self) -> None:
        self.redis_server = self.startRedis()
        import redis

        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.addCleanup(self.redis.close)
        await self.startServer(handlers=[Chat])

    async def _client(self, flags="?subscribe-broadcast", headers=JOHN):
        client = await self.client("/ws/chat" + flags, headers, protocols=EVENTS)
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": "welcome", "data": {"user": "john"}})
        return client

    async def test_ackCarriesTheHandlersResult(self):
        """An event with an id is answered by an ack with the handler's return value."""
        client = await self._client()
        client.send(event("echo", {"a": [1, 2]}, id=7))
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "ack", "id": 7, "data": {"a": [1, 2]}})

    async def test_coroutineAndThreadHandlers(self):
        """Coroutine handlers and run_in_thread results answer acks too."""
        client = await self._client()
        client.send(event("slow", 21, id=1))
        self.assertEqual(await next_envelope(client), {"ws4tx": "ack", "id": 1, "data": 42})

    async def test_serverEmitReachesEveryListener(self):
        """A handler's emit to an audience goes through Redis to every client of it."""
        listener = await self._client()
        sender = await self._client()
        sender.send(event("shout", "hi", id=3))
        got = [await next_envelope(sender), await next_envelope(sender)]
        self.assertIn({"ws4tx": "ack", "id": 3, "data": "sent"}, got)
        self.assertIn({"ws4tx": "event", "event": "shouted",
                       "data": {"by": "john", "text": "hi"}}, got)
        self.assertEqual(await next_envelope(listener),
                         {"ws4tx": "event", "event": "shouted",
                          "data": {"by": "john", "text": "hi"}})

    async def test_refusedEventAnswersItsMessage(self):
        """EventRefused answers an error ack with its message."""
        client = await self._client()
        client.send(event("refuse", None, id=4))
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "ack", "id": 4, "error": "not allowed"})

    async def test_crashIsLoggedAndAnsweredWithoutDetails(self):
        """A handler exception is logged and answered 'internal error'; the client stays."""
        client = await self._client()
        client.send(event("crash", None, id=5))
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "ack", "id": 5, "error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        client.send(event("crash"))
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": envelope.ERROR_EVENT,
                          "data": {"message": "internal error"}})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        client.send(event("echo", "alive", id=6))
        self.assertEqual((await next_envelope(client))["data"], "alive")

    async def test_unknownEventAndReservedNamesAreRefused(self):
        """Events without a handler method, and on_connect/on_close, are refused."""
        client = await self._client()
        for i, name in enumerate(["nothing", "connect", "close", "x-y"]):
            client.send(event(name, None, id=i))
            reply = await next_envelope(client)
            self.assertEqual(reply["id"], i)
            self.assertIn("no handler", reply["error"])

    async def test_invalidEnvelopeAnswersAnError(self):
        """A frame that claims to be an envelope but is not valid gets a ws4tx.error."""
        client = await self._client()
        client.send('{"ws4tx":"event"}')
        reply = await next_envelope(client)
        self.assertEqual(reply["event"], envelope.ERROR_EVENT)
        self.assertIn("invalid envelope", reply["data"]["message"])

    async def test_onCloseIsCalled(self):
        """on_close runs when a client leaves."""
        Chat.closed = []
        client = await self._client()
        await client.close()
        await self.factory.whenDrained()
        self.assertEqual(Chat.closed, ["john"])

    async def test_eventWithoutHandlerIsPublishedWithPublishFlags(self):
        """On a facility without a handler, an event is published (without its id) to the
        publish channels and acknowledged."""
        listener = await self.client("/ws/other?subscribe-broadcast", protocols=EVENTS)
        sender = await self.client("/ws/other?publish-broadcast", protocols=EVENTS)
        sender.send(event("note", {"x": 1}, id=9))
        self.assertEqual(await next_envelope(sender), {"ws4tx": "ack", "id": 9, "data": None})
        self.assertEqual(await next_envelope(listener),
                         {"ws4tx": "event", "event": "note", "data": {"x": 1}})

    async def test_rawClientsNeverGetServerEvents(self):
        """A client without the subprotocol gets no welcome and no interruption events."""
        raw = await self.client("/ws/chat?subscribe-broadcast", JOHN)
        self.redis_server.stop(signal.SIGKILL)
        await self.brokerEvent("disconnected")
        self.redis_server.start()
        await self.brokerEvent("connected")
        self.publish("ws4tx:broadcast:chat", "plain")
        self.assertEqual(await raw.text(), "plain")

    async def test_interruptionAndResumptionAreAnnounced(self):
        """Event clients are told when delivery is interrupted and when it resumes, and
        an event published during the outage fails with an error ack."""
        client = await self._client("?subscribe-broadcast&publish-broadcast")
        self.redis_server.stop(signal.SIGKILL)
        await self.brokerEvent("disconnected")
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": envelope.INTERRUPTED_EVENT, "data": None})
        client.send(event("anything-goes", None, id=1))
        reply = await next_envelope(client)
        self.assertEqual(reply["id"], 1)
        self.assertIn("not connected", reply["error"])
        self.redis_server.start()
        await self.brokerEvent("connected")
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": envelope.RESUMED_EVENT, "data": None})
