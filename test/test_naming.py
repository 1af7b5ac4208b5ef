"""The pure modules both halves share: naming and flags, settings resolution, Redis
addresses and the event envelope."""

from __future__ import annotations

import json
from types import SimpleNamespace

from hypothesis import given, settings as hypothesis_settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope, naming, redis_address, schema
from ws4tx.naming import Flags, Identity, parse_flags
from ws4tx.redis_address import InvalidRedisAddress, RedisAddress


class ChannelNameTests(SynchronousTestCase):
    """Channel names are ws4redis's, with an optional prefix."""

    def test_everyAudienceWithAPrefix(self):
        """prefix:broadcast:f, prefix:user:NAME:f, prefix:group:NAME:f, prefix:session:KEY:f."""
        self.assertEqual(naming.broadcast_channel("ws4tx", "f"), "ws4tx:broadcast:f")
        self.assertEqual(naming.channel("ws4tx", naming.BROADCAST, "f"), "ws4tx:broadcast:f")
        self.assertEqual(naming.channel("p", naming.USER, "f", "john"), "p:user:john:f")
        self.assertEqual(naming.channel("p", naming.GROUP, "f", "staff"), "p:group:staff:f")
        self.assertEqual(naming.channel("p", naming.SESSION, "f", "k1"), "p:session:k1:f")

    def test_everyAudienceWithoutAPrefix(self):
        """None or "" as prefix gives ws4redis's unprefixed names."""
        for prefix in (None, ""):
            self.assertEqual(naming.broadcast_channel(prefix, "f"), "broadcast:f")
            self.assertEqual(naming.channel(prefix, naming.USER, "f", "u"), "user:u:f")
            self.assertEqual(naming.channel(prefix, naming.GROUP, "f", "g"), "group:g:f")
            self.assertEqual(naming.channel(prefix, naming.SESSION, "f", "s"), "session:s:f")

    def test_namedAudiencesNeedANameAndAudiencesAreKnown(self):
        """A user/group/session channel without a name, or an unknown audience, is refused."""
        for audience in (naming.USER, naming.GROUP, naming.SESSION):
            with self.assertRaises(ValueError):
                naming.channel("p", audience, "f")
        with self.assertRaises(ValueError):
            naming.channel("p", "everybody", "f", "x")

    def test_identityNamesAreItsOwnOnly(self):
        """An identity names itself; an anonymous one has no user and no groups."""
        john = Identity("john", frozenset({"b", "a"}), "k")
        self.assertEqual(john.names(naming.USER), ("john",))
        self.assertEqual(john.names(naming.GROUP), ("a", "b"))
        self.assertEqual(john.names(naming.SESSION), ("k",))
        anonymous = Identity(None, frozenset({"a"}), "k")
        self.assertEqual(anonymous.names(naming.USER), ())
        self.assertEqual(anonymous.names(naming.GROUP), ())
        self.assertEqual(naming.ANONYMOUS.names(naming.SESSION), ())

    def test_audienceChannelsOfAnIdentity(self):
        """audience_channels lists the identity's channels of the given audiences."""
        john = Identity("john", frozenset({"g"}), "k")
        self.assertEqual(
            naming.audience_channels("p", "f", naming.AUDIENCES, john),
            ["p:broadcast:f", "p:user:john:f", "p:group:g:f", "p:session:k:f"])
        self.assertEqual(naming.audience_channels("p", "f", [naming.USER, naming.GROUP],
                                                  naming.ANONYMOUS), [])

    def test_channelsForAnAudienceByName(self):
        """channels_for lists broadcast, then each user, group and session, each once."""
        self.assertEqual(
            naming.channels_for("p", "f", broadcast=True, users=["u", "v"], groups=["g"],
                                sessions=["k", "k"]),
            ["p:broadcast:f", "p:user:u:f", "p:user:v:f", "p:group:g:f", "p:session:k:f"])
        self.assertEqual(naming.channels_for(None, "f", sessions=iter(["k"])), ["session:k:f"])
        self.assertEqual(naming.channels_for("p", "f"), [])


class SessionChannelIdTests(SynchronousTestCase):
    """A session is named in channels by a keyed one-way id, never by its key."""

    def test_idIsAKeyedHmacOf128Bits(self):
        """The id is 32 hex digits of HMAC-SHA256 (secret, purpose, key): the same for the
        same inputs, different for another key or another secret, and never the key."""
        import hashlib
        import hmac

        made = naming.session_channel_id("secret", "abc123")
        self.assertRegex(made, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(made, naming.session_channel_id(b"secret", "abc123"))
        self.assertEqual(made, hmac.new(b"secret", b"ws4tx.session-channel.v1\0abc123",
                                        hashlib.sha256).hexdigest()[:32])
        self.assertNotEqual(made, naming.session_channel_id("secret", "abc124"))
        self.assertNotEqual(made, naming.session_channel_id("other", "abc123"))
        self.assertNotIn("abc123", made)

    def test_emptyKeyOrSecretIsRefused(self):
        """No id without a key and a secret (an empty secret would make ids public)."""
        for secret, key in (("s", ""), ("", "k"), ("s", None)):
            with self.assertRaises(ValueError):
                naming.session_channel_id(secret, key)  # type: ignore[arg-type]


class FacilityTests(SynchronousTestCase):
    """Facility names are checked."""

    def test_validFacilitiesAreKept(self):
        """Letters, digits and _ . ~ / - are accepted."""
        for facility in ("foobar", "a", "_x", "9", "chat/room-1.v2~x"):
            self.assertEqual(naming.check_facility(facility), facility)

    def test_colonAndOtherCharactersAreRefused(self):
        """':' (it would reach another audience's names), spaces, odd starts are refused."""
        for facility in ("a:b", ":", "a b", "", "-a", ".a", "/a", "a\n", "é", "a\x00"):
            with self.assertRaises(naming.InvalidFacility):
                naming.check_facility(facility)

    def test_lengthIsBounded(self):
        """Facilities longer than the maximum are refused."""
        naming.check_facility("a" * naming.DEFAULT_MAX_FACILITY_LENGTH)
        with self.assertRaises(naming.InvalidFacility):
            naming.check_facility("a" * (naming.DEFAULT_MAX_FACILITY_LENGTH + 1))
        with self.assertRaises(naming.InvalidFacility):
            naming.check_facility("abcd", max_length=3)


class FlagTests(SynchronousTestCase):
    """ws4redis URL flags."""

    def test_flagsInAnyCaseAndOrder(self):
        """Flags are case-insensitive and order-free."""
        flags = parse_flags("Publish-User&SUBSCRIBE-broadcast&subscribe-group&ECHO")
        self.assertEqual(flags, Flags(frozenset({"broadcast", "group"}),
                                      frozenset({"user"}), True))
        self.assertEqual(flags, parse_flags("echo&subscribe-group&publish-user&"
                                            "subscribe-broadcast"))

    def test_sameFlagsAreOneObject(self):
        """Every URL with the same flags, in whatever order and case, gets one Flags
        object (which idle connections keep: one each would cost about 500 bytes)."""
        first = parse_flags("subscribe-broadcast&publish-user")
        self.assertIs(first, parse_flags("PUBLISH-user&subscribe-broadcast&x=1"))
        self.assertIsNot(first, parse_flags("subscribe-broadcast&publish-user&echo"))

    def test_unknownFlagsAreIgnored(self):
        """Unknown flags and malformed items change nothing."""
        self.assertEqual(parse_flags("subscribe-everybody&publish&foo&&=&subscribe-"), Flags())
        self.assertEqual(parse_flags(""), Flags())

    def test_flagValuesAreIgnored(self):
        """A flag may carry a value, which is ignored (echo=0 is still echo)."""
        self.assertEqual(parse_flags("subscribe-session=1&echo=0"),
                         Flags(frozenset({"session"}), frozenset(), True))

    def test_flagNamesRoundTrip(self):
        """flag_names gives ws4redis's names, which parse back to the same flags."""
        flags = parse_flags("publish-session&subscribe-user&echo&subscribe-broadcast")
        names = naming.flag_names(flags)
        self.assertEqual(names, ["subscribe-broadcast", "subscribe-user", "publish-session",
                                 "echo"])
        self.assertEqual(parse_flags("&".join(names)), flags)


class SettingsTests(SynchronousTestCase):
    """Settings are read as WS4TX_ then WS4REDIS_; the Redis address from a URL, a
    CONNECTION dictionary, the environment or the default."""

    def test_ws4txNameWinsOverWs4redisName(self):
        """WS4TX_X is used before WS4REDIS_X, which is used before the default."""
        both = SimpleNamespace(WS4TX_EXPIRE=1, WS4REDIS_EXPIRE=2)
        self.assertEqual(schema.lookup(both, "EXPIRE", 3), 1)
        self.assertEqual(schema.lookup(SimpleNamespace(WS4REDIS_EXPIRE=2), "EXPIRE", 3), 2)
        self.assertEqual(schema.lookup(SimpleNamespace(), "EXPIRE", 3), 3)
        self.assertEqual(schema.lookup(SimpleNamespace(WS4TX_PREFIX=""), "PREFIX", "x"), "")

    def test_urlSettingComesFirst(self):
        """The WS4TX_REDIS_URL setting wins over CONNECTION and the environment."""
        settings = SimpleNamespace(WS4TX_REDIS_URL="redis://a:1/2",
                                   WS4REDIS_CONNECTION={"host": "b"})
        found = redis_address.from_settings(settings, {"WS4TX_REDIS_URL": "redis://c/0"})
        self.assertEqual((found.host, found.port, found.db), ("a", 1, 2))

    def test_connectionDictionaryComesNext(self):
        """WS4TX_CONNECTION, else WS4REDIS_CONNECTION, wins over the environment."""
        env = {"WS4TX_REDIS_URL": "redis://c/0"}
        settings = SimpleNamespace(WS4TX_CONNECTION={"host": "t", "port": 7},
                                   WS4REDIS_CONNECTION={"host": "r"})
        self.assertEqual(redis_address.from_settings(settings, env),
                         RedisAddress(host="t", port=7))
        settings = SimpleNamespace(WS4REDIS_CONNECTION={
            "host": "r", "db": 4, "password": "pw", "unix_socket_path": None})
        self.assertEqual(redis_address.from_settings(settings, env),
                         RedisAddress(host="r", db=4, password="pw"))

    def test_environmentThenDefault(self):
        """The WS4TX_REDIS_URL environment variable, else redis://localhost:6379/0."""
        self.assertEqual(redis_address.from_settings(SimpleNamespace(),
                                                 {"WS4TX_REDIS_URL": "redis://e:9/1"}),
                         RedisAddress(host="e", port=9, db=1))
        self.assertEqual(redis_address.from_settings(SimpleNamespace(), {}), RedisAddress())

    def test_badValuesNameWhereTheyCameFrom(self):
        """A bad URL setting, CONNECTION dictionary or environment variable is named."""
        cases = [
            (SimpleNamespace(WS4TX_REDIS_URL="http://x"), {}, "setting WS4TX_REDIS_URL"),
            (SimpleNamespace(WS4REDIS_CONNECTION={"hots": "x"}), {}, "CONNECTION"),
            (SimpleNamespace(WS4TX_CONNECTION={"port": "many"}), {}, "CONNECTION"),
            (SimpleNamespace(), {"WS4TX_REDIS_URL": "redis://x/-1"}, "environment variable"),
        ]
        for settings, env, named in cases:
            with self.assertRaises(InvalidRedisAddress) as caught:
                redis_address.from_settings(settings, env)
            self.assertIn(named, str(caught.exception))


class RedisAddressTests(SynchronousTestCase):
    """Redis URLs parse to addresses and back."""

    def _roundTrip(self, url: str) -> RedisAddress:
        address = RedisAddress.from_url(url)
        self.assertEqual(RedisAddress.from_url(address.url), address)
        return address

    def test_redisUrl(self):
        """redis://host:port/db, with defaults for the missing parts."""
        self.assertEqual(self._roundTrip("redis://example.com:6380/3"),
                         RedisAddress(host="example.com", port=6380, db=3))
        self.assertEqual(self._roundTrip("redis://example.com"), RedisAddress("example.com"))
        self.assertEqual(RedisAddress().url, "redis://localhost:6379/0")

    def test_tlsUrl(self):
        """rediss:// is TLS."""
        address = self._roundTrip("rediss://example.com/1")
        self.assertTrue(address.ssl)
        self.assertTrue(address.url.startswith("rediss://"))

    def test_unixUrl(self):
        """unix:///path?db=N is a Unix socket."""
        address = self._roundTrip("unix:///run/redis/redis.sock?db=2")
        self.assertEqual((address.unix_socket_path, address.db), ("/run/redis/redis.sock", 2))
        with self.assertRaises(InvalidRedisAddress):
            RedisAddress.from_url("unix://")

    def test_credentialsRoundTrip(self):
        """User names and passwords with URL-special characters survive a round trip."""
        address = self._roundTrip("redis://us%40er:p%3Aa%2Fss%40@h:1/0")
        self.assertEqual((address.username, address.password), ("us@er", "p:a/ss@"))
        self.assertEqual(self._roundTrip("redis://:only@h/0").password, "only")

    def test_ipv6Host(self):
        """An IPv6 host is bracketed in the URL."""
        address = self._roundTrip("redis://[::1]:7000/0")
        self.assertEqual((address.host, address.port), ("::1", 7000))
        self.assertIn("[::1]:7000", address.url)

    def test_badUrlsAreRefused(self):
        """Unknown schemes, bad ports and bad database numbers are InvalidRedisAddress."""
        for url in ("http://h/0", "h:6379", "redis://h:port/0", "redis://h:99999/0",
                    "redis://h/x", "redis://h/-1", "unix:///s?db=x"):
            with self.assertRaises(InvalidRedisAddress, msg=url):
                RedisAddress.from_url(url)

    def test_safeUrlMasksThePassword(self):
        """safe_url never contains the password."""
        address = RedisAddress.from_url("redis://user:hunter2@h:1/0")
        self.assertNotIn("hunter2", address.safe_url)
        self.assertIn("hunter2", address.url)
        self.assertIn("user", address.safe_url)
        self.assertEqual(RedisAddress("h").safe_url, RedisAddress("h").url)

    def test_fromConnectionDictionary(self):
        """A ws4redis CONNECTION dictionary, with unknown keys refused."""
        self.assertEqual(
            RedisAddress.from_connection({"host": "h", "port": "7", "db": 2, "ssl": True}),
            RedisAddress(host="h", port=7, db=2, ssl=True))
        self.assertEqual(
            RedisAddress.from_connection({"unix_socket_path": "/s"}).unix_socket_path, "/s")
        with self.assertRaises(InvalidRedisAddress):
            RedisAddress.from_connection({"hostname": "h"})


class SentinelUrlTests(SynchronousTestCase):
    """redis+sentinel:// URLs: the Sentinels, the master's name, the database, both
    passwords; every mistake named."""

    def test_parsingTable(self):
        """Each accepted form gives these fields and survives a round trip."""
        S = ("s1", 26379)
        table = [
            ("redis+sentinel://s1/main", dict(sentinels=(S,), master_name="main")),
            ("redis+sentinel://s1:26380,s2,[::1]:5/main?db=3",
             dict(sentinels=(("s1", 26380), ("s2", 26379), ("::1", 5)), master_name="main",
                  db=3)),
            ("redis+sentinel://:pw@s1/main/2", dict(sentinels=(S,), master_name="main",
                                                     db=2, password="pw")),
            ("redis+sentinel://app:p%40w@s1/main?sentinel_password=s%26p",
             dict(sentinels=(S,), master_name="main", username="app", password="p@w",
                  sentinel_password="s&p")),
            ("rediss+sentinel://s1/my%20master", dict(sentinels=(S,), ssl=True,
                                                      master_name="my master")),
            ("REDIS+SENTINEL://s1/main", dict(sentinels=(S,), master_name="main")),
        ]
        for url, fields in table:
            address = RedisAddress.from_url(url)
            self.assertEqual(address, RedisAddress(**fields), url)
            self.assertTrue(address.is_sentinel)
            self.assertEqual(RedisAddress.from_url(address.url), address, url)
        self.assertFalse(RedisAddress.from_url("redis://h/0").is_sentinel)

    def test_mistakesAreNamed(self):
        """Each bad URL is refused with a message that says what is wrong."""
        table = [
            ("redis+sentinel:///main", "Sentinels' addresses"),
            ("redis+sentinel://s1", "master's name"),
            ("redis+sentinel://s1/", "master's name"),
            ("redis+sentinel://s1,,s2/main", "is empty"),
            ("redis+sentinel://s1:x/main", "'s1:x' is not a number"),
            ("redis+sentinel://s1:0/main", "out of range"),
            ("redis+sentinel://s1:70000/main", "out of range"),
            ("redis+sentinel://[::1/main", "IPv6"),
            ("redis+sentinel://s1/main?db=x", "not an integer"),
            ("redis+sentinel://s1/main/1?db=2", "not both"),
            ("redis+sentinel://s1/main?sentinel_pasword=x", "sentinel_pasword"),
            ("sentinel://s1/main", "redis+sentinel://"),
        ]
        for url, named in table:
            with self.assertRaises(InvalidRedisAddress, msg=url) as caught:
                RedisAddress.from_url(url)
            self.assertIn(named, str(caught.exception), url)

    def test_safeUrlMasksBothPasswords(self):
        """Neither the master's nor the Sentinels' password is in safe_url."""
        address = RedisAddress.from_url(
            "redis+sentinel://u:hunter2@s1/main?sentinel_password=swordfish")
        for secret in ("hunter2", "swordfish"):
            self.assertNotIn(secret, address.safe_url)
            self.assertIn(secret, address.url)

    def test_fromSettingsAndEnvironment(self):
        """The setting and the environment variable take the Sentinel form too; a bad one
        names where it came from."""
        url = "redis+sentinel://s1,s2/main?db=1"
        self.assertEqual(
            redis_address.from_settings(SimpleNamespace(WS4TX_REDIS_URL=url), {}).sentinels,
            (("s1", 26379), ("s2", 26379)))
        self.assertEqual(
            redis_address.from_settings(SimpleNamespace(), {"WS4TX_REDIS_URL": url}).db, 1)
        with self.assertRaises(InvalidRedisAddress) as caught:
            redis_address.from_settings(SimpleNamespace(), {"WS4TX_REDIS_URL": "redis+sentinel://s1"})
        self.assertIn("environment variable WS4TX_REDIS_URL", str(caught.exception))


class EnvelopeTests(SynchronousTestCase):
    """The JSON envelope of events."""

    def test_eventRoundTrip(self):
        """An event, with or without an id, decodes to what was encoded."""
        for event in (envelope.Event("chat", {"text": "hé"}), envelope.Event("x"),
                      envelope.Event("n", [1, None], id=7)):
            self.assertEqual(envelope.decode(envelope.encode_event(
                event.event, event.data, event.id)), event)

    def test_ackRoundTrip(self):
        """An ack with data or an error decodes to what was encoded."""
        self.assertEqual(envelope.decode(envelope.encode_ack(3, {"ok": 1})),
                         envelope.Ack(3, {"ok": 1}))
        self.assertEqual(envelope.decode(envelope.encode_ack(4, error="no")),
                         envelope.Ack(4, None, "no"))

    def test_ws4txIsTheFirstKey(self):
        """The encoded envelope starts with {"ws4tx": so that a cheap test finds it."""
        self.assertTrue(envelope.encode_event("e").startswith('{"ws4tx":"event"'))
        self.assertTrue(envelope.is_envelope(envelope.encode_event("e").encode()))

    def test_rawPayloadsAreNotEnvelopes(self):
        """Frames that do not start with {"ws4tx": are raw, even JSON ones."""
        for raw in ("hello", '{"event":"x","ws4tx":"event"}', "[1]", "", b"\xff\x00",
                    '{ "ws4tx":"event","event":"x"}'):
            self.assertIsNone(envelope.decode(raw))

    def test_badEnvelopesAreInvalid(self):
        """A frame that claims to be an envelope but is not valid is InvalidEnvelope."""
        for bad in ('{"ws4tx":', '{"ws4tx":"other"}', '{"ws4tx":"event"}',
                    '{"ws4tx":"event","event":""}', '{"ws4tx":"event","event":"x","id":-1}',
                    '{"ws4tx":"event","event":"x","id":1.5}',
                    '{"ws4tx":"event","event":"x","id":true}',
                    '{"ws4tx":"event","event":"x","id":9007199254740992}',
                    '{"ws4tx":"ack"}', '{"ws4tx":"ack","id":1,"error":5}',
                    b'{"ws4tx":"event","event":"\xff"}'):
            with self.assertRaises(envelope.InvalidEnvelope, msg=bad):
                envelope.decode(bad)

    def test_deeplyNestedEnvelopeIsInvalid(self):
        """A deeply nested frame is InvalidEnvelope, not a RecursionError."""
        with self.assertRaises(envelope.InvalidEnvelope):
            envelope.decode('{"ws4tx":"event","event":"x","data":' + "[" * 100000)


def _first_key_is_ws4tx(text: str) -> bool:
    """Whether ``text`` is a JSON object whose first key is "ws4tx"."""
    try:
        pairs = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):
        return False
    return isinstance(pairs, list) and bool(pairs) and pairs[0][0] == "ws4tx"


_json = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


class EnvelopePropertyTests(SynchronousTestCase):
    """decode never raises anything but InvalidEnvelope and never misreads a raw payload."""

    def _check(self, text: str) -> None:
        try:
            found = envelope.decode(text)
        except envelope.InvalidEnvelope:
            self.assertTrue(envelope.is_envelope(text))
            return
        if not envelope.is_envelope(text):
            self.assertIsNone(found)
        if found is not None:
            self.assertTrue(_first_key_is_ws4tx(text), text)

    @hypothesis_settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_arbitraryText(self, text):
        """Any text is a raw payload (None), an envelope, or InvalidEnvelope."""
        self._check(text)

    @hypothesis_settings(max_examples=300, deadline=None)
    @given(st.text(max_size=60))
    def test_textAfterTheMark(self, tail):
        """Text that starts like an envelope is an envelope or InvalidEnvelope."""
        self._check('{"ws4tx":' + tail)

    @hypothesis_settings(max_examples=300, deadline=None)
    @given(st.sampled_from(["event", "ack", "other", 1, None]),
           st.dictionaries(st.sampled_from(["event", "id", "data", "error", "x"]), _json,
                           max_size=5))
    def test_jsonObjectsThatClaimToBeEnvelopes(self, kind, rest):
        """JSON objects with ws4tx first are decoded or refused, never crash."""
        self._check(json.dumps({"ws4tx": kind, **rest}))

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(st.text(min_size=1), _json, st.none() | st.integers(0, 2**53 - 1))
    def test_encodedEventsRoundTrip(self, name, data, msg_id):
        """Every event encode_event makes decodes to itself."""
        self.assertEqual(envelope.decode(envelope.encode_event(name, data, msg_id)),
                         envelope.Event(name, data, msg_id))

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(st.text().filter(lambda t: not envelope.is_envelope(t)))
    def test_rawTextIsDeliveredUnread(self, text):
        """Text that does not start with the mark is a raw payload: decode gives None."""
        self.assertIsNone(envelope.decode(text))
        self.assertIsNone(envelope.decode(text.encode("utf-8")))


class ServerVoiceTests(SynchronousTestCase):
    """What ws4tx.js would take for the server's own words is recognised as such."""

    def test_browserWhiteSpaceBeforeTheMark(self):
        """The mark counts after any white space a browser's trimStart() removes."""
        for space in ("", " \t\r\n", "\u00a0", "\ufeff", "\u2028\u3000"):
            text = space + envelope.encode_ack(1)
            self.assertTrue(envelope.is_envelope(text), repr(space))
            self.assertTrue(envelope.is_envelope(text.encode("utf-8")), repr(space))
        self.assertFalse(envelope.is_envelope("x" + envelope.encode_ack(1)))

    def test_serverVoice(self):
        """Acks, ws4tx.* events (however spelled) and unparsable envelopes are the
        server's; application events and raw payloads are not."""
        table = [
            (envelope.encode_ack(1, "x"), "an acknowledgement"),
            (envelope.encode_event("ws4tx.error"), "the server event 'ws4tx.error'"),
            ('{"ws4tx" :"ack","id":1}', None),  # not the mark: a browser reads it raw
            ('{"ws4tx":"event","event":"a","event":"ws4tx.dropped"}',
             "the server event 'ws4tx.dropped'"),
            ('{"ws4tx":"ack"' + "," * 3, "an envelope that is not valid JSON"),
            (envelope.encode_event("chat", {"ws4tx": "ack"}), None),
            ("hello", None),
            ("\u00a0" + envelope.encode_ack(2), "an envelope that is not valid JSON"),
        ]
        for text, expected in table:
            self.assertEqual(envelope.server_voice(text.encode("utf-8")), expected, text)

    def test_checkEventName(self):
        """Applications may not use empty names or the server's ws4tx.* names."""
        self.assertEqual(envelope.check_event_name("chat"), "chat")
        for bad in ("", "ws4tx.error", None):
            with self.assertRaises(ValueError):
                envelope.check_event_name(bad)

    def test_jsonABrowserCannotRead(self):
        """NaN and Infinity are refused on the way out as on the way in."""
        for data in (float("nan"), float("inf"), [float("-inf")]):
            with self.assertRaises(ValueError):
                envelope.encode_event("x", data)
            with self.assertRaises(envelope.InvalidEnvelope):
                envelope.decode('{"ws4tx":"event","event":"x","data":'
                                + str(data).replace("nan", "NaN").replace("inf", "Infinity")
                                + "}")
