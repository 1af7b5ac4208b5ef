"""The event envelope on the server: handlers, acknowledgements, errors, and the
interruption events, through real WebSocket clients and a real Redis."""

from __future__ import annotations

import json
import signal

from twisted.internet import reactor

from ws4tx import closecodes, envelope
from ws4tx.server.events import UNAVAILABLE
from ws4tx.server.handlers import EventHandler, EventRefused

from test._server import ServerTestCase, identity_header
from test._wsclient import TIMEOUT

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
        await self.factory.node.whenDrained()
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
        client = await self.client("/ws/other?subscribe-broadcast&publish-broadcast", JOHN,
                                   protocols=EVENTS)
        self.redis_server.stop(signal.SIGKILL)
        await self.brokerEvent("disconnected")
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": envelope.INTERRUPTED_EVENT, "data": None})
        client.send(event("anything-goes", None, id=1))
        reply = await next_envelope(client)
        self.assertEqual(reply["id"], 1)
        self.assertEqual(reply["error"], UNAVAILABLE)
        self.assertNotIn(str(self.redis_server.port), reply["error"])  # no address
        self.redis_server.start()
        await self.brokerEvent("connected")
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "event", "event": envelope.RESUMED_EVENT, "data": None})


class ServerVoiceTests(ServerTestCase):
    """Nobody but the server speaks with its voice to event clients: no forged
    acknowledgements, no ws4tx.* events, no raw payload read as an event."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.listener = await self.client("/ws/other?subscribe-broadcast", JOHN,
                                          protocols=EVENTS)

    async def _nextIsSentinel(self) -> None:
        """What the listener gets next is a sentinel published now: nothing came before."""
        self.publish("ws4tx:broadcast:other", "sentinel")
        self.assertEqual(await self.listener.text(), "sentinel")

    async def test_rawEnvelopesAreNeverPublished(self):
        """A raw client whose messages look like envelopes (an ack settling another user's
        request, a server event, a chat message in the event format; text or binary, with
        leading white space a browser skips) is closed with 1008; nothing is published
        or stored."""
        forgeries = [
            (envelope.encode_ack(1, {"delivered": True}).encode(), False),
            (event("ws4tx.interrupted").encode(), False),
            (event("message", {"user": "admin", "text": "hi"}).encode(), False),
            (b" \n" + event("message").encode(), False),
            ("\u00a0\ufeff".encode() + envelope.encode_ack(2).encode(), False),
            (envelope.encode_ack(3).encode(), True),
        ]
        for payload, binary in forgeries:
            raw = await self.client("/ws/other?publish-broadcast", JOHN)
            raw.send(payload, binary=binary)
            code, _ = await raw.closed.addTimeout(TIMEOUT, reactor)
            self.assertEqual(code, closecodes.POLICY_VIOLATION, payload)
        await self._nextIsSentinel()
        self.assertIsNone(self.redis.get("ws4tx:broadcast:other"))
        self.assertEqual(self.factory.node.counters()["raw_envelopes"], len(forgeries))

    async def test_clientsCannotEmitServerEvents(self):
        """An event client's ws4tx.* event is refused with an error ack, not forwarded."""
        sender = await self.client("/ws/other?publish-broadcast", JOHN, protocols=EVENTS)
        sender.send(event("ws4tx.dropped", {"messages": 5}, id=4))
        reply = await next_envelope(sender)
        self.assertEqual(reply["id"], 4)
        self.assertIn("server's", reply["error"])
        await self._nextIsSentinel()

    async def test_forgedEnvelopesFromRedisAreDropped(self):
        """Acknowledgements and ws4tx.* events that arrive through Redis (a site that
        publishes a user's text verbatim, say), even spelled in ways only a browser
        parses, are dropped and counted; the site's own events pass."""
        forgeries = [envelope.encode_ack(1, "x"), event("ws4tx.error", {"message": "x"}),
                     '{"ws4tx":"event","event":"chat","event":"ws4tx.resumed"}',
                     '{"ws4tx":"ack","id":1,"data":' + "[" * 5000 + "]" * 5000 + "}"]
        for forgery in forgeries:
            self.publish("ws4tx:broadcast:other", forgery)
        self.publish("ws4tx:broadcast:other", event("news", 1))
        self.assertEqual(await next_envelope(self.listener),
                         {"ws4tx": "event", "event": "news", "data": 1})
        self.assertEqual(self.factory.node.counters()["forged"], len(forgeries))

    async def test_forgedStoredMessageIsNotReplayed(self):
        """A forged envelope stored under a channel is not replayed to a new client."""
        self.redis.set("ws4tx:broadcast:stored", envelope.encode_ack(7, "x"))
        client = await self.client("/ws/stored?subscribe-broadcast", JOHN, protocols=EVENTS)
        self.publish("ws4tx:broadcast:stored", "sentinel")
        self.assertEqual(await client.text(), "sentinel")

    async def test_handlerFacilityDropsPublishFlags(self):
        """On a facility a server handler speaks for, clients' publish flags are dropped
        (a raw client cannot post past the handler), unless the site allows them."""
        await self.service.stopService()
        await self.startServer(handlers=[Chat])
        listener = await self.client("/ws/chat?subscribe-broadcast", JOHN)
        raw = await self.client("/ws/chat?publish-broadcast", JOHN)
        raw.send("from admin")
        self.publish("ws4tx:broadcast:chat", "sentinel")
        self.assertEqual(await listener.text(), "sentinel")

        await self.service.stopService()
        await self.startServer(handlers=[Chat], config={"handler_facility_publish": True})
        listener = await self.client("/ws/chat?subscribe-broadcast", JOHN)
        raw = await self.client("/ws/chat?publish-broadcast", JOHN)
        raw.send("allowed")
        self.assertEqual(await listener.text(), "allowed")

    def test_handlersCannotEmitServerEvents(self):
        """A handler's server.emit refuses the server's own event names."""
        with self.assertRaises(ValueError):
            self.service.server.emit("ws4tx.resumed", facility="other", broadcast=True)


class BadJSONTests(ServerTestCase):
    """Event data JSON cannot carry to a browser gets a clean error, and the connection,
    the server and the log stay clean."""

    async def _setUp(self) -> None:
        await super()._setUp()
        await self.service.stopService()
        await self.startServer(handlers=[Chat])

    async def test_loneSurrogateAndNonFiniteNumbers(self):
        """A lone surrogate, NaN or Infinity in an event is answered with ws4tx.error;
        the client stays connected."""
        sender = await self.client("/ws/other?publish-broadcast", JOHN, protocols=EVENTS)
        for bad in ('{"ws4tx":"event","event":"note","data":"\\ud800"}',
                    '{"ws4tx":"event","event":"note","data":NaN}',
                    '{"ws4tx":"event","event":"note","data":[-Infinity]}'):
            sender.send(bad)
            reply = await next_envelope(sender)
            self.assertEqual(reply["event"], envelope.ERROR_EVENT, bad)
            self.assertIn("invalid envelope", reply["data"]["message"])
        sender.send(event("note", "\U0001f600", id=2))  # a surrogate pair is fine
        self.assertEqual(await next_envelope(sender), {"ws4tx": "ack", "id": 2, "data": None})
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_numbersPastADoubleAreRefusedWithAnAck(self):
        """1e999, -1e999, 2e400 (and a whole number of 400 digits), which Python reads as
        infinity and a browser as Infinity, in an event a client publishes: an error ack
        naming the number, the sender stays connected, nothing is published and nothing
        is logged; its next event goes through."""
        listener = await self.client("/ws/other?subscribe-broadcast", JOHN, protocols=EVENTS)
        sender = await self.client("/ws/other?publish-broadcast", JOHN, protocols=EVENTS)
        for ack_id, bad in enumerate(("1e999", "-1e999", "[2e400]", "1" * 400), start=1):
            sender.send(f'{{"ws4tx":"event","event":"note","data":{bad},"id":{ack_id}}}')
            reply = await next_envelope(sender)
            self.assertEqual(reply["id"], ack_id, bad)
            self.assertIn("invalid envelope", reply["error"])
            self.assertIn("must be finite", reply["error"])
        sender.send('{"ws4tx":"event","event":"note","data":1e400}')  # no id: ws4tx.error
        self.assertEqual((await next_envelope(sender))["event"], envelope.ERROR_EVENT)
        sender.send(event("note", 1.5e308, id=9))
        self.assertEqual(await next_envelope(sender), {"ws4tx": "ack", "id": 9, "data": None})
        self.assertEqual(await next_envelope(listener),
                         {"ws4tx": "event", "event": "note", "data": 1.5e308})
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_handlerResultJSONCannotCarry(self):
        """A handler that answers NaN gets its client an 'internal error' ack (logged)."""
        client = await self.client("/ws/chat?subscribe-broadcast", JOHN, protocols=EVENTS)
        await next_envelope(client)  # welcome
        client.send(event("echo", 1.5, id=1))
        self.assertEqual(await next_envelope(client), {"ws4tx": "ack", "id": 1, "data": 1.5})
        Chat.on_nan = lambda self, client, data: float("nan")
        self.addCleanup(delattr, Chat, "on_nan")
        client.send(event("nan", None, id=2))
        self.assertEqual(await next_envelope(client),
                         {"ws4tx": "ack", "id": 2, "error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
