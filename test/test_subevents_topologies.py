"""Events for a subscription's facility on every Redis topology: shards, Sentinel,
Cluster (single Redis: test_subevents). A client on /ws/ subscribed to two facilities
reaches each one's handler, and what each handler broadcasts and its presence come back
naming their facility, wherever the channels live."""

from __future__ import annotations

import json
from typing import Any

import pytest

from test import _topologies
from test._server import ServerTestCase, identity_header
from test.test_subevents import Chat, Notes, event, subscribe

#: Whole Redis topologies (Sentinel groups, clusters): run in one tox env.
pytestmark = pytest.mark.system

EVENTS = ("ws4tx.v1",)
JOHN = identity_header("john", ("staff",), "s-john")
HANDLERS = [Chat, Notes]


class _Contract:
    """What every topology must do; mixed into a ServerTestCase whose Redis is one."""

    config = ServerTestCase.config.replace(presence=("chat",))

    def serverArguments(self) -> dict[str, Any]:
        return {"handlers": HANDLERS}

    async def test_eachFacilitysEventsComeBackNamingIt(self: Any) -> None:
        """Each subscription's shout reaches its facility's handler, whose broadcast comes
        back naming that facility; the chat's presence names it too."""
        client = await self.client("/ws/", JOHN, protocols=EVENTS)
        client.send(subscribe(1, "chat", broadcast=True))
        client.send(subscribe(2, "notes", broadcast=True, user=True))
        frames: list[dict[str, Any]] = []

        async def until(done: Any) -> None:
            while not done():
                frames.append(json.loads(await client.text()))

        await until(lambda: sum(f["ws4tx"] == "subscribed" for f in frames) == 2)
        client.send(event("shout", "to chat", id=3, facility="chat"))
        client.send(event("shout", "to notes", id=4, facility="notes"))
        await until(lambda: sum(f.get("event") == "shouted" for f in frames) == 2
                    and sum(f["ws4tx"] == "ack" for f in frames) == 2
                    and any(f.get("event") == "ws4tx.presence" for f in frames))
        self.assertEqual(sorted((f["facility"], f["data"]) for f in frames
                                if f.get("event") == "shouted"),
                         [("chat", "to chat"), ("notes", "to notes")])
        self.assertEqual({f["facility"] for f in frames
                          if f.get("event") == "ws4tx.presence"}, {"chat"})


class ShardsTests(_Contract, _topologies.Shards, ServerTestCase):
    """Three Redis servers, channels placed by name."""


class SentinelTests(_Contract, _topologies.Sentinel, ServerTestCase):
    """A master and its replica behind Sentinels."""


class ClusterTests(_Contract, _topologies.ClusterOfThree, ServerTestCase):
    """Three primaries of a Redis Cluster (started once for the class)."""
