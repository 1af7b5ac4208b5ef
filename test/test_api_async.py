"""ws4tx.api's asynchronous twins (apublish, aemit, ahistory, aposition, apresence,
apresence_stats, adisconnect, aunsubscribe, asubscribe) against the synchronous functions, from one
table, on one Redis, two shards, Sentinel and a Redis Cluster; and from a Django async view."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

from ws4tx import _async_redis, _sync_redis, api
from ws4tx.server.embedded import EmbeddedRedis

from test._djangoredis import (
    DjangoClusterTestCase,
    DjangoRedisTestCase,
    DjangoTestCase,
    make_request,
    make_user,
)
from test._sentinel import SentinelGroup

CHAT = "ws4tx:broadcast:chat"
SETTINGS = {"WS4TX_HISTORY": {"chat": {"size": 10, "ttl": 600}}, "WS4TX_PRESENCE": ["chat"]}


def _steps(twin: Callable[[str], Any], request: Any) -> dict[str, Callable[[], Any]]:
    """The table: each row calls the sync function or its async twin (``twin(name)``) with
    the same arguments. Every row runs on an empty Redis."""
    def repeat() -> Any:
        first = yield twin("publish")("chat", "paid", broadcast=True, key="order-42")
        again = yield twin("publish")("chat", "paid", broadcast=True, key="order-42")
        read = yield twin("history")("chat", broadcast=True)
        return first, again, read

    def history() -> Any:
        for text in ("a", "b", "c"):
            yield twin("publish")("chat", text, broadcast=True, users=["john"])
        whole = yield twin("history")("chat", broadcast=True)
        page = yield twin("history")("chat", users=["john"], since=1, limit=1)
        where = yield twin("position")("chat", broadcast=True, users=["john"])
        return whole, page, where

    return {
        "publish": lambda: (yield twin("publish")("chat", "hi", broadcast=True)),
        "publish without history, stored": lambda: (
            yield twin("publish")("other", b"\x00bin", groups=["staff"], expire=60)),
        "publish without history, keyed": repeat_other(twin),
        "publish SELF (the database, in a thread)": lambda: (
            yield twin("publish")("chat", "me", users=[api.SELF], request=request)),
        "emit": lambda: (yield twin("emit")("chat", "said", {"n": 1}, broadcast=True)),
        "idempotency key": repeat,
        "history and position": history,
        "position of a new channel": lambda: (yield twin("position")("chat", sessions=["s"])),
        "presence": lambda: (yield twin("presence")("chat")),
        "presence_stats": lambda: (yield twin("presence_stats")("chat", broadcast=True)),
        "disconnect": lambda: (yield twin("disconnect")(users=["john"], reason="bye")),
        "unsubscribe": lambda: (yield twin("unsubscribe")(users=["john"], groups=["staff"])),
        "subscribe": lambda: (yield twin("subscribe")("notes", groups=["staff"],
                                                      audiences=["group"], reason="r")),
        "subscribe SELF (the database, in a thread)": lambda: (
            yield twin("subscribe")("notes", users=[api.SELF], request=request)),
        "subscribe a bad facility": lambda: (
            yield twin("subscribe")("bad facility", users=["john"])),
        "no audience": lambda: (yield twin("publish")("chat", "lost")),
        "bad key": lambda: (yield twin("publish")("chat", "x", broadcast=True, key="")),
        "history of two channels": lambda: (
            yield twin("history")("chat", broadcast=True, users=["a"])),
        "position without history": lambda: (yield twin("position")("other", broadcast=True)),
        "bad since": lambda: (yield twin("history")("chat", broadcast=True, since=-1)),
        "presence not kept": lambda: (yield twin("presence")("other")),
        "bad event": lambda: (yield twin("emit")("chat", "ws4tx.x", broadcast=True)),
        "bad close code": lambda: (yield twin("disconnect")(users=["a"], code=1005)),
    }


def repeat_other(twin: Callable[[str], Any]) -> Callable[[], Any]:
    def row() -> Any:
        first = yield twin("publish")("other", "once", broadcast=True, key="k1", expire=60)
        again = yield twin("publish")("other", "once", broadcast=True, key="k1", expire=60)
        return first, again
    return row


def _normal(value: Any) -> Any:
    """``value`` with its epochs (random per Redis state) named by order of appearance,
    a Sent as (receivers, positions, repeated)."""
    epochs: dict[str, str] = {}

    def walk(item: Any) -> Any:
        if isinstance(item, api.Sent):
            return ("Sent", int(item), walk(item.positions), item.repeated)
        if isinstance(item, api.Position):
            return ("Position", item.offset, walk(item.epoch))
        if isinstance(item, api.History):
            return ("History", walk(item.epoch), item.offset, item.publications)
        if isinstance(item, str) and re.fullmatch(r"[0-9a-f]{16}", item):
            return epochs.setdefault(item, f"E{len(epochs)}")
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(i) for i in item)
        return item

    return walk(value)


class _Table:
    """Runs every row of the table with the sync functions and with their async twins,
    each on a wiped Redis, and compares what they returned or raised."""

    def wipe(self) -> None:
        raise NotImplementedError

    def _sync(self, row: Callable[[], Any]) -> Any:
        steps = row()
        try:
            call = next(steps)
            while True:
                call = steps.send(call.value)
        except StopIteration as done:
            return done.value

    async def _async(self, row: Callable[[], Any]) -> Any:
        steps = row()
        try:
            try:
                call = next(steps)
                while True:
                    call = steps.send(await call)
            except StopIteration as done:
                return done.value
        finally:
            await _async_redis.aclose()

    def outcome(self, run: Callable[[], Any]) -> Any:
        try:
            return ("returned", _normal(run()))
        except (ValueError, TypeError, api.PublishError) as e:  # part of the outcome
            return ("raised", type(e), str(e))

    def test_syncAndAsyncGiveTheSameResultsAndErrors(self) -> None:
        """Each row gives the same result (or raises the same error, same message) from
        the sync function and from its async twin."""
        request = make_request(make_user("john", ["staff"]))

        def sync_twin(name: str) -> Any:
            function = getattr(api, name)
            return lambda *a, **k: _Now(function(*a, **k))

        def async_twin(name: str) -> Any:
            return getattr(api, "a" + name)

        sync_rows = _steps(sync_twin, request)
        async_rows = _steps(async_twin, request)
        outcomes = {}
        for name in sync_rows:
            self.wipe()
            got = self.outcome(lambda name=name: self._sync(sync_rows[name]))
            self.wipe()
            wanted = self.outcome(lambda name=name: asyncio.run(self._async(async_rows[name])))
            self.assertEqual(got, wanted, name)
            outcomes[name] = got
        # What the rows prove is what they returned, not only that both agree.
        self.assertEqual(outcomes["idempotency key"][1][1][1:],
                         (0, outcomes["idempotency key"][1][0][2], True))
        self.assertEqual([p.payload for p in outcomes["idempotency key"][1][2][3]],
                         [b"paid"])
        self.assertEqual(outcomes["publish without history, keyed"][1][1][3],
                         True)
        raising_rows = ("no audience", "bad key", "history of two channels",
                        "position without history", "bad since", "presence not kept",
                        "bad event", "bad close code", "subscribe a bad facility")
        for name, outcome in outcomes.items():
            self.assertEqual(outcome[0], "raised" if name in raising_rows else "returned",
                             name)
        self.assertEqual(outcomes["publish"][1], ("Sent", 0, {CHAT: ("Position", 1, "E0")},
                                                  False))
        for raising in ("no audience", "bad key", "history of two channels",
                        "position without history", "bad since", "presence not kept",
                        "bad event", "bad close code", "subscribe a bad facility"):
            self.assertEqual(outcomes[raising][0], "raised", raising)
            self.assertTrue(issubclass(outcomes[raising][1], ValueError), raising)


class _Now:
    """A sync call's result, standing where an async twin gives an awaitable."""

    def __init__(self, value: Any) -> None:
        self.value = value


class OneRedisTests(_Table, DjangoRedisTestCase):
    """One Redis."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(**SETTINGS)

    def wipe(self) -> None:
        self.store.flushall()

    def test_redisDownIsTheSamePublishError(self) -> None:
        """A stopped Redis: both raise PublishError naming the address, within the
        timeout."""
        self.settings(WS4TX_PUBLISH_TIMEOUT=0.5)
        self.redis.stop()
        errors = []
        for run in (lambda: api.publish("chat", "x", broadcast=True),
                    lambda: asyncio.run(api.apublish("chat", "x", broadcast=True))):
            with self.assertRaises(api.PublishError) as caught:
                run()
            errors.append(str(caught.exception))
        self.assertEqual(errors[0].split(":")[0], errors[1].split(":")[0])
        for text in errors:
            self.assertIn(f"127.0.0.1:{self.redis.port}", text)


class ShardsTests(_Table, DjangoTestCase):
    """Two shards (channels placed by the same function on both sides)."""

    def setUp(self) -> None:
        super().setUp()
        self.shards = [EmbeddedRedis(), EmbeddedRedis()]
        for shard in self.shards:
            shard.start()
            self.addCleanup(shard.stop)
        _sync_redis.use_url(" ".join(s.url for s in self.shards))
        self.addCleanup(_sync_redis.reset)
        self.settings(**SETTINGS)

    def wipe(self) -> None:
        import redis

        for shard in self.shards:
            with redis.Redis.from_url(shard.url) as client:
                client.flushall()


class SentinelTests(_Table, DjangoTestCase):
    """Redis Sentinel (redis.asyncio's Sentinel finds the master)."""

    def setUp(self) -> None:
        super().setUp()
        self.group = SentinelGroup()
        self.group.start()
        self.addCleanup(self.group.stop)
        _sync_redis.use_url(self.group.address().url)
        self.addCleanup(_sync_redis.reset)
        self.settings(**SETTINGS)

    def wipe(self) -> None:
        self.group.client(self.group.master).flushall()


class ClusterTests(_Table, DjangoClusterTestCase):
    """A three-primary Redis Cluster (redis.asyncio's RedisCluster; SPUBLISH)."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(**SETTINGS)

    def wipe(self) -> None:
        for server in self.cluster.servers:
            with self.cluster.client(server) as client:
                client.flushall()


class AsyncViewTests(DjangoRedisTestCase):
    """An async Django view publishes and reads with the async API."""

    def test_asyncViewPublishesWithoutBlocking(self) -> None:
        """A request through Django's AsyncClient to an async view that awaits apublish
        and aposition: the message reaches its channel and the view gets its position."""
        from django.http import JsonResponse
        from django.test import AsyncClient, override_settings
        from django.urls import path

        async def view(request: Any) -> JsonResponse:
            sent = await api.apublish("chat", "from a view", broadcast=True)
            where = await api.aposition("chat", broadcast=True)
            await _async_redis.aclose()
            assert sent is not None
            return JsonResponse({"receivers": int(sent),
                                 "offset": where[CHAT].offset,
                                 "sent": sent.positions[CHAT] == where[CHAT]})

        urls = type("urls", (), {"urlpatterns": [path("publish", view)]})
        self.settings(**SETTINGS)
        listener = self.listen(CHAT)
        with override_settings(ROOT_URLCONF=urls, MIDDLEWARE=[]):
            response = asyncio.run(AsyncClient().get("/publish"))
        self.assertEqual(response.json(), {"receivers": 1, "offset": 1, "sent": True})
        [(channel, published)] = listener.received()
        self.assertEqual(channel, CHAT)
        self.assertTrue(published.endswith(b"__from a view"))

