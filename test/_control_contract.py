"""The site's queries and commands across two nodes, written once and run on every Redis
topology (single Redis, Sentinel, shards, Cluster): the node registry, ``api.info()`` /
``api.channels()`` from the Django side and their ``ServerAPI`` twins from a node,
``api.unsubscribe()``, ``api.subscribe()`` and ``api.disconnect()``; resume tokens read on
any node without the database and refused by every node once the user logs out.

A test case mixes :class:`ControlAcrossNodesContract` in and gives it ``self.nodes``: two
nodes (``start_node``'s namespaces, or alike) on the topology, with the Django side's
client on the same topology.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor, threads

from test._wsclient import TIMEOUT, WSClient, connect


class ControlAcrossNodesContract:
    """Mixed into a ``TestCase`` whose ``self.nodes`` are two nodes of one topology."""

    nodes: list[SimpleNamespace]

    async def _joined(self, node: SimpleNamespace, path: str, identity: str,
                      protocols: tuple[str, ...] = ()) -> WSClient:
        client = await connect(node.port, path, headers={"x-test-identity": identity},
                               protocols=protocols)
        self.addCleanup(client.close)
        await node.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        return client

    async def _both(self, query: Any, server_query: Any) -> list[Any]:
        """The Django side's answer, then the first node's (its ServerAPI twin's)."""
        return [await threads.deferToThread(query), await server_query()]

    async def test_infoChannelsUnsubscribeDisconnectAcrossTwoNodes(self):
        """Both nodes register; ``api.info()`` and ``api.channels()`` (and their
        ServerAPI twins) gather both nodes' answers; ``api.unsubscribe()`` takes a user's
        connections on both nodes out of a channel, which ``api.channels()`` then shows;
        ``api.disconnect()`` closes them on both nodes and leaves the others."""
        from ws4tx import api, closecodes

        for node in self.nodes:
            if not node.factory.node._announced:
                await node.factory.node.whenRegistered().addTimeout(TIMEOUT, reactor)
        ids = sorted(node.factory.node.id for node in self.nodes)
        path = "/ws/chat?subscribe-user&subscribe-broadcast"
        ivy = [await self._joined(node, path, "ivy;;si") for node in self.nodes]
        jo = await self._joined(self.nodes[1], path, "jo;;sj")
        server = self.nodes[0].service.server
        for info in await self._both(api.info, server.info):
            self.assertEqual(info["missing"], [])
            self.assertEqual(sorted(n["id"] for n in info["nodes"]), ids)
            self.assertEqual(sorted(n["clients"] for n in info["nodes"]), [1, 2])

        async def channels() -> list[Any]:
            return await self._both(lambda: api.channels("ws4tx:*:chat"),
                                    lambda: server.channels("ws4tx:*:chat"))

        every = {"ws4tx:user:ivy:chat": 2, "ws4tx:user:jo:chat": 1,
                 "ws4tx:broadcast:chat": 3}
        for found in await channels():
            self.assertEqual(found, {"channels": every, "nodes": ids, "missing": []})
        self.assertEqual(await threads.deferToThread(
            api.unsubscribe, users=["ivy"], audiences=["broadcast"]), 2)
        # the control channel delivers in order: the query comes after the command
        for found in await channels():
            self.assertEqual(found["channels"], {**every, "ws4tx:broadcast:chat": 1})
        self.assertEqual(await threads.deferToThread(api.disconnect, users=["ivy"]), 2)
        for client in ivy:
            code, _ = await client.closed.addTimeout(TIMEOUT, reactor)
            self.assertEqual(code, closecodes.CLOSED_BY_SITE)
        self.assertFalse(jo.closed.called)

    async def test_resumeOnAnyNodeWithoutTheDatabaseRefusedEverywhereAfterLogout(self):
        """Two nodes of Django's own authenticator: a cookie client's resume token reopens
        its channels on the other node with no SQL statement and no call of the
        authenticator's thread (one Redis read of the revocation counter); once the user
        logs out, both nodes refuse the token within a second (the client comes back
        anonymous, by its cookie that no longer holds)."""
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db.backends.utils import CursorWrapper
        from django.test import Client

        from ws4tx import envelope
        from ws4tx.server import _django

        from test._server import start_node

        config = self.nodes[0].service.config
        nodes = [await start_node(self, config, _django.SessionAuthenticator(settings))
                 for _ in range(2)]
        name = f"resumer{id(self)}"
        User.objects.filter(username=name).delete()
        User.objects.create_user(name, password="secret")
        self.addCleanup(lambda: User.objects.filter(username=name).delete())
        browser = Client()
        self.assertTrue(browser.login(username=name, password="secret"))
        cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}="
                            f"{browser.cookies[settings.SESSION_COOKIE_NAME].value}"}
        path = "/ws/chat?subscribe-user&subscribe-broadcast&resume="

        async def opened(node: SimpleNamespace, query: str,
                         headers: dict[str, str]) -> Any:
            client = await connect(node.port, path + query, headers=headers,
                                   protocols=[envelope.SUBPROTOCOL])
            self.addCleanup(client.close)
            await node.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
            return client

        async def resume_token(client: Any) -> str:
            while True:
                message = json.loads(await client.text())
                if message.get("event") == envelope.SESSION_EVENT:
                    return str(message["data"]["resume"])

        first = await opened(nodes[0], "", cookie)
        token = await resume_token(first)
        await first.close()

        threads_run: list[Any] = []
        statements = [0]
        lock = threading.Lock()
        real_thread, real_execute = _django.run_in_thread, CursorWrapper.execute

        def counted_thread(f: Any, *args: Any, **kwargs: Any) -> Any:
            threads_run.append(f)
            return real_thread(f, *args, **kwargs)

        def counted_execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                statements[0] += 1
            return real_execute(cursor, *args, **kwargs)

        self.patch(_django, "run_in_thread", counted_thread)
        self.patch(CursorWrapper, "execute", counted_execute)
        again = await opened(nodes[1], token, {})
        self.assertEqual((threads_run, statements[0]), ([], 0))
        self.assertEqual(dict(nodes[1].factory.node.resumes), {"resumed": 1})
        await threads.deferToThread(api_publish, f"ws4tx:user:{name}:chat", name)
        while True:  # after the session event(s): the message, as it was published
            text = await again.text()
            if not text.startswith("{") or \
                    json.loads(text).get("event") != envelope.SESSION_EVENT:
                break
        self.assertEqual(text, name)
        await again.close()

        started = reactor.seconds()
        await threads.deferToThread(browser.logout)
        for node in nodes:
            await opened(node, token, cookie)
        self.assertLess(reactor.seconds() - started, 1.0)
        for node in nodes:
            self.assertEqual(node.factory.node.resumes["revoked"], 1)
        self.assertEqual(nodes[0].factory.node.resumes["resumed"], 0)
        self.assertTrue(threads_run)  # refused tokens: the cookie authenticated again

    async def test_subscribeAcrossTwoNodes(self):
        """``api.subscribe()`` (and its ServerAPI twin) makes a user's event connections
        on both nodes subscribe, each told with ``ws4tx.subscribed``, which
        ``api.channels()`` then shows; another user's connection is left alone."""
        from ws4tx import api

        ivy = [await self._joined(node, "/ws/", "ivy;;si", ("ws4tx.v1",))
               for node in self.nodes]
        jo = await self._joined(self.nodes[1], "/ws/", "jo;;sj", ("ws4tx.v1",))
        server = self.nodes[0].service.server
        for subscribe, facility in (
                (lambda: threads.deferToThread(api.subscribe, "notes", users=["ivy"],
                                               audiences=["user"], reason="hi"), "notes"),
                (lambda: server.subscribe("news", users=["ivy"], audiences=["user"],
                                          reason="hi"), "news")):
            self.assertEqual(await subscribe(), 2)
            channel = f"ws4tx:user:ivy:{facility}"
            for client in ivy:
                told = json.loads(await client.text())
                self.assertEqual((told["event"], told["data"]), ("ws4tx.subscribed", {
                    "facility": facility, "audiences": ["user"], "channels": [channel],
                    "reason": "hi"}))
            found = await threads.deferToThread(api.channels, f"ws4tx:*:{facility}")
            self.assertEqual(found["channels"], {channel: 2})
        # nothing else came before the answer to a frame sent now
        for client in [*ivy, jo]:
            client.send('{"ws4tx":"subscribe","id":7,"facility":"other",'
                        '"audiences":{"broadcast":true}}')
            self.assertEqual(json.loads(await client.text())["ws4tx"], "subscribed")


def api_publish(channel: str, user: str) -> None:
    """``api.publish`` to ``user``'s channel (in a thread: it blocks)."""
    from ws4tx import api

    api.publish(channel.split(":")[-1], user, users=[user])
