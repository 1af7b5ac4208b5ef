"""The site's queries and commands across two nodes, written once and run on every Redis
topology (single Redis, Sentinel, shards, Cluster): the node registry, ``api.info()`` /
``api.channels()`` from the Django side and their ``ServerAPI`` twins from a node,
``api.unsubscribe()``, ``api.subscribe()`` and ``api.disconnect()``.

A test case mixes :class:`ControlAcrossNodesContract` in and gives it ``self.nodes``: two
nodes (``start_node``'s namespaces, or alike) on the topology, with the Django side's
client on the same topology.
"""

from __future__ import annotations

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

    async def test_subscribeAcrossTwoNodes(self):
        """``api.subscribe()`` (and its ServerAPI twin) makes a user's event connections
        on both nodes subscribe, each told with ``ws4tx.subscribed``, which
        ``api.channels()`` then shows; another user's connection is left alone."""
        import json

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
