"""Live control: the site's commands on the control channel reach every node, which closes
exactly the matching connections; Django's logout, password changes and deactivations send
them. Two nodes on one real Redis, real WebSocket clients, real Django sessions."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from twisted.internet import reactor, threads
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from test._django import setup_django

setup_django()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402

from ws4tx import _sync_redis, api, closecodes, control, envelope, naming, tokens  # noqa: E402
from ws4tx.testing import StaticAuthenticator  # noqa: E402

from test._control_contract import ControlAcrossNodesContract  # noqa: E402
from test._server import (  # noqa: E402
    ServerTestCase,
    identity_from_header,
    identity_header,
    start_node,
)
from test._wsclient import TIMEOUT, WSClient, connect  # noqa: E402
from test.test_django_auth import DjangoServerTestCase, request_with_session  # noqa: E402

CONTROL = naming.control_channel("ws4tx")
EVENTS = (envelope.SUBPROTOCOL,)


def sid(key: str) -> str:
    """The session channel id of the session key ``key``, as the site names it."""
    return naming.session_channel_id(settings.SECRET_KEY, key)


class ControlCommandTests(unittest.SynchronousTestCase):
    """The command format (pure)."""

    def test_roundTrip(self):
        command = control.disconnect(users=["john"], sessions=["a" * 32], facility="chat",
                                     code=4001, reason="logged out é")
        self.assertEqual(control.decode(control.encode(command)), command)

    def test_matching(self):
        command = control.disconnect(users=["john"], sessions=["s1"], facility="chat")
        self.assertTrue(command.matches(naming.Identity(user="john"), "chat"))
        self.assertTrue(command.matches(naming.Identity(session="s1"), "chat"))
        self.assertFalse(command.matches(naming.Identity(user="john"), "other"))
        self.assertFalse(command.matches(naming.Identity(user="mary", session="s2"), "chat"))
        self.assertFalse(command.matches(naming.ANONYMOUS, "chat"))

    def test_badArgumentsAreRefusedWithAReason(self):
        for kwargs, words in (({}, "whom"), ({"users": ["x"], "code": 1005}, "1005"),
                              ({"users": ["x"], "code": 2000}, "2000"),
                              ({"users": ["x"], "reason": "é" * 61}, "120"),
                              ({"users": [""]}, "non-empty")):
            with self.assertRaises(ValueError) as caught:
                control.disconnect(**kwargs)
            self.assertIn(words, str(caught.exception), kwargs)

    def test_unsubscribeRoundTrip(self):
        for command in (control.unsubscribe(users=["john"]),
                        control.unsubscribe(sessions=["s1"], facility="chat",
                                            audiences="group", groups=["staff", "x"],
                                            reason="bye é")):
            self.assertEqual(control.decode(control.encode(command)), command)

    def test_unsubscribeChannelsAreTheConnectionsOwn(self):
        """The channels to leave are the connection's own, of the audiences named, and of
        the group audience only the groups named (a group it is not in gives nothing)."""
        john = naming.Identity(user="john", groups=frozenset({"staff", "dev"}), session="s1")
        command = control.unsubscribe(users=["john"], audiences=["group", "broadcast"],
                                      groups=["staff", "board"])
        self.assertEqual(command.channels("ws4tx", john, "chat"),
                         ["ws4tx:broadcast:chat", "ws4tx:group:staff:chat"])
        self.assertEqual(control.unsubscribe(users=["john"]).channels("p", john, "c"),
                         ["p:broadcast:c", "p:user:john:c", "p:group:dev:c",
                          "p:group:staff:c", "p:session:s1:c"])

    def test_unsubscribeBadArguments(self):
        for kwargs, words in (({}, "whom"), ({"users": ["x"], "audiences": ["room"]}, "room"),
                              ({"users": ["x"], "audiences": []}, "none"),
                              ({"users": ["x"], "groups": [""]}, "non-empty"),
                              ({"users": ["x"], "reason": "é" * 61}, "120")):
            with self.assertRaises(ValueError) as caught:
                control.unsubscribe(**kwargs)
            self.assertIn(words, str(caught.exception), kwargs)

    def test_subscribeRoundTripAndMatching(self):
        """A subscribe names a facility and whom by user, session or group; its channels
        are the connection's own, of the group audience only the groups named."""
        command = control.subscribe("notes", users=["john"], sessions=["s9"],
                                    groups=["staff", "board"], audiences=["group", "user"],
                                    reason="é")
        self.assertEqual(control.decode(control.encode(command)), command)
        self.assertEqual(control.decode(control.encode(control.subscribe(
            "notes", users=["john"]))).audiences, frozenset(naming.AUDIENCES))
        john = naming.Identity(user="john", groups=frozenset({"staff", "dev"}), session="s1")
        self.assertEqual(command.channels("ws4tx", john),
                         ["ws4tx:user:john:notes", "ws4tx:group:staff:notes"])
        by_group = control.subscribe("notes", groups=["dev"])
        self.assertTrue(by_group.matches(john))
        self.assertFalse(by_group.matches(naming.Identity(user="mary",
                                                          groups=frozenset({"staff"}))))
        self.assertTrue(command.matches(naming.Identity(session="s9")))
        self.assertFalse(command.matches(naming.ANONYMOUS))

    def test_subscribeBadArguments(self):
        for args, kwargs, words in (
                (("notes",), {}, "whom"),
                (("bad facility",), {"users": ["x"]}, "facility may contain only"),
                (("",), {"users": ["x"]}, "facility is missing"),
                (("notes",), {"users": ["x"], "audiences": ["room"]}, "room"),
                (("notes",), {"groups": [""]}, "non-empty"),
                (("notes",), {"users": ["x"], "reason": "é" * 61}, "120")):
            with self.assertRaises(ValueError) as caught:
                control.subscribe(*args, **kwargs)
            self.assertIn(words, str(caught.exception), kwargs)

    def test_malformedMessagesAreInvalidCommands(self):
        for payload in MALFORMED:
            self.assertRaises(control.InvalidCommand, control.decode, payload)


MALFORMED = [
    b"not json", b"\xff\xfe", b"[]", b"null", b'{"v":2,"op":"disconnect","users":["john"]}',
    b'{"v":1,"op":"reboot"}', b'{"v":1,"op":"disconnect"}',
    b'{"v":1,"op":"disconnect","users":["john"],"code":1005}',
    b'{"v":1,"op":"disconnect","users":["john"],"code":"4001"}',
    b'{"v":1,"op":"disconnect","users":[1]}', b'{"v":1,"op":"disconnect","users":{"a":1}}',
    b'{"v":1,"op":"disconnect","users":["john"],"reason":"' + b"x" * 200 + b'"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"v":1,"op":"unsubscribe","users":["john"],"audiences":["room"]}',
    b'{"v":1,"op":"subscribe","users":["john"]}',
    b'{"v":1,"op":"subscribe","users":["john"],"facility":"no spaces"}',
    b'{"v":1,"op":"subscribe","facility":"notes"}',
    b'{"v":1,"op":"unsubscribe","users":["john"],"audiences":"group"}',
    b'{"v":1,"op":"unsubscribe","users":["john"],"groups":"staff"}',
    b'{"v":1,"op":"unsubscribe","audiences":["group"]}',
]


class TwoNodesTestCase(ServerTestCase):
    """Two ws4tx nodes (two PushService) on one Redis; the Django side publishes to it."""

    async def _setUp(self) -> None:
        await super()._setUp()
        _sync_redis.use_url(self.redis_server.url)
        self.addCleanup(_sync_redis.reset)
        self.nodes = [self._current(), await self.otherNode()]

    def _current(self) -> SimpleNamespace:
        return SimpleNamespace(service=self.service, factory=self.factory, port=self.port,
                               events=self.broker_events)

    async def otherNode(self) -> SimpleNamespace:
        """A second node on the same Redis, its subscriber connected."""
        config = self.config.replace(redis=self.redis_server.address)
        return await start_node(self, config, self.authenticator())

    def authenticator(self) -> Any:
        return StaticAuthenticator(identity_from_header)

    async def on(self, node: SimpleNamespace, path: str,
                 headers: Optional[dict[str, str]] = None,
                 protocols: tuple[str, ...] = ()) -> WSClient:
        """A client of ``node`` whose subscriptions are in place."""
        client = await connect(node.port, path, headers=headers, protocols=protocols)
        self.addCleanup(client.close)
        await node.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return client

    async def closedWithin(self, started: float, *clients: WSClient,
                           code: int = closecodes.CLOSED_BY_SITE,
                           reason: str = control.DEFAULT_REASON) -> float:
        """Wait (bounded) for each client's close, check its code and reason; return the
        seconds from ``started`` (reactor clock) to the last close."""
        for client in clients:
            self.assertEqual(await client.closed.addTimeout(TIMEOUT, reactor),
                             (code, reason))
        return reactor.seconds() - started

    async def stillOpen(self, *clients: WSClient, facility: str = "foobar") -> None:
        """Each client is open: it gets a broadcast published after the command (Redis
        delivers in order, so a close would have come first)."""
        self.publish(f"ws4tx:broadcast:{facility}", "sentinel")
        for client in clients:
            self.assertEqual(await client.text(), "sentinel")
            self.assertFalse(client.closed.called)


class ControlAcrossTwoNodesTests(ControlAcrossNodesContract, TwoNodesTestCase):
    """The queries and commands across two nodes as on every topology (test_sentinel,
    test_sharding, test_cluster), here on one Redis."""


class DisconnectAcrossNodesTests(TwoNodesTestCase):
    """``ws4tx.api.disconnect`` and ``ServerAPI.disconnect`` close exactly the matching
    connections on every node, within a second."""

    PATH = "/ws/foobar?subscribe-broadcast"

    async def clients(self) -> dict[str, WSClient]:
        a, b = self.nodes
        who = {
            "john-s1@a": (a, identity_header("john", session=sid("key-1"))),
            "john-s2@b": (b, identity_header("john", session=sid("key-2"))),
            "mary-s3@a": (a, identity_header("mary", session=sid("key-3"))),
            "mary-s3@b": (b, identity_header("mary", session=sid("key-3"))),
            "anon@a": (a, identity_header(session=sid("key-4"))),
            "anon@b": (b, {}),
        }
        return {name: await self.on(node, self.PATH, headers)
                for name, (node, headers) in who.items()}

    async def test_byUserOnEveryNode(self):
        c = await self.clients()
        started = reactor.seconds()
        self.assertEqual(api.disconnect(users=["john"], reason="bye"), 2)
        took = await self.closedWithin(started, c.pop("john-s1@a"), c.pop("john-s2@b"),
                                       reason="bye")
        self.assertLess(took, 1.0)
        await self.stillOpen(*c.values())
        self.assertEqual([n.factory.node.counters()["closed_by_site"] for n in self.nodes],
                         [1, 1])

    async def test_bySessionKeyOnEveryNode(self):
        """Sessions are given as Django session keys: the session's connections on both
        nodes close, the same user's other session stays."""
        c = await self.clients()
        started = reactor.seconds()
        api.disconnect(sessions=["key-3", "key-4"])
        took = await self.closedWithin(started, c.pop("mary-s3@a"), c.pop("mary-s3@b"),
                                       c.pop("anon@a"))
        self.assertLess(took, 1.0)
        await self.stillOpen(*c.values())

    async def test_onlyTheFacilityAndTheCodeGiven(self):
        _, b = self.nodes
        chat = await self.on(b, "/ws/chat?subscribe-broadcast",
                             identity_header("john", session=sid("key-1")))
        c = await self.clients()
        api.disconnect(users=["john"], facility="chat", code=4321, reason="chat closed")
        await self.closedWithin(reactor.seconds(), chat, code=4321, reason="chat closed")
        await self.stillOpen(*c.values())

    async def test_handlersHaveTheSameThroughServerAPI(self):
        c = await self.clients()
        started = reactor.seconds()
        receivers = await self.nodes[1].service.server.disconnect(
            users=["mary"], sessions=[sid("key-1")], reason="from a handler")
        self.assertEqual(receivers, 2)
        took = await self.closedWithin(started, c.pop("john-s1@a"), c.pop("mary-s3@a"),
                                       c.pop("mary-s3@b"), reason="from a handler")
        self.assertLess(took, 1.0)
        await self.stillOpen(*c.values())

    async def test_badArgumentsRaiseBeforeAnythingIsSent(self):
        for kwargs in ({}, {"users": ["john"], "code": 1005},
                       {"users": ["john"], "reason": "x" * 121}):
            self.assertRaises(ValueError, api.disconnect, **kwargs)
            self.assertRaises(ValueError, self.service.server.disconnect, **kwargs)

    async def test_malformedCommandsAreLoggedAndIgnored(self):
        """Garbage on the control channel never harms a node: each message is counted,
        logged and ignored, and the next good command still works."""
        logged: list[dict] = []
        observer = logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        c = await self.clients()
        for payload in MALFORMED:
            self.assertEqual(self.publish(CONTROL, payload), 2)
        await self.stillOpen(*c.values())
        for node in self.nodes:
            self.assertEqual(node.factory.node.counters()["control_invalid"], len(MALFORMED))
        ignored = [e for e in logged if e.get("log_format", "").startswith("ignored a message")]
        self.assertEqual(len(ignored), 2 * len(MALFORMED))
        api.disconnect(users=["john"])
        await self.closedWithin(reactor.seconds(), c.pop("john-s1@a"), c.pop("john-s2@b"))

    async def test_controlChannelIsResubscribedAfterRedisDropsTheNodes(self):
        c = await self.clients()
        self.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        for node in self.nodes:
            for expected in ("disconnected", "connected"):
                self.assertEqual(await node.events.get().addTimeout(TIMEOUT, reactor),
                                 expected)
        self.assertEqual(api.disconnect(users=["john"]), 2)
        await self.closedWithin(reactor.seconds(), c.pop("john-s1@a"), c.pop("john-s2@b"))
        await self.stillOpen(*c.values())


class UnsubscribeAcrossNodesTests(TwoNodesTestCase):
    """``ws4tx.api.unsubscribe`` and ``ServerAPI.unsubscribe``: the matching connections
    on every node leave the channels named and stay open; event clients are told."""

    PATH = "/ws/foobar?subscribe-broadcast&subscribe-user&subscribe-group"
    STAFF = "ws4tx:group:staff:foobar"

    async def clients(self) -> dict[str, WSClient]:
        a, b = self.nodes
        john = identity_header("john", ("staff", "dev"), sid("key-1"))
        return {
            "john-events@a": await self.on(a, self.PATH, john, EVENTS),
            "john-raw@b": await self.on(b, self.PATH, john),
            "mary@b": await self.on(b, self.PATH, identity_header("mary", ("staff",))),
        }

    async def nextEvent(self, client: WSClient) -> Any:
        return envelope.decode(await client.text())

    async def test_groupLeftOnEveryNodeTheRestStays(self):
        c = await self.clients()
        receivers = api.unsubscribe(users=["john"], audiences=["group"], groups=["staff"],
                                    reason="no longer staff")
        self.assertEqual(receivers, 2)
        told = await self.nextEvent(c["john-events@a"])
        self.assertEqual((told.event, told.data),
                         (envelope.UNSUBSCRIBED_EVENT,
                          {"audiences": ["group"], "groups": ["staff"],
                           "reason": "no longer staff"}))
        # Redis delivers in order: what a client still has comes after the staff message.
        self.publish(self.STAFF, "to staff")
        self.publish("ws4tx:group:dev:foobar", "to dev")
        self.publish("ws4tx:user:john:foobar", "to john")
        for name in ("john-events@a", "john-raw@b"):
            self.assertEqual([await c[name].text() for _ in range(2)], ["to dev", "to john"])
        self.assertEqual(await c["mary@b"].text(), "to staff")
        await self.stillOpen(*c.values())
        a, b = (n.factory.node for n in self.nodes)
        # Node a had john alone in the staff channel: it no longer listens to it.
        self.assertNotIn(self.STAFF, a.router.hub.channels())
        self.assertEqual(len(b.router.hub.members(self.STAFF)), 1)
        self.assertEqual([a.counters()["unsubscribed_by_site"],
                          b.counters()["unsubscribed_by_site"]], [1, 1])

    async def test_handlersUnsubscribeBySessionFromBroadcast(self):
        c = await self.clients()
        receivers = await self.nodes[1].service.server.unsubscribe(
            sessions=[sid("key-1")], audiences=["broadcast"], facility="foobar")
        self.assertEqual(receivers, 2)
        told = await self.nextEvent(c["john-events@a"])
        self.assertEqual(told.data, {"audiences": ["broadcast"], "reason": ""})
        self.publish("ws4tx:broadcast:foobar", "everybody")
        self.publish("ws4tx:user:john:foobar", "to john")
        self.assertEqual(await c["john-raw@b"].text(), "to john")
        self.assertEqual(await c["john-events@a"].text(), "to john")
        self.assertEqual(await c["mary@b"].text(), "everybody")
        for client in c.values():
            self.assertFalse(client.closed.called)

    async def test_anotherFacilityIsLeftAlone(self):
        c = await self.clients()
        api.unsubscribe(users=["john"], facility="chat")
        await self.stillOpen(*c.values())
        self.assertEqual([n.factory.node.counters()["unsubscribed_by_site"]
                          for n in self.nodes], [0, 0])

    async def test_theSendersPublishChannelIsLeftToo(self):
        """A connection that published to a group it left publishes there no more."""
        a, _ = self.nodes
        john = await self.on(a, "/ws/foobar?subscribe-broadcast&publish-group",
                             identity_header("john", ("staff",)))
        api.unsubscribe(users=["john"], audiences=["group"])
        await self.stillOpen(john)
        (proto,) = a.factory.node.router.hub.clients()
        self.assertEqual(proto._publish_to, ())

    async def test_badArgumentsRaiseBeforeAnythingIsSent(self):
        for kwargs in ({}, {"users": ["john"], "audiences": ["everyone"]},
                       {"users": ["john"], "reason": "x" * 121}):
            self.assertRaises(ValueError, api.unsubscribe, **kwargs)
            self.assertRaises(ValueError, self.service.server.unsubscribe, **kwargs)


class SubscribeAcrossNodesTests(TwoNodesTestCase):
    """``ws4tx.api.subscribe`` and ``ServerAPI.subscribe``: the matching event
    connections on every node subscribe the channels named, and are told; raw clients
    and others are left alone."""

    async def clients(self) -> dict[str, WSClient]:
        a, b = self.nodes
        john = identity_header("john", ("staff", "dev"), sid("key-1"))
        return {
            "john-bare@a": await self.on(a, "/ws/", john, EVENTS),
            "john-events@b": await self.on(b, "/ws/foobar?subscribe-broadcast", john,
                                           EVENTS),
            "john-raw@b": await self.on(b, "/ws/foobar?subscribe-broadcast", john),
            "mary@b": await self.on(b, "/ws/foobar?subscribe-broadcast",
                                    identity_header("mary", ("staff",)), EVENTS),
        }

    async def message(self, client: WSClient) -> tuple[str, str]:
        """The channel and payload of a raw message as a subscription gets it (in a
        publication envelope without a position)."""
        frame = json.loads(await client.text())
        self.assertEqual(sorted(frame), ["channel", "data", "ws4tx"], frame)
        return frame["channel"], frame["data"]

    async def told(self, client: WSClient) -> Any:
        frame = envelope.decode(await client.text())
        assert isinstance(frame, envelope.Event)
        self.assertEqual(frame.event, envelope.SUBSCRIBED_EVENT)
        return frame.data

    async def test_aUsersEventConnectionsSubscribeOnEveryNode(self):
        """Named by user or by group: john (by name) and mary (in staff) subscribe, of
        the group audience only staff's channel; john's raw client is left alone."""
        c = await self.clients()
        receivers = await threads.deferToThread(
            api.subscribe, "notes", users=["john"], audiences=["user", "group"],
            groups=["staff"], reason="new thread")
        self.assertEqual(receivers, 2)
        for name, user in (("john-bare@a", "john"), ("john-events@b", "john"),
                           ("mary@b", "mary")):
            self.assertEqual(await self.told(c[name]), {
                "facility": "notes", "audiences": ["group", "user"], "reason": "new thread",
                "channels": [f"ws4tx:user:{user}:notes", "ws4tx:group:staff:notes"]})
        self.publish("ws4tx:group:dev:notes", "to dev")
        self.publish("ws4tx:group:staff:notes", "to staff")
        self.publish("ws4tx:user:john:notes", "to john")
        for name in ("john-bare@a", "john-events@b"):
            self.assertEqual([await self.message(c[name]) for _ in range(2)],
                             [("ws4tx:group:staff:notes", "to staff"),
                              ("ws4tx:user:john:notes", "to john")])
        self.assertEqual(await self.message(c["mary@b"]),
                         ("ws4tx:group:staff:notes", "to staff"))
        self.publish("ws4tx:broadcast:foobar", "sentinel")
        for name in ("john-raw@b", "mary@b", "john-events@b"):
            self.assertEqual(await c[name].text(), "sentinel", name)
        self.assertEqual([n.factory.node.counters()["subscribed_by_site"]
                          for n in self.nodes], [1, 2])

    async def test_handlersSubscribeByGroupOnceAndTheClientMayLeave(self):
        c = await self.clients()
        server = self.nodes[0].service.server
        self.assertEqual(await server.subscribe("notes", groups=["staff"],
                                                audiences=["group"]), 2)
        for name in ("john-bare@a", "john-events@b", "mary@b"):
            self.assertEqual((await self.told(c[name]))["channels"],
                             ["ws4tx:group:staff:notes"], name)
        self.assertEqual(await server.subscribe("notes", groups=["staff"],
                                                audiences=["group"]), 2)
        self.assertEqual(self.publish("ws4tx:group:staff:notes", "once"), 2)
        for name in ("john-bare@a", "john-events@b", "mary@b"):
            self.assertEqual(await self.message(c[name]), ("ws4tx:group:staff:notes", "once"),
                             name)
        self.assertEqual(sum(n.factory.node.counters()["subscribed_by_site"]
                             for n in self.nodes), 3)
        c["mary@b"].send('{"ws4tx":"unsubscribe","id":1,"facility":"notes",'
                         '"audiences":{"groups":["staff"]}}')
        self.assertEqual(await c["mary@b"].text(), envelope.encode_unsubscribed(
            1, "notes", ["ws4tx:group:staff:notes"]))
        self.publish("ws4tx:group:staff:notes", "twice")
        self.publish("ws4tx:broadcast:foobar", "sentinel")
        self.assertEqual(await c["mary@b"].text(), "sentinel")
        self.assertEqual(await self.message(c["john-events@b"]),
                         ("ws4tx:group:staff:notes", "twice"))

    async def test_badArgumentsRaiseBeforeAnythingIsSent(self):
        for args, kwargs in ((("notes",), {}), (("no spaces",), {"users": ["john"]}),
                             (("notes",), {"users": ["john"], "audiences": ["room"]})):
            self.assertRaises(ValueError, api.subscribe, *args, **kwargs)
            self.assertRaises(ValueError, self.service.server.subscribe, *args, **kwargs)


class IdentityChangesTests(DjangoServerTestCase):
    """Logout, password change and deactivation close the connections concerned on every
    node (here: the test's node), cookie and token connections alike."""

    PATH = "/ws/foobar?subscribe-broadcast"

    async def _setUp(self) -> None:
        User.objects.filter(username__in=["john", "mary"]).update(is_active=True)
        await super()._setUp()
        _sync_redis.use_url(self.redis_server.url)
        self.addCleanup(_sync_redis.reset)

    async def sockets(self, name: str) -> tuple[Any, str, WSClient, WSClient]:
        """A logged-in browser of ``name``, its session key, and two sockets of that
        session: one by cookie, one by token."""
        browser, key = self.login(name)
        by_cookie = await self.client(self.PATH, self.cookie(key))
        token = tokens.token_for_request(request_with_session(key))
        by_token = await self.client(self.PATH + "&token=" + token)
        return browser, key, by_cookie, by_token

    async def closedWithin(self, started: float, reason: str, *clients: WSClient) -> None:
        for client in clients:
            self.assertEqual(await client.closed.addTimeout(TIMEOUT, reactor),
                             (closecodes.CLOSED_BY_SITE, reason))
        self.assertLess(reactor.seconds() - started, 1.0)

    async def stillOpen(self, *clients: WSClient) -> None:
        self.publish("ws4tx:broadcast:foobar", "sentinel")
        for client in clients:
            self.assertEqual(await client.text(), "sentinel")

    async def test_logoutClosesThatSessionsSockets(self):
        browser, _, cookie, token = await self.sockets("john")
        _, _, other_cookie, other_token = await self.sockets("john")
        _, _, mary, _ = await self.sockets("mary")
        started = reactor.seconds()
        browser.logout()
        await self.closedWithin(started, "logged out", cookie, token)
        await self.stillOpen(other_cookie, other_token, mary)

    async def test_reconnectAfterLogoutIsAnonymous(self):
        browser, key, cookie, _ = await self.sockets("john")
        browser.logout()
        await cookie.closed
        again = await self.client("/ws/foobar?subscribe-broadcast&subscribe-user",
                                  self.cookie(key))
        self.publish("ws4tx:user:john:foobar", "for john")
        await self.stillOpen(again)  # got the sentinel, not john's message

    async def test_theLogoutClosesOnceTheSessionIsGone(self):
        """Django sends user_logged_out before it flushes the session: the close is sent
        after the flush, so that a page reloaded (or a socket reopened) the moment its
        socket closes is anonymous, never the user who just logged out."""
        from importlib import import_module

        store = import_module(settings.SESSION_ENGINE).SessionStore
        browser, key, cookie, _ = await self.sockets("john")
        session_alive: list[bool] = []
        disconnect = api.disconnect

        def watched(**audience: Any) -> Any:
            session_alive.append(store().exists(key))
            return disconnect(**audience)

        self.patch(api, "disconnect", watched)
        browser.logout()
        self.assertEqual(await cookie.closed.addTimeout(TIMEOUT, reactor),
                         (closecodes.CLOSED_BY_SITE, "logged out"))
        self.assertEqual(session_alive, [False])

    async def test_passwordChangeClosesEveryUserSocket(self):
        _, _, cookie, token = await self.sockets("john")
        _, _, cookie2, token2 = await self.sockets("john")
        _, _, mary, _ = await self.sockets("mary")
        user = User.objects.get(username="john")
        user.set_password("changed")
        started = reactor.seconds()
        user.save()
        await self.closedWithin(started, "password changed", cookie, token, cookie2, token2)
        await self.stillOpen(mary)

    async def test_deactivationClosesEveryUserSocket(self):
        _, _, cookie, token = await self.sockets("mary")
        _, _, john, _ = await self.sockets("john")
        user = User.objects.get(username="mary")
        user.is_active = False
        started = reactor.seconds()
        user.save()
        await self.closedWithin(started, "account deactivated", cookie, token)
        await self.stillOpen(john)

    async def test_deletedSessionClosesItsSockets(self):
        """A site that kicks a session by deleting it (the database session backend)
        closes that session's sockets, cookie and token ones, and only those."""
        from django.contrib.sessions.models import Session

        _, key, cookie, token = await self.sockets("john")
        _, _, other, _ = await self.sockets("john")
        started = reactor.seconds()
        Session.objects.filter(session_key=key).delete()
        await self.closedWithin(started, "session ended", cookie, token)
        await self.stillOpen(other)

    async def test_deletedUserClosesEverySocket(self):
        User.objects.filter(username="zoe").delete()
        User.objects.create_user("zoe", password="secret")
        _, _, cookie, token = await self.sockets("zoe")
        _, _, john, _ = await self.sockets("john")
        started = reactor.seconds()
        User.objects.get(username="zoe").delete()
        await self.closedWithin(started, "account deleted", cookie, token)
        await self.stillOpen(john)

    async def test_otherSavesCloseNothing(self):
        """Saving a user whose password and activity did not change (a login's
        last_login, a new name) closes nothing, nor does saving an inactive user again."""
        _, _, cookie, token = await self.sockets("john")
        user = User.objects.get(username="john")
        user.first_name = "John"
        user.save()
        User.objects.only("username").get(username="john").save(update_fields=["first_name"])
        self.login("john")
        await self.stillOpen(cookie, token)

    async def test_aNewHashAssignedDirectlyCounts(self):
        from django.contrib.auth.hashers import make_password

        _, _, cookie, _ = await self.sockets("john")
        user = User.objects.get(username="john")
        user.password = make_password("other")
        user.save(update_fields=["password"])
        await self.closedWithin(reactor.seconds(), "password changed", cookie)

    async def test_theSettingTurnsItOff(self):
        self.settings_override(WS4TX_DISCONNECT_ON_LOGOUT=False)
        browser, _, cookie, token = await self.sockets("john")
        _, _, mary, _ = await self.sockets("mary")
        browser.logout()
        user = User.objects.get(username="mary")
        user.set_password("changed")
        user.is_active = False
        user.save()
        await self.stillOpen(cookie, token, mary)

    async def test_aRedisThatIsDownNeverFailsTheLogout(self):
        browser, key, _, _ = await self.sockets("john")
        _sync_redis.use_url("redis://127.0.0.1:1/0")
        logged: list[Any] = []
        import logging

        handler = logging.Handler()
        handler.emit = logged.append  # type: ignore[method-assign]
        logging.getLogger("ws4tx").addHandler(handler)
        self.addCleanup(logging.getLogger("ws4tx").removeHandler, handler)
        browser.logout()  # no exception
        self.assertEqual(len(logged), 1)
        self.assertIn("logged out", logged[0].getMessage())
        self.assertNotIn(key, logged[0].getMessage())


class GatheringOnAClockTests(unittest.SynchronousTestCase):
    """``ServerAPI.channels`` and ``info`` on a task.Clock and the memory broker: the
    answers of every node that got the query end the wait; a node that got it and does
    not answer is waited for exactly ``timeout`` seconds; a registered node that did not
    get it is reported missing."""

    def setUp(self):
        from twisted.internet import task

        from ws4tx.server.config import ServerConfig
        from ws4tx.server.node import Node
        from ws4tx.testing import MemoryBroker, MemoryBus

        self.clock = task.Clock()
        self.bus = MemoryBus(self.clock)
        self.node = Node(ServerConfig(), MemoryBroker(self.bus), clock=self.clock)
        self.node.start()
        self.clock.advance(0)
        self.addCleanup(self.stop)
        self.ghost = MemoryBroker(self.bus)
        # A node that died: still in the registry, no longer subscribed to anything.
        self.ghost.start(SimpleNamespace(wantedChannels=lambda: [],
                                         brokerConnected=lambda: None,
                                         messageReceived=lambda channel, payload: None))
        self.ghost.updatePresence(naming.nodes_keys("ws4tx"), control.NODE_TTL,
                                  [("+", "ghost", None, '{"id":"ghost","since":0}')])

    def stop(self):
        self.node.stop()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def results(self, d):
        found = []
        d.addCallback(found.append)
        return found

    def test_everyNodeThatGotItAnsweredEndsTheWait(self):
        found = self.results(self.node.server.info(timeout=5))
        self.clock.advance(0)
        self.clock.advance(0)
        [result] = found
        self.assertEqual([n["id"] for n in result["nodes"]], [self.node.id])
        self.assertEqual(result["missing"], ["ghost"])
        self.assertEqual(result["nodes"][0]["versions"]["ws4tx"], "0.1.0")

    def test_aNodeThatGotItButIsSilentIsWaitedForTheTimeoutOnly(self):
        self.ghost.subscribe(naming.control_channel("ws4tx"))  # hung: hears, never answers
        found = self.results(self.node.server.channels("*", timeout=2.0))
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(1.999)
        self.assertEqual(found, [])
        self.clock.advance(0.001)
        self.assertEqual(found, [{"channels": {}, "nodes": [self.node.id],
                                  "missing": ["ghost"]}])
        # The reply channel is given up.
        self.assertEqual(set(self.node.router.wantedChannels()),
                         {naming.control_channel("ws4tx")})

    def test_aQueryNeverMakesANodeAnswerOnAClientChannel(self):
        self.bus.publish(naming.control_channel("ws4tx"), control.encode(
            control.query(control.INFO, "ws4tx:broadcast:chat")))
        self.clock.advance(0)
        self.assertEqual(self.node.counters()["control_invalid"], 1)
        self.assertNotIn("ws4tx:broadcast:chat",
                         [channel for channel, _, _ in self.node.broker.published])


@pytest.mark.system
class GatheringAcrossNodesTests(TwoNodesTestCase):
    """``ws4tx.api.channels`` and ``info`` and their ServerAPI twins, over two nodes on
    one real Redis, and a third one (twistd) that hangs, then is killed."""

    PATH = "/ws/foobar?subscribe-broadcast&subscribe-user"

    def django(self, f, *args, **kwargs):
        """``ws4tx.api`` blocks: call it in a thread, so that the nodes of this process
        (in the reactor thread) can answer."""
        return threads.deferToThread(f, *args, **kwargs)

    async def _setUp(self) -> None:
        await super()._setUp()
        for node in self.nodes:
            if not node.factory.node._announced:
                await node.factory.node.whenRegistered().addTimeout(TIMEOUT, reactor)
        self.ids = sorted(n.factory.node.id for n in self.nodes)
        a, b = self.nodes
        self.c = [await self.on(a, self.PATH, identity_header("john")),
                  await self.on(b, self.PATH, identity_header("john")),
                  await self.on(b, self.PATH, identity_header("mary"))]

    async def test_channelsFromEveryNode(self):
        expected = {"ws4tx:broadcast:foobar": 3, "ws4tx:user:john:foobar": 2,
                    "ws4tx:user:mary:foobar": 1}
        result = await self.django(api.channels)
        self.assertEqual(result, {"channels": expected, "nodes": self.ids, "missing": []})
        self.assertEqual((await self.django(api.channels, "ws4tx:user:*"))["channels"],
                         {k: v for k, v in expected.items() if ":user:" in k})
        result = await self.nodes[1].service.server.channels("*:john:*")
        self.assertEqual(result["channels"], {"ws4tx:user:john:foobar": 2})

    async def test_infoFromEveryNode(self):
        for result in (await self.django(api.info), await self.nodes[0].service.server.info()):
            self.assertEqual(result["missing"], [])
            nodes = {n["id"]: n for n in result["nodes"]}
            self.assertEqual(sorted(nodes), self.ids)
            a, b = (nodes[n.factory.node.id] for n in self.nodes)
            self.assertEqual([a["clients"], b["clients"]], [1, 2])
            self.assertEqual([a["channels"], b["channels"]], [2, 3])
            self.assertEqual(a["versions"]["ws4tx"], "0.1.0")
            self.assertGreaterEqual(a["uptime"], 0)
            self.assertEqual(a["redis"], "delivering")

    async def test_aHungThenKilledNodeIsReportedMissingNotWaitedFor(self):
        import time

        from ws4tx.server.embedded import free_port

        from test._process import Twistd

        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--redis", self.redis_server.url)
        self.addCleanup(child.stop, "KILL")
        child_id = (await child.waitFor(r"node (\w+) is in the node registry")).group(1)
        self.assertEqual(sorted(n["id"] for n in (await self.django(api.info))["nodes"]),
                         sorted([*self.ids, child_id]))
        # Hung (SIGSTOP): Redis still counts it, so the asker waits out its timeout.
        child.transport.signalProcess("STOP")
        for ask in (lambda: self.django(api.info, timeout=0.5),
                    lambda: self.nodes[0].service.server.info(timeout=0.5)):
            started = time.monotonic()
            result = await ask()
            took = time.monotonic() - started
            self.assertEqual(result["missing"], [child_id])
            self.assertEqual(sorted(n["id"] for n in result["nodes"]), self.ids)
            self.assertTrue(0.5 <= took < 1.0, took)
        # Killed (SIGKILL): Redis drops its subscription; it stays in the registry for up
        # to NODE_TTL and is reported missing as soon as the live nodes answered.
        await child.stop("KILL")
        for ask in (lambda: self.django(api.channels, timeout=5),
                    lambda: self.nodes[1].service.server.channels(timeout=5)):
            started = time.monotonic()
            result = await ask()
            took = time.monotonic() - started
            self.assertEqual((result["nodes"], result["missing"]), (self.ids, [child_id]))
            self.assertLess(took, 0.5)
        print(f"killed node reported missing after {took * 1000:.0f} ms")
