"""Idempotency keys (``api.publish(..., key=...)``) and the page-to-live position
(``api.position``, ``{% ws4tx_position %}``) on the Django side, against a real Redis (and a
real Redis Cluster)."""

from __future__ import annotations

import json

import redis

from ws4tx import api, history, naming

from test._djangoredis import (
    DjangoClusterTestCase,
    DjangoRedisTestCase,
    make_request,
    make_user,
)

CHAT = "ws4tx:broadcast:chat"


class KeyTests(DjangoRedisTestCase):
    """A retried publish with the same key is stored and delivered once."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"chat": {"size": 10, "ttl": 600}})

    def test_retryIsDeliveredAndStoredOnceAndGivesTheFirstPosition(self):
        """The second publish of a key delivers nothing, adds nothing to the history
        and returns the first publish's position, marked repeated."""
        listener = self.listen(CHAT)
        first = api.publish("chat", "paid", broadcast=True, key="order-42-paid")
        api.publish("chat", "other", broadcast=True)
        again = api.publish("chat", "paid", broadcast=True, key="order-42-paid")
        self.assertEqual((int(first), first.repeated), (1, False))
        self.assertEqual((int(again), again.repeated), (0, True))
        self.assertEqual(again.positions, first.positions)
        self.assertEqual(first.positions[CHAT].offset, 1)
        self.assertEqual([p[1].split(b"__", 2)[-1] for p in listener.received()],
                         [b"paid", b"other"])
        self.assertEqual([p.payload for p in api.history("chat", broadcast=True).publications],
                         [b"paid", b"other"])

    def test_keyLivesForTheHistoryTtlInTheChannelsHashTag(self):
        """The record is kept for the history's ttl but at least a day (a relay that
        resends a minute after a crash still finds it), beside the channel's history
        keys."""
        api.publish("chat", "x", broadcast=True, key="k")
        record = naming.once_key("ws4tx", CHAT, "k")
        self.assertEqual(record, "ws4tx:once:{broadcast:chat}:k")
        self.assertTrue(86390 < self.store.ttl(record) <= 86400)
        self.store.delete(record)  # the window is over: the key publishes again
        self.assertFalse(api.publish("chat", "x", broadcast=True, key="k").repeated)

    def test_eachChannelAndEachKeyCountsApart(self):
        """A key is per channel: a new channel of the same key gets it; another key is
        another message."""
        api.publish("chat", "x", broadcast=True, key="k")
        both = api.publish("chat", "x", broadcast=True, users=["john"], key="k")
        self.assertFalse(both.repeated)  # john's channel had not had it
        self.assertEqual(both.positions["ws4tx:user:john:chat"].offset, 1)
        self.assertEqual(both.positions[CHAT].offset, 1)  # broadcast: the first publish's
        self.assertEqual(api.publish("chat", "x", broadcast=True, key="k2")
                         .positions[CHAT].offset, 2)

    def test_facilityWithoutHistoryKeepsTheKeyADay(self):
        """Without history: delivered and stored for replay once; the record lives
        KEY_TTL seconds."""
        listener = self.listen("ws4tx:broadcast:news")
        sent = [api.publish("news", "flash", broadcast=True, key="n1", expire=60)
                for _ in range(3)]
        self.assertEqual([(int(s), s.repeated, s.positions) for s in sent],
                         [(1, False, {}), (0, True, {}), (0, True, {})])
        self.assertEqual(listener.received(), [("ws4tx:broadcast:news", b"flash")])
        self.assertEqual(self.store.get("ws4tx:broadcast:news"), b"flash")
        ttl = self.store.ttl(naming.once_key("ws4tx", "ws4tx:broadcast:news", "n1"))
        self.assertTrue(history.KEY_TTL - 10 < ttl <= history.KEY_TTL)

    def test_badKeysAreRefused(self):
        for key in ("", "x" * (naming.MAX_KEY_LENGTH + 1), 42):
            with self.assertRaises(ValueError):
                api.publish("chat", "x", broadcast=True, key=key)


class PositionTests(DjangoRedisTestCase):
    """Where channels stand, for a page to hand to ws4tx.js."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"chat": {"size": 10, "ttl": 600}})

    def test_positionIsTheLastOffsetAndEpochWithoutPayloads(self):
        """position() gives each channel's epoch and last offset, as history() does."""
        for text in ("a", "b"):
            api.publish("chat", text, broadcast=True)
        where = api.position("chat", broadcast=True, users=["john"])
        read = api.history("chat", broadcast=True)
        self.assertEqual(where[CHAT], history.Position(2, read.epoch))
        # john's channel had no epoch: it gets one, which its first publish keeps
        john = where["ws4tx:user:john:chat"]
        self.assertEqual(john.offset, 0)
        self.assertEqual(api.publish("chat", "c", users=["john"])
                         .positions["ws4tx:user:john:chat"], history.Position(1, john.epoch))

    def test_renderedPositionRecoversExactlyWhatCameAfterTheRender(self):
        """The tag's JSON, turned into recover= values as ws4tx.js does, parses with the
        server's parser and recovers (the server's merge) exactly the messages published
        after the page was rendered."""
        from django.template import Context, Template

        john = make_user("john")
        request = make_request(john)
        api.publish("chat", "before", broadcast=True)
        html = Template('{% load ws4tx %}<div data-p="{% ws4tx_position "chat" '
                        'broadcast=True users=True %}">').render(Context({"request": request}))
        attribute = html.split('data-p="', 1)[1].split('"', 1)[0]
        import html as html_module

        rendered = json.loads(html_module.unescape(attribute))
        self.assertEqual(set(rendered), {CHAT, "ws4tx:user:john:chat"})
        for text in ("after 1", "after 2"):
            api.publish("chat", text, broadcast=True, users=["john"])
        positions = history.parse_recover(
            [f"{channel}:{p['epoch']}:{p['offset']}" for channel, p in rendered.items()])
        for channel, position in positions.items():
            audience = {"broadcast": True} if channel == CHAT else {"users": ["john"]}
            read = api.history("chat", since=position.offset, **audience)
            merged = history.merge(position, read, [])
            self.assertTrue(merged.recovered, channel)
            self.assertEqual([p.payload for p in merged.publications],
                             [b"after 1", b"after 2"])

    def test_facilityWithoutHistoryIsRefused(self):
        with self.assertRaises(ValueError):
            api.position("news", broadcast=True)


class ClusterKeyTests(DjangoClusterTestCase):
    """On a Redis Cluster the key's record shares its channel's slot."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"chat": {"size": 10, "ttl": 600}})

    def test_keyedPublishesOnceOnACluster(self):
        """With and without history, the second publish of a key is a repeat; the record
        is in the slot of the channel's cluster name."""
        client = self.cluster.cluster_client()
        self.addCleanup(client.close)
        for facility in ("chat", "news"):
            first = api.publish(facility, "x", broadcast=True, users=["ann", "bob"], key="k")
            again = api.publish(facility, "x", broadcast=True, users=["ann", "bob"], key="k")
            self.assertEqual((first.repeated, again.repeated), (False, True))
            self.assertEqual(again.positions, first.positions)
            for channel in naming.channels_for("ws4tx", facility, broadcast=True,
                                               users=["ann", "bob"]):
                record = naming.cluster_once_key("ws4tx", channel, "k")
                self.assertEqual(client.keyslot(record),
                                 client.keyslot(naming.cluster_channel(channel)))
                self.assertEqual(client.exists(record), 1)
        self.assertEqual(
            [p.payload for p in api.history("chat", users=["ann"]).publications], [b"x"])
        self.assertIsInstance(client, redis.RedisCluster)
