"""The rest of the Django side: the shared redis-py client, the context processor, connection
tokens and their template tag, and the rule that none of it imports Twisted."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ws4tx import _sync_redis, naming
from ws4tx.redis_address import InvalidRedisAddress

from test._djangoredis import DjangoRedisTestCase, DjangoTestCase, make_request, make_user

#: The test settings' SECRET_KEY, which names session channels.
SECRET = "ws4tx-test-suite-not-secret"


def session_id(key: str) -> str:
    """What an identity and a token carry for the session ``key``: its derived id."""
    return naming.session_channel_id(SECRET, key)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DJANGO_SIDE_MODULES = (
    "ws4tx", "ws4tx._django_settings", "ws4tx._audience", "ws4tx._sync_redis",
    "ws4tx.redis_store", "ws4tx.publisher", "ws4tx.api", "ws4tx.context_processors",
    "ws4tx.apps", "ws4tx.tokens", "ws4tx.templatetags", "ws4tx.templatetags.ws4tx",
    "ws4tx.naming", "ws4tx.schema", "ws4tx.redis_address", "ws4tx.envelope", "test._django",
    "ws4tx.control", "ws4tx.closecodes", "ws4tx._live", "ws4tx._ops", "ws4tx._prepare",
    "ws4tx._async_api", "ws4tx._async_redis", "ws4tx._outbox", "ws4tx.models",
    "ws4tx.management.commands.ws4tx_relay",
)


class SyncRedisTests(DjangoRedisTestCase):
    """The process's one client: lazy, from the settings unless use_url says otherwise."""

    def test_useUrlWinsOverTheSettings(self):
        """After use_url, the settings' Redis is ignored."""
        self.settings(WS4TX_REDIS_URL="redis://127.0.0.1:1/0")
        self.assertEqual(_sync_redis.address(), self.redis.address)
        self.assertTrue(_sync_redis.client().ping())

    def test_clientComesFromTheSettingsAfterReset(self):
        """Without use_url the client follows WS4TX_REDIS_URL, then the CONNECTION dict."""
        _sync_redis.reset()
        self.settings(WS4TX_REDIS_URL=self.redis.url)
        self.assertTrue(_sync_redis.client().ping())
        self.settings(WS4TX_REDIS_URL=None, WS4REDIS_CONNECTION={
            "host": "127.0.0.1", "port": self.redis.port, "db": 3,
            "password": self.redis.password})
        self.assertEqual(_sync_redis.address().db, 3)
        self.assertEqual(_sync_redis.client().connection_pool.connection_kwargs["db"], 3)

    def test_clientIsBuiltOnceAndLazily(self):
        """The same client serves every call until reset or a setting changes."""
        first = _sync_redis.client()
        self.assertIs(_sync_redis.client(), first)
        self.settings(WS4TX_PUBLISH_TIMEOUT=2)
        self.assertIsNot(_sync_redis.client(), first)

    def test_timeoutsComeFromPublishTimeout(self):
        """PUBLISH_TIMEOUT bounds connecting and every answer (default 5 s)."""
        kwargs = _sync_redis.client().connection_pool.connection_kwargs
        self.assertEqual((kwargs["socket_timeout"], kwargs["socket_connect_timeout"]), (5, 5))
        self.settings(WS4REDIS_PUBLISH_TIMEOUT=0.75)
        kwargs = _sync_redis.client().connection_pool.connection_kwargs
        self.assertEqual((kwargs["socket_timeout"], kwargs["socket_connect_timeout"]),
                         (0.75, 0.75))

    def test_badSettingsNameTheSetting(self):
        """A bad PUBLISH_TIMEOUT or Redis URL setting names the setting."""
        _sync_redis.reset()
        self.settings(WS4TX_PUBLISH_TIMEOUT=0)
        with self.assertRaises(ImproperlyConfigured) as caught:
            _sync_redis.client()
        self.assertIn("WS4TX_PUBLISH_TIMEOUT", str(caught.exception))
        self.settings(WS4TX_PUBLISH_TIMEOUT=1, WS4TX_REDIS_URL="http://x")
        with self.assertRaises(InvalidRedisAddress) as caught:
            _sync_redis.client()
        self.assertIn("WS4TX_REDIS_URL", str(caught.exception))

    def test_badUseUrlIsRefusedAtOnce(self):
        """use_url refuses a bad URL itself, and keeps the previous one."""
        with self.assertRaises(InvalidRedisAddress):
            _sync_redis.use_url("redis://host:notaport/0")
        self.assertEqual(_sync_redis.address(), self.redis.address)


class ContextProcessorTests(DjangoTestCase):
    """ws4tx.context_processors.default, as ws4redis's."""

    def _context(self, **kwargs: Any) -> dict[str, Any]:
        from ws4tx.context_processors import default

        return default(make_request(session=False, **kwargs))

    def test_plainRequestGivesAWsUri(self):
        """http gives ws:// + host + WEBSOCKET_URL (default /ws/)."""
        self.assertEqual(self._context(host="example.com:8000")["WEBSOCKET_URI"],
                         "ws://example.com:8000/ws/")

    def test_secureRequestGivesAWssUri(self):
        """https gives wss://, and WEBSOCKET_URL is followed."""
        self.settings(WEBSOCKET_URL="/push/")
        self.assertEqual(self._context(secure=True)["WEBSOCKET_URI"],
                         "wss://testserver/push/")

    def test_heartbeatIsAJavascriptLiteralUnderBothNames(self):
        """The heartbeat is a quoted JS string, as WS4TX_HEARTBEAT and WS4REDIS_HEARTBEAT."""
        self.settings(WS4REDIS_HEARTBEAT="--heartbeat--")
        context = self._context()
        self.assertEqual(context["WS4TX_HEARTBEAT"], '"--heartbeat--"')
        self.assertEqual(context["WS4REDIS_HEARTBEAT"], '"--heartbeat--"')

    def test_noHeartbeatIsNull(self):
        """Without HEARTBEAT both names are the literal null."""
        context = self._context()
        self.assertEqual((context["WS4TX_HEARTBEAT"], context["WS4REDIS_HEARTBEAT"]),
                         ("null", "null"))

    def test_heartbeatCannotEndTheScriptElement(self):
        """A heartbeat with </script> stays inside its string literal."""
        import json

        self.settings(WS4TX_HEARTBEAT="</script><b>&")
        literal = self._context()["WS4TX_HEARTBEAT"]
        self.assertNotIn("<", literal)
        self.assertEqual(json.loads(literal), "</script><b>&")

    def test_templatesGetTheValuesUnescaped(self):
        """A template renders the URI and the heartbeat literal as they are."""
        from django.template import engines

        self.settings(WS4REDIS_HEARTBEAT="--heartbeat--")
        template = engines["django"].from_string(
            "{{ WEBSOCKET_URI }}foobar {{ WS4REDIS_HEARTBEAT }}")
        self.assertEqual(template.render(request=make_request(session=False)),
                         'ws://testserver/ws/foobar "--heartbeat--"')


class TokenTests(DjangoTestCase):
    """Signed connection tokens: round trip, expiry, tampering, no database."""

    def _frozen_clock(self, offset: float) -> None:
        """Make django.core.signing see a clock ``offset`` seconds from now."""
        from django.core import signing

        now = time.time()

        class Clock:
            @staticmethod
            def time() -> float:
                return now + offset

        self.patch(signing, "time", Clock)

    def test_roundTripOfAnAuthenticatedRequest(self):
        """A request's user, its groups from the database and its session's channel id
        come back."""
        from ws4tx.tokens import read_token, token_for_request

        request = make_request(make_user("john", ["chatusers", "staff"]))
        identity = read_token(token_for_request(request))
        self.assertEqual(identity, naming.Identity(
            user="john", groups=frozenset({"chatusers", "staff"}),
            session=session_id(request.session.session_key)))

    def test_anonymousRequestGivesItsSessionOnly(self):
        """An anonymous request's token has no user and no groups."""
        from ws4tx.tokens import read_token, token_for_request

        request = make_request()
        self.assertEqual(read_token(token_for_request(request)),
                         naming.Identity(session=session_id(request.session.session_key)))
        self.assertEqual(read_token(token_for_request(make_request(session=False))),
                         naming.ANONYMOUS)

    def test_makeTokenTakesNamesOrObjects(self):
        """make_token takes a user name and group names, or a User (groups from the DB)."""
        from ws4tx.tokens import make_token, read_token

        self.assertEqual(read_token(make_token("mary", ["g"], "k")),
                         naming.Identity("mary", frozenset({"g"}), session_id("k")))
        john = make_user("john", ["chatusers"])
        self.assertEqual(read_token(make_token(john)),
                         naming.Identity("john", frozenset({"chatusers"})))
        with self.assertRaises(ValueError):
            make_token(groups=["chatusers"])

    def test_readingATokenNeedsNoDatabase(self):
        """read_token makes no database query."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from ws4tx.tokens import make_token, read_token

        token = make_token("john", ["chatusers"], "key")
        with CaptureQueriesContext(connection) as queries:
            read_token(token)
        self.assertEqual(len(queries), 0)

    def test_expiredTokenIsRefusedAsExpired(self):
        """A token older than TOKEN_MAX_AGE (default 300 s) is InvalidToken(expired)."""
        from ws4tx.tokens import InvalidToken, make_token, read_token

        self._frozen_clock(-301)
        token = make_token("john")
        self._frozen_clock(0)
        with self.assertRaises(InvalidToken) as caught:
            read_token(token)
        self.assertTrue(caught.exception.expired)
        self.assertIn("expired", str(caught.exception))
        self.assertEqual(read_token(token, max_age=400).user, "john")

    def test_tokenMaxAgeSetting(self):
        """TOKEN_MAX_AGE (WS4TX_ or WS4REDIS_) sets how long a token is valid."""
        from ws4tx.tokens import InvalidToken, make_token, read_token

        self._frozen_clock(-20)
        token = make_token("john")
        self._frozen_clock(0)
        self.assertEqual(read_token(token).user, "john")
        self.settings(WS4REDIS_TOKEN_MAX_AGE=10)
        with self.assertRaises(InvalidToken):
            read_token(token)

    def test_tamperedTokensAreRefusedAsInvalid(self):
        """A changed, truncated, foreign-salted or garbage token is InvalidToken, not
        expired."""
        from django.core import signing

        from ws4tx.tokens import InvalidToken, make_token, read_token

        token = make_token("john")
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        foreign = signing.dumps({"u": "john"}, salt="another", compress=True)
        for bad in (flipped, token[:-5], foreign, "garbage", "", "x" * 5000):
            with self.assertRaises(InvalidToken) as caught:
                read_token(bad)
            self.assertFalse(caught.exception.expired, bad)

    def test_signedButMalformedPayloadIsRefused(self):
        """A validly signed payload of the wrong shape is InvalidToken."""
        from django.core import signing

        from ws4tx.tokens import SALT, InvalidToken, read_token

        for payload in ([1], {"u": 5}, {"g": ["x"]}, {"u": "a", "g": "x"}, {"x": 1},
                        {"s": ""}, {"c": "not-an-id"}, {"c": "a" * 31}):
            with self.assertRaises(InvalidToken):
                read_token(signing.dumps(payload, salt=SALT))

    def test_templateTagPrintsTheRequestsToken(self):
        """{% ws4tx_token %} prints a token of the current request."""
        from django.template import engines

        from ws4tx.tokens import read_token

        request = make_request(make_user("mary", ["chatusers"]))
        template = engines["django"].from_string("{% load ws4tx %}{% ws4tx_token %}")
        token = template.render(request=request)
        self.assertEqual(read_token(token), naming.Identity(
            "mary", frozenset({"chatusers"}), session_id(request.session.session_key)))

    def test_sessionChannelsSettingIsChecked(self):
        """SESSION_CHANNELS is "id" or "key"; anything else names the setting."""
        from ws4tx.tokens import make_token

        self.settings(WS4TX_SESSION_CHANNELS="raw")
        with self.assertRaises(ImproperlyConfigured) as caught:
            make_token("mary", session_key="k")
        self.assertIn("WS4TX_SESSION_CHANNELS", str(caught.exception))

    def test_templateTagWithoutRequestSaysWhy(self):
        """Without a request in the context, the tag names the missing processor."""
        from django.template import Context, Template

        with self.assertRaises(ImproperlyConfigured) as caught:
            Template("{% load ws4tx %}{% ws4tx_token %}").render(Context({}))
        self.assertIn("context_processors.request", str(caught.exception))


class GrantTests(DjangoTestCase):
    """Signed subscribe grants on the Django side: what they say, whom they name, what
    the site's ALLOWED_CHANNELS leaves, expiry by a clock, tampering."""

    def test_aRequestsGrantNamesItsUserSessionAndGroups(self):
        """grant_for_request: the request's user, its session's channel id (never the
        key), the facility, the audiences and the user's groups; read back without the
        database."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from ws4tx import api, grants

        request = make_request(make_user("john", ["chatusers", "staff"]))
        grant = api.grant(request, "notes", ["broadcast", "user", "group", "session"],
                          max_age=60)
        self.assertNotIn(request.session.session_key, grant)
        with CaptureQueriesContext(connection) as queries:
            claim = grants.read_grant(grant)
        self.assertEqual(len(queries), 0)
        self.assertEqual(claim.user, "john")
        self.assertEqual(claim.session, session_id(request.session.session_key))
        self.assertEqual((claim.facility, claim.audiences, claim.groups), (
            "notes", frozenset({"broadcast", "user", "group", "session"}),
            frozenset({"chatusers", "staff"})))
        self.assertLessEqual(abs(claim.expires - (time.time() + 60)), 2)
        narrowed = grants.read_grant(api.grant(request, "notes", ["group"],
                                               groups=["staff"]))
        self.assertEqual(narrowed.groups, frozenset({"staff"}))
        with self.assertRaises(ValueError):
            api.grant(request, "notes", ["group"], groups=["admins"])

    def test_anAnonymousRequestIsGrantedWhatItHasNamesIn(self):
        """An anonymous request gets broadcast (and its session), never user or group;
        nothing left to grant is a ValueError."""
        from ws4tx import grants

        claim = grants.read_grant(grants.grant_for_request(
            make_request(), "notes", ["broadcast", "user", "group"]))
        self.assertEqual((claim.user, claim.audiences), (None, frozenset({"broadcast"})))
        with self.assertRaises(ValueError):
            grants.grant_for_request(make_request(session=False), "notes", ["user"])

    def test_allowedChannelsRunsWhenAGrantIsMade(self):
        """ALLOWED_CHANNELS sees the WebSocket URL of the facility: an audience it drops is
        not granted, its PermissionDenied is raised."""
        from django.core.exceptions import PermissionDenied

        from ws4tx import grants

        self.settings(WS4TX_ALLOWED_CHANNELS=f"{__name__}.broadcast_only_but_secret")
        request = make_request(make_user("john", ["chatusers"]))
        claim = grants.read_grant(grants.grant_for_request(
            request, "news", ["broadcast", "user"]))
        self.assertEqual(claim.audiences, frozenset({"broadcast"}))
        with self.assertRaises(PermissionDenied):
            grants.grant_for_request(request, "secret", ["broadcast"])
        self.assertEqual(request.path, "/")

    def test_expiryIsByTheClockItIsReadWith(self):
        """A grant is valid until max_age seconds after it was made, by the clock it is
        read with, and not a second after."""
        from ws4tx import grants

        grant = grants.make_grant("notes", ["user"], user="john", max_age=30, now=1000.0)
        self.assertEqual(grants.read_grant(grant, now=1029.0).user, "john")
        with self.assertRaises(grants.InvalidGrant) as caught:
            grants.read_grant(grant, now=1030.0)
        self.assertTrue(caught.exception.expired)
        self.assertEqual(caught.exception.reason, "expired")
        self.settings(WS4TX_TOKEN_MAX_AGE=5)
        short = grants.make_grant("notes", ["broadcast"], now=1000.0)
        self.assertEqual(grants.read_grant(short, now=1004.0).audiences,
                         frozenset({"broadcast"}))

    def test_forgedTamperedOrOtherSignaturesAreRefused(self):
        """A grant with a changed payload, one signed with another key, a connection
        token or a resume token: each is a bad signature; garbage is malformed."""
        from django.core import signing

        from ws4tx import _resume, grants, tokens

        grant = grants.make_grant("notes", ["user"], user="john")
        rest = grant.split(":", 1)[1]
        forged_payload = signing.dumps({"u": "mary", "f": "notes", "a": ["user"],
                                        "x": int(time.time()) + 60},
                                       salt=grants.SALT, compress=True).split(":", 1)[0]
        other_key = signing.dumps({"u": "john", "f": "notes", "a": ["user"],
                                   "x": int(time.time()) + 60}, key="not the site's",
                                  salt=grants.SALT)
        resume, _ = _resume.sign(_resume.Claim(naming.Identity("john"), "notes",
                                               naming.Flags(), 0, None))
        for bad in (forged_payload + ":" + rest, other_key, tokens.make_token("john"),
                    resume, grant[:-2] + ("AA" if grant[-2:] != "AA" else "BB")):
            with self.assertRaises(grants.InvalidGrant) as caught:
                grants.read_grant(bad)
            self.assertIn("bad signature", caught.exception.reason)
        for garbage in ("", "x" * (grants.MAX_GRANT_LENGTH + 1)):
            with self.assertRaises(grants.InvalidGrant) as caught:
                grants.read_grant(garbage)
            self.assertIn("malformed", caught.exception.reason)

    def test_aGrantIsReadAsDjangoSigningReadsIt(self):
        """The server checks a grant's signature with each key's HMAC derived once, and
        reads what django.core.signing.loads reads: a compressed payload (many groups),
        a grant signed with a key of SECRET_KEY_FALLBACKS; a rotated SECRET_KEY takes
        effect at once (the old key's grants refused, the new key's read)."""
        from django.core import signing

        from ws4tx import grants

        many = [f"group-{i}" for i in range(40)]
        compressed = grants.make_grant("notes", ["group"], user="john", groups=many)
        self.assertTrue(compressed.startswith("."))
        self.assertEqual(grants.read_grant(compressed).groups, frozenset(many))
        self.assertEqual(signing.loads(compressed, salt=grants.SALT)["g"], sorted(many))
        old = grants.make_grant("notes", ["user"], user="john")
        self.settings(SECRET_KEY="the new key" * 5, SECRET_KEY_FALLBACKS=[])
        with self.assertRaises(grants.InvalidGrant) as caught:
            grants.read_grant(old)
        self.assertIn("bad signature", caught.exception.reason)
        new = grants.make_grant("notes", ["user"], user="mary")
        self.assertEqual(grants.read_grant(new).user, "mary")
        self.settings(SECRET_KEY="a newer key" * 5,
                      SECRET_KEY_FALLBACKS=["the new key" * 5])
        self.assertEqual(grants.read_grant(new).user, "mary")
        for bad in (new.rsplit(":", 1)[0] + ":" + "A" * 43, new.replace(":", ";")):
            with self.assertRaises(grants.InvalidGrant):
                grants.read_grant(bad)

    def test_templateTagPrintsTheRequestsGrant(self):
        """{% ws4tx_grant "notes" "user" groups="staff" %} prints a grant of the request's."""
        from django.template import engines

        from ws4tx import grants

        template = engines["django"].from_string(
            '{% load ws4tx %}{% ws4tx_grant "notes" "user" "group" groups="staff" %}')
        request = make_request(make_user("john", ["chatusers", "staff"]))
        claim = grants.read_grant(template.render(request=request))
        self.assertEqual((claim.user, claim.audiences, claim.groups), (
            "john", frozenset({"user", "group"}), frozenset({"staff"})))


def broadcast_only_but_secret(request, channels):
    """An ALLOWED_CHANNELS hook: broadcast only; nothing at all on the facility secret."""
    from django.core.exceptions import PermissionDenied

    if request.path.endswith("/secret"):
        raise PermissionDenied("no secrets here")
    return [c for c in channels if c.endswith("-broadcast")]


class AppTests(DjangoTestCase):
    """The ws4tx Django application."""

    def test_appIsInstalledUnderItsLabel(self):
        """INSTALLED_APPS 'ws4tx' gives the Ws4txConfig app with a verbose name."""
        from django.apps import apps

        from ws4tx.apps import Ws4txConfig

        config = apps.get_app_config("ws4tx")
        self.assertIsInstance(config, Ws4txConfig)
        self.assertTrue(config.verbose_name)


class ImportTests(DjangoTestCase):
    """The Django side stands alone."""

    def test_djangoSideImportsNoTwisted(self):
        """Importing and using every Django-side module loads no Twisted, Autobahn or
        txredisapi."""
        code = (
            "import importlib, sys\n"
            "from test._django import setup_django\n"
            "setup_django()\n"
            f"for name in {DJANGO_SIDE_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "from django.template import engines\n"
            "engines['django'].from_string('{% load ws4tx %}')\n"
            "from ws4tx.redis_store import RedisMessage\n"
            "from ws4tx.publisher import RedisPublisher\n"
            "RedisMessage('x'); RedisPublisher(facility='f', broadcast=True)\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('twisted', 'autobahn', 'txredisapi'))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n"
        )
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="test.settings")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


class WithoutDjangoSettingsTests(DjangoRedisTestCase):
    """ws4tx.api in a process without Django settings (a script, a shell): every setting
    takes its default and Redis is $WS4TX_REDIS_URL (the README's Quick start as written)."""

    def test_publishFromAPlainScript(self):
        """api.publish and api.emit work with no DJANGO_SETTINGS_MODULE."""
        listener = self.listen("ws4tx:broadcast:foobar")
        code = ("from ws4tx import api\n"
                "api.publish('foobar', 'Hello, everybody', broadcast=True)\n"
                "api.emit('foobar', 'chat', {'text': 'hi'}, broadcast=True)\n")
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env.update(WS4TX_REDIS_URL=self.redis.url, PYTHONPATH=ROOT)
        result = subprocess.run([sys.executable, "-c", code], cwd=tempfile.gettempdir(),
                                env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(listener.received(), [
            ("ws4tx:broadcast:foobar", b"Hello, everybody"),
            ("ws4tx:broadcast:foobar", b'{"ws4tx":"event","event":"chat","data":{"text":"hi"}}'),
        ])
