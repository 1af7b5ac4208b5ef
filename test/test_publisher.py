"""The Django-side publisher (ws4redis's API and ws4tx.api) against a real Redis."""

from __future__ import annotations

import dataclasses
import socket
import time

import redis

from ws4tx import api, envelope, naming
from ws4tx.publisher import RedisPublisher
from ws4tx.redis_store import SELF, NotStored, PublishError, RedisMessage

from test._djangoredis import (
    DjangoRedisTestCase,
    DjangoTestCase,
    make_request,
    make_user,
)

#: The test settings' SECRET_KEY: the Django side names session channels with it.
SECRET = "ws4tx-test-suite-not-secret"


def session(key: str, facility: str = "foobar") -> str:
    """The channel of session ``key``: named by its derived id, never by the key."""
    return f"ws4tx:session:{naming.session_channel_id(SECRET, key)}:{facility}"


ALL = [
    "ws4tx:broadcast:foobar",
    "ws4tx:user:john:foobar", "ws4tx:user:mary:foobar",
    "ws4tx:group:chatusers:foobar", "ws4tx:group:staff:foobar",
    session("s1"), session("s2"),
    "ws4tx:broadcast:other",
]


class AudienceTests(DjangoRedisTestCase):
    """A publish reaches exactly the channels of its audience."""

    def _sent(self, **audience):
        listener = self.listen(*ALL)
        RedisPublisher(facility="foobar", **audience).publish_message(RedisMessage("hi"))
        return listener.received()

    def test_broadcastReachesOnlyTheBroadcastChannel(self):
        """broadcast=True publishes on {prefix}:broadcast:{facility} only."""
        self.assertEqual(self._sent(broadcast=True), [("ws4tx:broadcast:foobar", b"hi")])

    def test_userReachesOnlyThatUsersChannel(self):
        """users=[name] publishes on that user's channel only."""
        self.assertEqual(self._sent(users=["john"]), [("ws4tx:user:john:foobar", b"hi")])

    def test_groupReachesOnlyThatGroupsChannel(self):
        """groups=[name] publishes on that group's channel only."""
        self.assertEqual(self._sent(groups=["chatusers"]),
                         [("ws4tx:group:chatusers:foobar", b"hi")])

    def test_sessionReachesOnlyThatSessionsChannel(self):
        """sessions=[key] publishes on that session's channel only, named by the key's
        derived id."""
        self.assertEqual(self._sent(sessions=["s2"]), [(session("s2"), b"hi")])

    def test_severalAudiencesReachEachChannelOnce(self):
        """Audiences combine; a name given twice is published to once."""
        got = self._sent(broadcast=True, users=["john", "mary", "john"], groups=["staff"],
                         sessions=["s1"])
        self.assertEqual(sorted(got), sorted([
            ("ws4tx:broadcast:foobar", b"hi"), ("ws4tx:user:john:foobar", b"hi"),
            ("ws4tx:user:mary:foobar", b"hi"), ("ws4tx:group:staff:foobar", b"hi"),
            (session("s1"), b"hi"),
        ]))

    def test_userAndGroupObjectsAreNamedByTheirNames(self):
        """users may be User objects (get_username()) and groups Group objects."""
        from django.contrib.auth.models import Group

        john = make_user("john", ["chatusers"])
        got = self._sent(users=[john], groups=[Group.objects.get(name="chatusers")])
        self.assertEqual(sorted(got), [("ws4tx:group:chatusers:foobar", b"hi"),
                                       ("ws4tx:user:john:foobar", b"hi")])

    def test_ws4redisLegacyFormsAreUnderstood(self):
        """A single name counts as a one-name list; users=True means [SELF]."""
        john = make_user("john")
        listener = self.listen(*ALL)
        RedisPublisher(facility="foobar", users="mary").publish_message("a")
        RedisPublisher(request=make_request(john), facility="foobar",
                       users=True).publish_message("b")
        self.assertEqual(listener.received(), [("ws4tx:user:mary:foobar", b"a"),
                                               ("ws4tx:user:john:foobar", b"b")])

    def test_publishReturnsTheNumberOfSubscribers(self):
        """publish_message returns the sum of the PUBLISH replies."""
        self.listen("ws4tx:broadcast:foobar")
        self.listen("ws4tx:broadcast:foobar", "ws4tx:user:john:foobar")
        publisher = RedisPublisher(facility="foobar", broadcast=True, users=["john"])
        self.assertEqual(publisher.publish_message("x"), 3)
        self.assertEqual(RedisPublisher(facility="foobar", users=["nobody"])
                         .publish_message("x"), 0)

    def test_givenConnectionIsUsed(self):
        """connection= publishes through that client instead of the shared one."""
        import redis

        from ws4tx import _sync_redis

        _sync_redis.use_url("redis://127.0.0.1:1/0")  # the shared client would fail
        own = redis.Redis.from_url(dataclasses.replace(self.redis.address, db=2).url)
        self.addCleanup(own.close)
        RedisPublisher(facility="foobar", broadcast=True,
                       connection=own).publish_message("mine")
        self.assertEqual(own.get("ws4tx:broadcast:foobar"), b"mine")
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))

    def test_channelsComeFromNaming(self):
        """The channels are naming.channel's, in broadcast, user, group, session order."""
        publisher = RedisPublisher(facility="foobar", sessions=["s1"], groups=["g"],
                                   users=["u"], broadcast=True)
        self.assertEqual(publisher.channels, [
            naming.broadcast_channel("ws4tx", "foobar"),
            naming.channel("ws4tx", naming.USER, "foobar", "u"),
            naming.channel("ws4tx", naming.GROUP, "foobar", "g"),
            naming.channel("ws4tx", naming.SESSION, "foobar",
                           naming.session_channel_id(SECRET, "s1")),
        ])

    def test_emptyPrefixSettingMeansNoPrefix(self):
        """WS4REDIS_PREFIX = "" gives ws4redis's unprefixed names."""
        self.settings(WS4REDIS_PREFIX="")
        listener = self.listen("broadcast:foobar", "ws4tx:broadcast:foobar")
        RedisPublisher(facility="foobar", broadcast=True).publish_message("x")
        self.assertEqual(listener.received(), [("broadcast:foobar", b"x")])

    def test_ws4txPrefixWinsOverWs4redisPrefix(self):
        """WS4TX_PREFIX is used when both prefix settings are set."""
        self.settings(WS4REDIS_PREFIX="old", WS4TX_PREFIX="site")
        self.assertEqual(RedisPublisher(facility="f", users=["u"]).channels,
                         ["site:user:u:f"])
        self.assertEqual(RedisPublisher.get_prefix(), "site:")

    def test_badFacilityIsRefused(self):
        """A facility with ':' (or none, when there is an audience) is refused."""
        with self.assertRaises(naming.InvalidFacility):
            RedisPublisher(facility="a:b", broadcast=True)
        with self.assertRaises(ValueError):
            RedisPublisher(broadcast=True)
        self.assertEqual(RedisPublisher().channels, [])

    def test_emptyNamesAreRefused(self):
        """An empty or non-string name is an error, not a junk channel."""
        for audience in ({"users": [""]}, {"groups": [None]}, {"sessions": [3]}):
            with self.assertRaises(ValueError):
                RedisPublisher(facility="foobar", **audience)


class SelfTests(DjangoRedisTestCase):
    """SELF resolves to the request's own user, groups (from the database) and session."""

    def test_selfUserIsTheAuthenticatedUser(self):
        """users=[SELF] is the request's user name."""
        request = make_request(make_user("john"))
        self.assertEqual(RedisPublisher(request=request, facility="foobar",
                                        users=[SELF, "mary"]).channels,
                         ["ws4tx:user:john:foobar", "ws4tx:user:mary:foobar"])

    def test_selfGroupsAreReadFromTheDatabase(self):
        """groups=[SELF] is the user's groups as the database has them now."""
        from django.contrib.auth.models import Group

        john = make_user("john", ["chatusers"])
        request = make_request(john)
        john.groups.add(Group.objects.create(name="late"))
        self.assertEqual(RedisPublisher(request=request, facility="foobar",
                                        groups=[SELF]).channels,
                         ["ws4tx:group:chatusers:foobar", "ws4tx:group:late:foobar"])

    def test_selfSessionIsTheSessionsChannel(self):
        """sessions=[SELF] is the request's session, under its derived id."""
        request = make_request()
        key = request.session.session_key
        self.assertTrue(key)
        listener = self.listen(session(key))
        RedisPublisher(request=request, facility="foobar", sessions=[SELF]).publish_message("s")
        self.assertEqual(listener.received(), [(session(key), b"s")])

    def test_anonymousSelfGivesNoUserOrGroupChannel(self):
        """An anonymous request's SELF is no user and no group (ws4redis made junk names)."""
        request = make_request()
        publisher = RedisPublisher(request=request, facility="foobar", users=[SELF],
                                   groups=[SELF])
        self.assertEqual(publisher.channels, [])
        self.assertEqual(publisher.publish_message("x"), 0)

    def test_unsavedSessionGivesNoSessionChannel(self):
        """A request without a session, or with an unsaved one, has no session channel."""
        from django.contrib.sessions.backends.db import SessionStore

        request = make_request(session=False)
        self.assertEqual(RedisPublisher(request=request, facility="f",
                                        sessions=[SELF]).channels, [])
        request.session = SessionStore()
        self.assertEqual(RedisPublisher(request=request, facility="f",
                                        sessions=[SELF]).channels, [])

    def test_selfWithoutARequestIsRefused(self):
        """SELF without a request is a programming error."""
        with self.assertRaises(ValueError):
            RedisPublisher(facility="foobar", users=[SELF])


class StoreTests(DjangoRedisTestCase):
    """A published message is stored under its channel with SETEX, for replay."""

    def test_messageIsStoredWithTheGivenExpire(self):
        """expire=60 stores the message under each channel for 60 s."""
        RedisPublisher(facility="foobar", broadcast=True,
                       users=["john"]).publish_message("kept", expire=60)
        for key in ("ws4tx:broadcast:foobar", "ws4tx:user:john:foobar"):
            self.assertEqual(self.store.get(key), b"kept")
            self.assertTrue(0 < self.store.ttl(key) <= 60)

    def test_expireDefaultsToTheSetting(self):
        """Without expire, EXPIRE (default 3600) is the time to live."""
        RedisPublisher(facility="a", broadcast=True).publish_message("x")
        self.assertTrue(3590 < self.store.ttl("ws4tx:broadcast:a") <= 3600)
        self.settings(WS4REDIS_EXPIRE=120)
        RedisPublisher(facility="b", broadcast=True).publish_message("x")
        self.assertTrue(110 < self.store.ttl("ws4tx:broadcast:b") <= 120)

    def test_expireZeroStoresNothing(self):
        """expire=0 (or EXPIRE = 0) publishes without storing."""
        listener = self.listen("ws4tx:broadcast:foobar")
        RedisPublisher(facility="foobar", broadcast=True).publish_message("x", expire=0)
        self.settings(WS4TX_EXPIRE=0)
        RedisPublisher(facility="foobar", broadcast=True).publish_message("y")
        self.assertEqual(listener.received(), [("ws4tx:broadcast:foobar", b"x"),
                                               ("ws4tx:broadcast:foobar", b"y")])
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))

    def test_badExpireIsRefused(self):
        """A negative or fractional expire is refused before anything is sent."""
        publisher = RedisPublisher(facility="foobar", broadcast=True)
        for bad in (-1, 1.5, "60"):
            with self.assertRaises(ValueError):
                publisher.publish_message("x", expire=bad)
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))

    def test_binaryMessagesAreStoredAsBytes(self):
        """Bytes are published and stored unchanged."""
        payload = bytes(range(256))
        RedisPublisher(facility="foobar", broadcast=True).publish_message(payload)
        self.assertEqual(self.store.get("ws4tx:broadcast:foobar"), payload)


class RefusedWriteTests(DjangoRedisTestCase):
    """Redis delivers but refuses to store (maxmemory with noeviction), or refuses to
    publish (an ACL): the caller learns which."""

    def test_deliveredButNotStoredRaisesNotStoredNotPublishError(self):
        """PUBLISH succeeds, SET is refused: NotStored with the receivers (not a
        PublishError, so that nobody retries a delivered message)."""
        listener = self.listen("ws4tx:broadcast:foobar")
        self.store.config_set("maxmemory-policy", "noeviction")
        self.store.config_set("maxmemory", 1)
        self.addCleanup(self.store.config_set, "maxmemory", 0)
        with self.assertRaises(NotStored) as caught:
            api.publish("foobar", "once", broadcast=True, expire=60)
        self.assertNotIsInstance(caught.exception, PublishError)
        self.assertEqual(caught.exception.receivers, 1)
        self.assertIn("maxmemory", caught.exception.reason)
        self.assertIs(api.NotStored, NotStored)
        self.assertEqual(listener.received(), [("ws4tx:broadcast:foobar", b"once")])
        self.store.config_set("maxmemory", 0)
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))

    def test_refusedPublishStoresNothing(self):
        """Without PUBLISH permission: PublishError, and nothing is stored either."""
        self.store.execute_command("ACL", "SETUSER", "nopub", "on", ">pw", "~*", "+@all",
                                   "resetchannels")
        address = dataclasses.replace(self.redis.address, username="nopub", password="pw")
        restricted = redis.Redis.from_url(address.url)
        self.addCleanup(restricted.close)
        with self.assertRaises(PublishError):
            RedisPublisher(facility="foobar", broadcast=True,
                           connection=restricted).publish_message("secret", expire=60)
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))


class FetchTests(DjangoRedisTestCase):
    """fetch_message reads what is stored for the request's own audiences."""

    def setUp(self):
        super().setUp()
        self.john = make_user("john", ["chatusers"])
        self.request = make_request(self.john)
        self.key = self.request.session.session_key
        self.publisher = RedisPublisher(facility="foobar")

    def _store(self, **audience):
        text = "/".join(f"{k}" for k in sorted(audience))
        RedisPublisher(facility="foobar", **audience).publish_message(text)
        return text.encode()

    def test_eachAudienceGivesItsStoredMessage(self):
        """broadcast, user, group and session each read their own key."""
        stored = {
            "broadcast": self._store(broadcast=True),
            "user": self._store(users=["john"]),
            "group": self._store(groups=["chatusers"]),
            "session": self._store(sessions=[self.key]),
        }
        for audience, value in stored.items():
            message = self.publisher.fetch_message(self.request, "foobar", audience)
            self.assertEqual(message, value)
            self.assertIsInstance(message, RedisMessage)

    def test_anyPrefersSessionThenUserThenGroupThenBroadcast(self):
        """'any' gives the first stored of session, user, groups, broadcast."""
        fetch = lambda: self.publisher.fetch_message(self.request, "foobar")  # noqa: E731
        self.assertIsNone(fetch())
        self.assertEqual((self._store(broadcast=True), fetch()), (b"broadcast", b"broadcast"))
        self.assertEqual(self._store(groups=["chatusers"]), fetch())
        self.assertEqual(self._store(users=["john"]), fetch())
        self.assertEqual(self._store(sessions=[self.key]), fetch())

    def test_anonymousSeesNoUserOrGroupMessage(self):
        """An anonymous request reads its session and broadcast, never a user or group."""
        self._store(users=["john"])
        self._store(groups=["chatusers"])
        anonymous = make_request()
        self.assertIsNone(self.publisher.fetch_message(anonymous, "foobar"))
        self.assertIsNone(self.publisher.fetch_message(anonymous, "foobar", "user"))
        self.assertIsNone(self.publisher.fetch_message(anonymous, "foobar", "group"))
        self.assertEqual(self._store(broadcast=True),
                         self.publisher.fetch_message(anonymous, "foobar"))

    def test_otherFacilityIsNotRead(self):
        """A message stored under another facility is not fetched."""
        self._store(broadcast=True)
        self.assertIsNone(self.publisher.fetch_message(self.request, "elsewhere"))

    def test_unknownAudienceIsRefused(self):
        """An audience other than the five is a ValueError."""
        with self.assertRaises(ValueError):
            self.publisher.fetch_message(self.request, "foobar", "everybody")


class RedisMessageTests(DjangoTestCase):
    """RedisMessage: bytes, and None for what must never be published."""

    def test_strIsUtf8Encoded(self):
        """A str becomes its UTF-8 bytes."""
        message = RedisMessage("Grüß dich")
        self.assertIsInstance(message, bytes)
        self.assertEqual(message, "Grüß dich".encode())

    def test_bytesAreKept(self):
        """Bytes (and bytearrays) are kept as they are; a RedisMessage stays itself."""
        message = RedisMessage(b"\x00\xff")
        self.assertEqual(message, b"\x00\xff")
        self.assertEqual(RedisMessage(bytearray(b"ab")), b"ab")
        self.assertIs(RedisMessage(message), message)

    def test_heartbeatAndEmptyAreNone(self):
        """The configured heartbeat, as str or bytes, and empty values give None."""
        self.settings(WS4REDIS_HEARTBEAT="--heartbeat--")
        self.assertIsNone(RedisMessage("--heartbeat--"))
        self.assertIsNone(RedisMessage(b"--heartbeat--"))
        self.assertIsNone(RedisMessage(""))
        self.assertIsNone(RedisMessage(b""))
        self.assertEqual(RedisMessage("--heartbeat-- "), b"--heartbeat-- ")

    def test_withoutHeartbeatSettingItIsAMessage(self):
        """Without HEARTBEAT, '--heartbeat--' is an ordinary message."""
        self.assertEqual(RedisMessage("--heartbeat--"), b"--heartbeat--")

    def test_pubsubReplyGivesItsData(self):
        """A pub/sub reply [b'message', channel, data] gives its data, as in ws4redis."""
        self.assertEqual(RedisMessage([b"message", b"chan", b"data"]), b"data")
        self.assertIsNone(RedisMessage([b"subscribe", b"chan", 1]))

    def test_otherTypesAreRefused(self):
        """Numbers and other objects are a TypeError, not a silent None."""
        for value in (5, 1.5, object()):
            with self.assertRaises(TypeError):
                RedisMessage(value)


class HeartbeatTests(DjangoRedisTestCase):
    """The heartbeat is never published nor stored."""

    def test_heartbeatIsNeverPublished(self):
        """publish_message of the heartbeat (or of nothing) sends nothing and returns 0."""
        self.settings(WS4TX_HEARTBEAT="--heartbeat--")
        listener = self.listen("ws4tx:broadcast:foobar")
        publisher = RedisPublisher(facility="foobar", broadcast=True)
        self.assertEqual(publisher.publish_message("--heartbeat--"), 0)
        self.assertEqual(publisher.publish_message(RedisMessage("--heartbeat--")), 0)
        self.assertEqual(publisher.publish_message(""), 0)
        self.assertEqual(api.publish("foobar", "--heartbeat--", broadcast=True), 0)
        self.assertEqual(listener.received(), [])
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))


class EmitTests(DjangoRedisTestCase):
    """Events are published as envelopes."""

    def test_emitPublishesAValidEnvelope(self):
        """RedisPublisher.emit and api.emit publish an event envelope, not stored."""
        listener = self.listen("ws4tx:group:chatusers:chat")
        RedisPublisher(facility="chat", groups=["chatusers"]).emit("said", {"text": "hé"})
        api.emit("chat", "joined", ["mary"], groups=["chatusers"])
        got = [envelope.decode(payload) for _, payload in listener.received()]
        self.assertEqual(got, [envelope.Event("said", {"text": "hé"}),
                               envelope.Event("joined", ["mary"])])
        self.assertIsNone(self.store.get("ws4tx:group:chatusers:chat"))

    def test_emitWithExpireStoresTheEnvelope(self):
        """emit(..., expire=N) stores the envelope for replay."""
        api.emit("chat", "state", 1, broadcast=True, expire=30)
        self.assertEqual(envelope.decode(self.store.get("ws4tx:broadcast:chat")),
                         envelope.Event("state", 1))

    def test_badEventsAreRefused(self):
        """Empty names, the server's ws4tx.* names and non-JSON data are refused."""
        publisher = RedisPublisher(facility="chat", broadcast=True)
        for name in ("", "ws4tx.resumed", None):
            with self.assertRaises(ValueError):
                publisher.emit(name)
        with self.assertRaises(TypeError):
            api.emit("chat", "x", object(), broadcast=True)


class ApiTests(DjangoRedisTestCase):
    """ws4tx.api.publish and emit, and publishing after the commit."""

    def test_publishReachesTheAudience(self):
        """api.publish publishes and returns the number of subscribers."""
        listener = self.listen("ws4tx:user:john:foobar")
        request = make_request(make_user("john"))
        self.assertEqual(api.publish("foobar", "hi", users=[SELF], request=request), 1)
        self.assertEqual(listener.received(), [("ws4tx:user:john:foobar", b"hi")])

    def test_publishWithoutAudienceIsRefused(self):
        """A publish with no audience at all is a mistake, not a silent no-op."""
        with self.assertRaises(ValueError):
            api.publish("foobar", "lost")

    def test_onCommitPublishesOnlyAfterTheCommit(self):
        """on_commit=True holds the message until the transaction commits."""
        from django.db import transaction

        listener = self.listen("ws4tx:broadcast:foobar")
        with transaction.atomic():
            make_user("john")
            self.assertIsNone(api.publish("foobar", "saved", broadcast=True, on_commit=True))
            self.assertIsNone(api.emit("foobar", "ev", broadcast=True, on_commit=True))
            self.assertEqual(listener.received(), [])
            self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))
        got = listener.received()
        self.assertEqual(got[0], ("ws4tx:broadcast:foobar", b"saved"))
        self.assertEqual(envelope.decode(got[1][1]), envelope.Event("ev"))
        self.assertEqual(len(got), 2)

    def test_onCommitRollbackPublishesNothing(self):
        """A rolled-back transaction publishes nothing."""
        from django.db import transaction

        listener = self.listen("ws4tx:broadcast:foobar")
        with self.assertRaises(ZeroDivisionError), transaction.atomic():
            api.publish("foobar", "never", broadcast=True, on_commit=True)
            raise ZeroDivisionError("the transaction fails")
        self.assertEqual(listener.received(), [])
        self.assertIsNone(self.store.get("ws4tx:broadcast:foobar"))

    def test_onCommitOutsideATransactionPublishesAtOnce(self):
        """Without a transaction, on_commit=True publishes immediately."""
        listener = self.listen("ws4tx:broadcast:foobar")
        api.publish("foobar", "now", broadcast=True, on_commit=True)
        self.assertEqual(listener.received(), [("ws4tx:broadcast:foobar", b"now")])

    def test_apiExportsPublishError(self):
        """ws4tx.api.PublishError is redis_store's, a redis-py ConnectionError."""
        import redis

        self.assertIs(api.PublishError, PublishError)
        self.assertTrue(issubclass(PublishError, redis.exceptions.ConnectionError))


class OutageTests(DjangoRedisTestCase):
    """Publishing while Redis is down fails fast with PublishError, naming Redis."""

    redis_password = "s3cret"

    def test_publishToAStoppedRedisRaisesPublishError(self):
        """A stopped Redis gives PublishError with the address, password masked."""
        self.settings(WS4TX_PUBLISH_TIMEOUT=0.5)
        publisher = RedisPublisher(facility="foobar", broadcast=True)
        publisher.publish_message("up")
        self.redis.stop()
        started = time.monotonic()
        with self.assertRaises(PublishError) as caught:
            publisher.publish_message("down")
        self.assertLess(time.monotonic() - started, 5)
        text = str(caught.exception)
        self.assertIn(self.redis.address.safe_url, text)
        self.assertIn(f"127.0.0.1:{self.redis.port}/0", text)
        self.assertNotIn("s3cret", text)
        with self.assertRaises(PublishError):
            publisher.fetch_message(make_request(), "foobar")

    def test_publishToARedisThatNeverAnswersIsBounded(self):
        """A server that accepts but never answers gives PublishError after the timeout."""
        from ws4tx import _sync_redis

        mute = socket.socket()
        self.addCleanup(mute.close)
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        _sync_redis.use_url(f"redis://127.0.0.1:{mute.getsockname()[1]}/0")
        self.settings(WS4TX_PUBLISH_TIMEOUT=0.2)
        started = time.monotonic()
        with self.assertRaises(PublishError):
            api.publish("foobar", "x", broadcast=True)
        self.assertLess(time.monotonic() - started, 5)

    def test_publishAfterARedisRestartSucceeds(self):
        """A connection broken by a Redis restart is replaced without an error."""
        publisher = RedisPublisher(facility="foobar", broadcast=True)
        publisher.publish_message("before")
        self.redis.stop()
        self.redis.start()
        self.store.close()
        publisher.publish_message("after")
        self.assertEqual(self.store.get("ws4tx:broadcast:foobar"), b"after")
