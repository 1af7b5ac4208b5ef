"""Authentication of WebSocket handshakes from Django: session cookies with several
session engines, invalidation, tokens, ws4redis's hooks, and cross-site WebSocket
hijacking, through a real server and real clients."""

from __future__ import annotations

import json
import threading
import time
import zlib
from typing import Any

from django.core.exceptions import PermissionDenied
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from test._django import setup_django

setup_django()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core import signing  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from ws4tx import _sync_redis, naming, tokens  # noqa: E402
from ws4tx.publisher import RedisPublisher  # noqa: E402
from ws4tx.server import _django  # noqa: E402
from ws4tx.server._authgate import AuthGate  # noqa: E402
from ws4tx.server.auth import HandshakeRequest  # noqa: E402

from test._server import ServerTestCase, non_probe  # noqa: E402
from test._wsclient import TIMEOUT, handshake_request, raw_request, status_of  # noqa: E402

ALL = "?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"


def allow_broadcast_only(request, channels):
    """An ALLOWED_CHANNELS hook: only broadcast, and never for 'mary'."""
    if request.user.get_username() == "mary":
        raise PermissionDenied("mary may not listen here")
    return [c for c in channels if c.endswith("-broadcast")]


def no_secrets(request, channels):
    """An ALLOWED_CHANNELS hook by facility: nothing of 'secret', broadcast only on
    'news', anything elsewhere."""
    if request.path.endswith("/secret"):
        raise PermissionDenied("no secrets here")
    if request.path.endswith("/news"):
        return [c for c in channels if c.endswith("-broadcast")]
    return channels


def header_user(request):
    """A PROCESS_REQUEST hook: the user named by a header (like a token scheme would)."""
    from django.contrib.auth.models import AnonymousUser

    name = request.META.get("HTTP_X_USER")
    request.user = User.objects.get(username=name) if name else AnonymousUser()
    request.session = None


def ban_by_header(request):
    """A PROCESS_REQUEST hook that refuses a banned client and leaves request.user alone."""
    if request.META.get("HTTP_X_BANNED"):
        raise PermissionDenied("banned by PROCESS_REQUEST")


def cookie_user(request):
    """A PROCESS_REQUEST hook that authenticates from a cookie of the site's own."""
    from django.contrib.auth.models import AnonymousUser

    name = request.COOKIES.get("who")
    request.user = User.objects.get(username=name) if name else AnonymousUser()
    request.session = None


def remote_user(request):
    """A PROCESS_REQUEST hook that trusts the proxy's X-Remote-User header."""
    from django.contrib.auth.models import AnonymousUser

    name = request.META.get("HTTP_X_REMOTE_USER")
    request.user = User.objects.get(username=name) if name else AnonymousUser()
    request.session = None


def unverified_payload(token: str) -> dict:
    """What anybody who sees a token reads in it, without the secret."""
    data = token.split(":")[0]
    compressed = data.startswith(".")
    raw = signing.b64_decode(data.lstrip(".").encode())
    return json.loads(zlib.decompress(raw) if compressed else raw)


def request_with_session(key: str) -> HttpRequest:
    """A Django request carrying the session cookie ``key``, processed as a view sees it."""
    request = HttpRequest()
    request.COOKIES[settings.SESSION_COOKIE_NAME] = key
    _django._process_request(request)
    return request


class DjangoServerTestCase(ServerTestCase):
    """A server with the default authenticator of `twistd ws4tx --django-settings`, and
    users john and mary in the group chatusers."""

    async def _setUp(self) -> None:
        group, _ = Group.objects.get_or_create(name="chatusers")
        for name in ("john", "mary"):
            user = User.objects.filter(username=name).first() or \
                User.objects.create_user(name, password="secret")
            user.set_password("secret")
            user.is_active = True  # other tests deactivate users in the shared database
            user.save()
            user.groups.add(group)
        await super()._setUp()

    async def startServer(self, wait: bool = True, **kwargs) -> None:
        kwargs.setdefault("authenticator", _django.SessionAuthenticator(settings))
        kwargs.setdefault("run_in_thread", _django.run_in_thread)
        await super().startServer(wait, **kwargs)

    def login(self, name: str) -> tuple[Client, str]:
        client = Client()
        self.assertTrue(client.login(username=name, password="secret"))
        return client, client.cookies[settings.SESSION_COOKIE_NAME].value

    def cookie(self, key: str, **extra: str) -> dict[str, str]:
        return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={key}", **extra}

    async def _channels(self, headers, path=ALL) -> list[str]:
        client = await self.client("/ws/foobar" + path, headers)
        channels = non_probe(self.redis.pubsub_channels())
        await client.close()
        await self.factory.test_left.get()
        return channels

    async def _status(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        return status_of(await raw_request(self.port, handshake_request(path, headers)))

    def settings_override(self, **values) -> None:
        override = override_settings(**values)
        override.enable()
        self.addCleanup(override.disable)


class DjangoAuthTests(DjangoServerTestCase):
    """The default authenticator of `twistd ws4tx --django-settings`."""

    async def test_sessionCookieGivesUserGroupsAndSession(self):
        """With each session engine, the session cookie gives the user's own user, group
        and session channels, groups read from the database."""
        for engine in ("db", "cache", "cached_db", "file", "signed_cookies"):
            with override_settings(SESSION_ENGINE=f"django.contrib.sessions.backends.{engine}"):
                _, key = self.login("john")
                channels = await self._channels(self.cookie(key))
                session = [c for c in channels if c.startswith("ws4tx:session:")]
                self.assertEqual(
                    [c for c in channels if not c.startswith("ws4tx:session:")],
                    ["ws4tx:broadcast:foobar", "ws4tx:group:chatusers:foobar",
                     "ws4tx:user:john:foobar"], engine)
                self.assertEqual(len(session), 1, engine)

    async def test_noCookieIsAnonymous(self):
        """Without a cookie (or with a bogus one) a client is anonymous: broadcast only."""
        self.assertEqual(await self._channels({}), ["ws4tx:broadcast:foobar"])
        self.assertEqual(await self._channels(self.cookie("nonsense")),
                         ["ws4tx:broadcast:foobar"])

    async def test_logoutInvalidates(self):
        """After logout the old cookie gives an anonymous connection."""
        browser, key = self.login("john")
        browser.logout()
        self.assertEqual(await self._channels(self.cookie(key)), ["ws4tx:broadcast:foobar"])

    async def test_passwordChangeInvalidates(self):
        """After a password change the old session gives no user channels."""
        _, key = self.login("mary")
        user = User.objects.get(username="mary")
        user.set_password("changed")
        user.save()
        channels = await self._channels(self.cookie(key))
        self.assertNotIn("ws4tx:user:mary:foobar", channels)
        self.assertNotIn("ws4tx:group:chatusers:foobar", channels)

    async def test_validTokenGivesItsIdentity(self):
        """A signed token in the query string gives its identity, without the cookie."""
        token = tokens.make_token("mary", ["chatusers"])
        channels = await self._channels({}, ALL + "&token=" + token)
        self.assertEqual(channels, ["ws4tx:broadcast:foobar", "ws4tx:group:chatusers:foobar",
                                    "ws4tx:user:mary:foobar"])

    async def test_expiredOrTamperedTokenIsRefused(self):
        """An expired or tampered token is refused with 403 and a reason saying which."""
        real_time = time.time
        self.patch(time, "time", lambda: real_time() - 3600)  # made an hour ago
        old = tokens.make_token("mary")
        self.patch(time, "time", real_time)
        status, text = await self._status("/ws/foobar?subscribe-user&token=" + old, {})
        self.assertEqual(status, 403)
        self.assertIn("expired", text)
        token = tokens.make_token("mary")
        status, text = await self._status(
            "/ws/foobar?subscribe-user&token=" + token[:-3] + "abc", {})
        self.assertEqual(status, 403)
        self.assertIn("signature", text)

    async def test_allowedChannelsHookNarrowsOrRefuses(self):
        """ALLOWED_CHANNELS (a dotted path, as in ws4redis) drops flags, and its
        PermissionDenied answers 403."""
        hook = f"{__name__}.allow_broadcast_only"
        with override_settings(WS4REDIS_ALLOWED_CHANNELS=hook):
            await self.service.stopService()
            await self.startServer()
            _, john = self.login("john")
            self.assertEqual(await self._channels(self.cookie(john)),
                             ["ws4tx:broadcast:foobar"])
            _, mary = self.login("mary")
            status, text = await self._status("/ws/foobar" + ALL, self.cookie(mary))
        self.assertEqual(status, 403)
        self.assertIn("mary may not listen", text)

    async def test_subscribeFramesPassTheSameHooks(self):
        """A subscribe frame on /ws/ is authorized as the same channels in a URL: the
        session cookie's identity and ALLOWED_CHANNELS (in a thread), which sees the
        facility asked; a refusal is answered with the hook's reason and leaves the
        subscription already there delivering."""
        await self.restart(WS4REDIS_ALLOWED_CHANNELS=f"{__name__}.no_secrets")
        _, john = self.login("john")
        client = await self.client("/ws/", self.cookie(john), protocols=("ws4tx.v1",))

        async def answer(frame: dict) -> dict:
            client.send(json.dumps({"ws4tx": "subscribe", **frame}, separators=(",", ":")))
            return json.loads(await client.text())

        self.assertEqual(await answer({"id": 1, "facility": "foobar", "audiences": {
            "user": True, "groups": ["chatusers"]}}), {
            "ws4tx": "subscribed", "id": 1, "facility": "foobar",
            "channels": ["ws4tx:user:john:foobar", "ws4tx:group:chatusers:foobar"]})
        self.assertEqual(await answer({"id": 2, "facility": "secret", "audiences": {
            "broadcast": True}}), {"ws4tx": "refused", "id": 2, "reason": "no secrets here"})
        self.assertEqual(await answer({"id": 3, "facility": "news", "audiences": {
            "broadcast": True, "user": True}}), {
            "ws4tx": "refused", "id": 3, "reason": "not allowed: the user audience of news"})
        self.assertEqual(self.factory.authenticator.gate.most, 1)
        self.assertEqual(self.publish("ws4tx:user:john:foobar", "still"), 1)
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "pub", "channel": "ws4tx:user:john:foobar", "data": "still"})

    async def test_processRequestHookReplacesSessionAuth(self):
        """PROCESS_REQUEST replaces the default session processing."""
        with override_settings(WS4TX_PROCESS_REQUEST=header_user):
            await self.service.stopService()
            await self.startServer()
            channels = await self._channels({"X-User": "mary"}, "?subscribe-user")
        self.assertEqual(channels, ["ws4tx:user:mary:foobar"])

    async def test_foreignOriginWithCookieIsRefused(self):
        """Cross-site WebSocket hijacking: another site's page connecting with the user's
        cookie is refused with 403; the site's own origin is accepted."""
        _, key = self.login("john")
        status, text = await self._status(
            "/ws/foobar" + ALL, self.cookie(key, Origin="https://evil.example.net"))
        self.assertEqual(status, 403)
        self.assertIn("cross-site", text)
        channels = await self._channels(self.cookie(key, Origin=f"http://127.0.0.1:{self.port}"))
        self.assertIn("ws4tx:user:john:foobar", channels)

    async def restart(self, **values) -> None:
        """Restart the server under these settings (kept until the end of the test)."""
        override = override_settings(**values)
        override.enable()
        self.addCleanup(override.disable)
        await self.service.stopService()
        await self.startServer()

    async def test_originMustBeTheSitesExactOrigin(self):
        """Only the exact origin of the site (scheme, host and port) may use the cookie:
        another port, https for an http site, another scheme, a host that ALLOWED_HOSTS
        lists but the page is not on: all 403."""
        _, key = self.login("john")
        for origin in ("http://127.0.0.1:9999", "https://127.0.0.1",
                       f"https://127.0.0.1:{self.port}", f"ftp://127.0.0.1:{self.port}",
                       "ftp://localhost", "http://localhost:8000", "https://example.com",
                       f"ws://127.0.0.1:{self.port}", "null"):
            status, text = await self._status("/ws/foobar" + ALL,
                                              self.cookie(key, Origin=origin))
            self.assertEqual(status, 403, origin)
            self.assertIn("cross-site", text, origin)
        channels = await self._channels(
            self.cookie(key, Origin=f"HTTP://127.0.0.1:{self.port}"))
        self.assertIn("ws4tx:user:john:foobar", channels)

    async def test_allowedHostsStarDoesNotAllowEveryOrigin(self):
        """ALLOWED_HOSTS = ['*'] says which Host Django serves, not which pages may use the
        cookie: http://evil.com is still refused."""
        await self.restart(ALLOWED_HOSTS=["*"])
        _, key = self.login("john")
        status, text = await self._status(
            "/ws/foobar" + ALL, self.cookie(key, Origin="http://evil.com"))
        self.assertEqual(status, 403)
        self.assertIn("cross-site", text)

    async def test_csrfTrustedOriginsAndAllowedOriginsAreAccepted(self):
        """CSRF_TRUSTED_ORIGINS (Django's format, with wildcards) and ALLOWED_ORIGINS widen
        the check, each to exactly what it names."""
        await self.restart(CSRF_TRUSTED_ORIGINS=["https://*.example.com"],
                           WS4TX_ALLOWED_ORIGINS=["http://localhost:8000"])
        _, key = self.login("john")
        for origin in ("https://app.example.com", "https://app.example.com:443",
                       "http://localhost:8000"):
            channels = await self._channels(self.cookie(key, Origin=origin))
            self.assertIn("ws4tx:user:john:foobar", channels, origin)
        for origin in ("http://app.example.com", "https://example.com.evil.net",
                       "http://localhost:8001"):
            status, _ = await self._status("/ws/foobar" + ALL, self.cookie(key, Origin=origin))
            self.assertEqual(status, 403, origin)

    async def test_secureProxySslHeaderMakesTheSiteHttps(self):
        """Behind a TLS proxy (SECURE_PROXY_SSL_HEADER) the site's origin is https: the
        https page is accepted, its http twin refused; a header spelt with _ does not
        count."""
        await self.restart(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
        _, key = self.login("john")
        https, http = f"https://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}"
        proxied = {"X-Forwarded-Proto": "https"}
        channels = await self._channels(self.cookie(key, Origin=https, **proxied))
        self.assertIn("ws4tx:user:john:foobar", channels)
        for origin, headers in ((http, proxied), (https, {"X_Forwarded_Proto": "https"})):
            status, _ = await self._status("/ws/foobar" + ALL,
                                           self.cookie(key, Origin=origin, **headers))
            self.assertEqual(status, 403, (origin, headers))

    async def test_anyCookieFromAForeignOriginIsRefused(self):
        """Not only the session cookie: a site whose PROCESS_REQUEST authenticates from a
        cookie of its own is protected too, and so is any handshake with cookies."""
        foreign = {"Origin": "https://evil.example.net"}
        status, _ = await self._status("/ws/foobar" + ALL, {"Cookie": "csrftoken=x", **foreign})
        self.assertEqual(status, 403)
        await self.restart(WS4TX_PROCESS_REQUEST=cookie_user)
        status, text = await self._status("/ws/foobar?subscribe-user",
                                          {"Cookie": "who=john", **foreign})
        self.assertEqual(status, 403)
        self.assertIn("cross-site", text)
        channels = await self._channels(
            {"Cookie": "who=john", "Origin": f"http://127.0.0.1:{self.port}"}, "?subscribe-user")
        self.assertEqual(channels, ["ws4tx:user:john:foobar"])

    async def test_overTlsTheSitesOriginIsHttps(self):
        """A wss:// handshake (TLS to the server itself) makes the site's origin https: the
        https page of the same host and port is accepted, its http twin refused."""
        from twisted.internet import endpoints, reactor, ssl

        from test._wsclient import TIMEOUT, _RawHTTP

        class _HeadOnly(_RawHTTP):
            """Also hangs up after a 101 head (the raw client waits for a refusal's body)."""

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if b"\r\n\r\n" in self.data:
                    self.transport.loseConnection()

        certificate = ssl.KeyPair.generate(size=2048).selfSignedCert(1, commonName="127.0.0.1")
        port = await endpoints.SSL4ServerEndpoint(
            reactor, 0, certificate.options(), interface="127.0.0.1").listen(self.service.site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        _, key = self.login("john")

        async def status(origin: str) -> int:
            done = defer.Deferred()
            client = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", number,
                                                  ssl.CertificateOptions(), timeout=TIMEOUT)
            request = handshake_request("/ws/foobar?subscribe-user",
                                        self.cookie(key, Origin=origin),
                                        host=f"127.0.0.1:{number}")
            await endpoints.connectProtocol(client, _HeadOnly(request, done))
            return status_of(await done.addTimeout(TIMEOUT, reactor))[0]

        self.assertEqual(await status(f"http://127.0.0.1:{number}"), 403)
        self.assertEqual(await status(f"https://127.0.0.1:{number}"), 101)

    def test_originPolicyTakesTheSchemeOfTheConnection(self):
        """Over TLS (``secure``) the site's origin is https://host, else http://host."""
        policy = _django._OriginPolicy(settings)

        def handshake(secure: bool) -> HandshakeRequest:
            return HandshakeRequest(peer="tcp:1.2.3.4:5", host="push.example.com",
                                    path="/ws/f", query="", params={},
                                    headers={"host": "push.example.com"}, facility="f",
                                    secure=secure)

        self.assertTrue(policy.allows("https://push.example.com", handshake(True)))
        self.assertFalse(policy.allows("http://push.example.com", handshake(True)))
        self.assertTrue(policy.allows("http://push.example.com:80", handshake(False)))
        self.assertFalse(policy.allows("https://push.example.com", handshake(False)))

    async def test_foreignOriginWithoutCookieIsAnonymous(self):
        """Without the session cookie a foreign page gets an anonymous connection."""
        channels = await self._channels({"Origin": "https://other.example.net"})
        self.assertEqual(channels, ["ws4tx:broadcast:foobar"])

    # Header spoofing

    async def test_headerNamesWithUnderscoresAreDropped(self):
        """X_Remote_User would become the same META key as the proxy's X-Remote-User and win;
        like Django's own servers, ws4tx drops such headers before the hooks see them."""
        await self.restart(WS4TX_PROCESS_REQUEST=remote_user)
        self.assertEqual(await self._channels({"X_Remote_User": "mary"}, "?subscribe-user"), [])
        self.assertEqual(
            await self._channels({"X-Remote-User": "john", "X_Remote_User": "mary"},
                                 "?subscribe-user"),
            ["ws4tx:user:john:foobar"])

    # The session key never leaves Django

    def publishToSession(self, key: str, message: str) -> None:
        """Publish from the Django side, as a view would, to the session ``key``."""
        _sync_redis.use_url(self.redis_server.url)
        self.addCleanup(_sync_redis.reset)
        RedisPublisher(facility="foobar", sessions=[key]).publish_message(message)

    async def test_sessionChannelIsDerivedAndBothHalvesAgree(self):
        """A session's channel is named by its keyed id, never its key: Django publishing to
        sessions=[key] reaches that session's WebSocket (by cookie and by token), and no
        live session key appears in PUBSUB CHANNELS or in KEYS."""
        _, key = self.login("john")
        by_cookie = await self.client("/ws/foobar?subscribe-session", self.cookie(key))
        token = tokens.token_for_request(request_with_session(key))
        by_token = await self.client("/ws/foobar?subscribe-session&token=" + token)
        self.publishToSession(key, "to your session")
        self.assertEqual(await by_cookie.text(), "to your session")
        self.assertEqual(await by_token.text(), "to your session")
        names = [c.decode() for c in self.redis.pubsub_channels() + self.redis.keys("*")]
        self.assertFalse([n for n in names if key in n], names)
        wanted = naming.channel("ws4tx", naming.SESSION, "foobar",
                                naming.session_channel_id(settings.SECRET_KEY, key))
        self.assertEqual(non_probe(self.redis.pubsub_channels()), [wanted])
        self.assertIn(wanted.encode(), self.redis.keys("*"))

    async def test_tokenCarriesNothingThatLogsIn(self):
        """Whoever reads a token (no secret needed) finds no session key in it, and nothing
        in it works as a session cookie."""
        _, key = self.login("john")
        token = tokens.token_for_request(request_with_session(key))
        payload = unverified_payload(token)
        self.assertEqual(payload["u"], "john")
        self.assertNotIn(key, json.dumps(payload))
        self.assertNotIn(key, token)
        values = [v for value in payload.values()
                  for v in (value if isinstance(value, list) else [value])]
        self.assertIn(naming.session_channel_id(settings.SECRET_KEY, key), values)
        for value in values:
            self.assertFalse(request_with_session(value).user.is_authenticated, value)
            self.assertEqual(await self._channels(self.cookie(value)),
                             ["ws4tx:broadcast:foobar"], value)

    async def test_oldTokenWithSessionKeyIsRefused(self):
        """A token of the old format (it carried the session key) is refused, saying so."""
        _, key = self.login("john")
        old = signing.dumps({"u": "john", "s": key}, salt=tokens.SALT, compress=True)
        status, text = await self._status("/ws/foobar?subscribe-session&token=" + old, {})
        self.assertEqual(status, 403)
        self.assertIn("old token format", text)

    async def test_ws4redisSessionNamesAreACompatibilitySetting(self):
        """SESSION_CHANNELS = "key" names session channels by the key, as ws4redis did, for
        sites that share Redis with it; tokens then carry no session at all."""
        self.settings_override(WS4TX_SESSION_CHANNELS="key")
        _, key = self.login("john")
        client = await self.client("/ws/foobar?subscribe-session", self.cookie(key))
        self.assertEqual(non_probe(self.redis.pubsub_channels()),
                         [f"ws4tx:session:{key}:foobar"])
        self.publishToSession(key, "ws4redis style")
        self.assertEqual(await client.text(), "ws4redis style")
        await client.close()
        await self.factory.test_left.get()
        token = tokens.token_for_request(request_with_session(key))
        self.assertNotIn("c", unverified_payload(token))
        self.assertEqual(await self._channels({}, "?subscribe-session&token=" + token), [])

    # The site's hooks apply to token connections

    async def test_allowedChannelsAppliesToTokens(self):
        """A user whom ALLOWED_CHANNELS bans is refused with her own token too, and the
        hook narrows a token connection's flags (publishing included) as a cookie's."""
        await self.restart(WS4REDIS_ALLOWED_CHANNELS=f"{__name__}.allow_broadcast_only")
        status, text = await self._status(
            "/ws/foobar?subscribe-user&publish-user&token=" + tokens.make_token("mary"), {})
        self.assertEqual(status, 403)
        self.assertIn("mary may not listen", text)
        token = tokens.make_token("john", ["chatusers"])
        await self.client("/ws/foobar" + ALL + "&publish-user&token=" + token)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), ["ws4tx:broadcast:foobar"])
        self.assertEqual(client_protocol(self.factory).identity.user, "john")
        self.assertEqual(client_protocol(self.factory)._publish_to, ())

    async def test_tokenOfADeletedOrInactiveUserIsRefusedWhenHooksAreSet(self):
        """With hooks set, a token's user is loaded from the database: a deleted or inactive
        user is refused with 403."""
        await self.restart(WS4REDIS_ALLOWED_CHANNELS=f"{__name__}.allow_broadcast_only")
        User.objects.create_user("gone", password="x")
        gone = tokens.make_token("gone")
        User.objects.filter(username="gone").delete()
        inactive = User.objects.create_user("idle", password="x")
        inactive.is_active = False
        inactive.save()
        for token, reason in ((gone, "no longer exists"),
                              (tokens.make_token("idle"), "inactive")):
            status, text = await self._status("/ws/foobar?subscribe-user&token=" + token, {})
            self.assertEqual(status, 403)
            self.assertIn(reason, text)

    async def test_processRequestAppliesToTokens(self):
        """A custom PROCESS_REQUEST runs for a token connection with request.user set to the
        token's user: it may refuse (403), and if it names another user the connection is
        refused rather than given an identity the hook did not approve."""
        await self.restart(WS4TX_PROCESS_REQUEST=ban_by_header)
        token = tokens.make_token("mary", ["chatusers"])
        status, text = await self._status("/ws/foobar?subscribe-user&token=" + token,
                                          {"X-Banned": "1"})
        self.assertEqual(status, 403)
        self.assertIn("banned by PROCESS_REQUEST", text)
        self.assertEqual(await self._channels({}, "?subscribe-user&token=" + token),
                         ["ws4tx:user:mary:foobar"])
        await self.restart(WS4TX_PROCESS_REQUEST=header_user)
        self.assertEqual(
            await self._channels({"X-User": "mary"}, "?subscribe-user&token=" + token),
            ["ws4tx:user:mary:foobar"])
        for headers in ({"X-User": "john"}, {}):
            status, text = await self._status("/ws/foobar?subscribe-user&token=" + token,
                                              headers)
            self.assertEqual(status, 403, headers)
            self.assertIn("PROCESS_REQUEST gives user", text)


def client_protocol(factory):
    """The one open connection of the server."""
    (client,) = list(factory.node.router.hub.clients())
    return client


_gate = threading.Event()
_authorized: list[defer.Deferred[None]] = []
_count = [0, 0]  # authorizations done, expected


def gated_process_request(request):
    """The default session processing, held until the test opens the gate."""
    _gate.wait(30)
    _django._process_request(request)
    _count[0] += 1
    if _count[0] == _count[1]:
        reactor.callFromThread(_authorized[0].callback, None)


class GrantTests(DjangoServerTestCase):
    """Subscribe frames carrying a signed grant (ws4tx.grants) on cookie connections of
    the default authenticator: admitted without a thread or a query; refused, with the
    reason and nothing else changed, when the grant is not this connection's, not for
    what is asked, tampered with or expired."""

    async def connect(self, name: str) -> tuple[Any, HttpRequest]:
        """An event client of ``name`` on /ws/ and the request of its page (the same
        session), once its handshake's authentication is over."""
        _, key = self.login(name)
        client = await self.client("/ws/", self.cookie(key), protocols=("ws4tx.v1",))
        return client, request_with_session(key)

    def countThreads(self) -> list[Any]:
        """The authentication work started in threads from now on."""
        started: list[Any] = []
        real = _django.run_in_thread

        def counted(f, *args, **kwargs):
            started.append(f)
            return real(f, *args, **kwargs)

        self.patch(_django, "run_in_thread", counted)
        return started

    async def answer(self, client: Any, frame: dict) -> dict:
        client.send(json.dumps({"ws4tx": "subscribe", **frame}, separators=(",", ":")))
        return json.loads(await client.text())

    async def test_aValidGrantSubscribesWithoutTheDatabase(self):
        """A grant of the page's request subscribes user, group and session channels with
        no thread started and no query in the server; the same subscribe without a grant
        goes through the authenticator's thread."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from ws4tx import api

        client, request = await self.connect("john")
        grant = api.grant(request, "foobar", ["user", "group", "session"])
        threads = self.countThreads()
        with CaptureQueriesContext(connection) as queries:
            answer = await self.answer(client, {"id": 1, "facility": "foobar", "audiences": {
                "user": True, "groups": True, "session": True}, "grant": grant})
        self.assertEqual((threads, len(queries)), ([], 0))
        self.assertEqual(answer["ws4tx"], "subscribed", answer)
        session = request_channel(request, "foobar")
        self.assertEqual(answer["channels"], ["ws4tx:user:john:foobar",
                                              "ws4tx:group:chatusers:foobar", session])
        self.assertEqual(self.factory.node.stats["subscribes_granted"], 1)
        self.assertEqual(self.publish(session, "to the session"), 1)
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "pub", "channel": session, "data": "to the session"})
        answer = await self.answer(client, {"id": 2, "facility": "other", "audiences": {
            "user": True}})
        self.assertEqual((answer["ws4tx"], len(threads)), ("subscribed", 1))

    async def test_aGrantGivesNothingBeyondItsIdentityAndChannels(self):
        """Mary's grant on John's connection, John's grant of another session, a grant of
        another facility, audience or group, a tampered, forged or expired grant: each is
        refused with why, without any thread; John's subscription keeps delivering."""
        from django.core import signing

        from ws4tx import grants

        client, request = await self.connect("john")
        _, mary_key = self.login("mary")
        _, other_key = self.login("john")
        mine = grants.grant_for_request(request, "foobar", ["broadcast", "group"])
        self.assertEqual((await self.answer(client, {
            "id": 1, "facility": "foobar", "audiences": {"broadcast": True},
            "grant": mine}))["ws4tx"], "subscribed")
        threads = self.countThreads()
        rest = mine.split(":", 1)[1]
        widened = signing.dumps({**signing.loads(mine, salt=grants.SALT),
                                 "a": ["broadcast", "group", "user"]},
                                salt=grants.SALT, compress=True)
        cases = [
            ({"user": True}, grants.grant_for_request(
                request_with_session(mary_key), "foobar", ["user"]),
             "invalid grant: it is for another user"),
            ({"user": True}, grants.grant_for_request(
                request_with_session(other_key), "foobar", ["user"]),
             "invalid grant: it is for another session"),
            ({"user": True}, grants.grant_for_request(request, "other", ["user"]),
             "invalid grant: it is for the facility 'other'"),
            ({"user": True}, mine, "invalid grant: it does not allow the user audience"),
            ({"groups": ["admins"]}, mine,
             "invalid grant: it does not allow the group 'admins'"),
            ({"groups": True}, widened.split(":", 1)[0] + ":" + rest,
             "invalid grant: bad signature (tampered with or malformed)"),
            ({"groups": True}, tokens.make_token("john", ["chatusers"]),
             "invalid grant: bad signature (tampered with or malformed)"),
            ({"groups": True}, grants.make_grant(
                "foobar", ["group"], user="john", groups=["chatusers"],
                now=time.time() - 400), "invalid grant: expired"),
        ]
        for number, (audiences, grant, reason) in enumerate(cases, 2):
            self.assertEqual(await self.answer(client, {
                "id": number, "facility": "foobar", "audiences": audiences,
                "grant": grant}), {"ws4tx": "refused", "id": number, "reason": reason})
        self.assertEqual(threads, [])
        self.assertEqual(sorted(non_probe(self.redis.pubsub_channels())),
                         ["ws4tx:broadcast:foobar"])
        self.assertEqual(self.publish("ws4tx:broadcast:foobar", "still"), 1)
        self.assertEqual(json.loads(await client.text()), {
            "ws4tx": "pub", "channel": "ws4tx:broadcast:foobar", "data": "still"})


def request_channel(request: HttpRequest, facility: str) -> str:
    """The session channel of ``request``'s session in ``facility``."""
    from ws4tx import _audience

    return naming.channel("ws4tx", naming.SESSION, facility,
                          _audience.session_channel(request))


class _Observed(_django.SessionAuthenticator):
    """Tells the test of every handshake it starts to authenticate."""

    started: defer.DeferredQueue[None]

    def authenticate(self, request):
        answer = super().authenticate(request)
        self.started.put(None)
        return answer


class ResetDuringSessionLookupTests(DjangoServerTestCase):
    """A client with a valid session cookie that resets while its session is looked up
    (in a thread) is never opened."""

    clients = 200

    async def startServer(self, wait: bool = True, **kwargs) -> None:
        self.settings_override(WS4TX_PROCESS_REQUEST=gated_process_request)
        # Every look-up in the thread pool at once, as without a bound: the resets are
        # what this test is about (AuthenticationBoundTests tests the bound).
        self.authenticator = _Observed(settings, gate=AuthGate(self.clients, 0))
        self.authenticator.started = defer.DeferredQueue()
        await super().startServer(wait, authenticator=self.authenticator, **kwargs)

    async def test_resetDuringSessionLookupLeaksNothing(self):
        """200 handshakes with john's cookie reset while their look-up waits: once every
        look-up has finished, no member, no Redis subscription, nothing to drain."""
        _gate.clear()
        self.addCleanup(_gate.set)
        _count[:] = [0, self.clients]
        _authorized[:] = [defer.Deferred()]
        _, key = self.login("john")
        request = handshake_request("/ws/foobar" + ALL, self.cookie(key))
        raws = []
        for _ in range(self.clients):
            raw = _Raw()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
            await endpoints.connectProtocol(endpoint, raw)
            raw.transport.write(request)
            raws.append(raw)
        for _ in raws:  # every handshake is being authenticated
            await self.authenticator.started.get().addTimeout(TIMEOUT, reactor)
        for raw in raws:
            raw.transport.abortConnection()
        for _ in raws:
            await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        _gate.set()
        await _authorized[0].addTimeout(TIMEOUT, reactor)
        await deferLater(reactor, 0, lambda: None)  # the answers' callbacks ran
        self.assertEqual(self.factory.node.router.memberCount(), 0)
        self.assertEqual(non_probe(self.redis.pubsub_channels()), [])
        self.assertTrue(self.factory.node.whenDrained().called)


class _Raw(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class _Held:
    """Authentications held in their threads until ``release`` is set; counts how many
    run in threads at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.running = self.most = 0
        self.started: defer.DeferredQueue[None] = defer.DeferredQueue()
        self.finished: defer.DeferredQueue[None] = defer.DeferredQueue()


_held: list[_Held] = []


def held_process_request(request):
    """The default session processing, held in its thread until the test releases it."""
    held = _held[0]
    with held.lock:
        held.running += 1
        held.most = max(held.most, held.running)
    reactor.callFromThread(held.started.put, None)
    try:
        held.release.wait(30)
        _django._process_request(request)
    finally:
        with held.lock:
            held.running -= 1
        reactor.callFromThread(held.finished.put, None)


class _Kept(Protocol):
    """Keeps what the server answers."""

    data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def page(environ, start_response):
    """A page of the site, served from the reactor's thread pool (as --wsgi does)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"page"]


class AuthenticationBoundTests(DjangoServerTestCase):
    """A storm of handshakes with a session cookie, each held in its authentication, and
    reset: at most AUTH_CONCURRENCY authentications run in threads at once, whatever the
    resets; the site's pages, served by the same thread pool, are answered meanwhile; past
    AUTH_QUEUE handshakes are answered 503 with Retry-After."""

    concurrency, queue = 3, 20

    async def startServer(self, wait: bool = True, **kwargs) -> None:
        from twisted.web.wsgi import WSGIResource

        self.settings_override(WS4TX_PROCESS_REQUEST=held_process_request)
        self.held = _Held()
        _held[:] = [self.held]
        self.addCleanup(self.held.release.set)
        self.authenticator = _Observed(
            settings, gate=AuthGate(self.config.auth_concurrency, self.config.auth_queue))
        self.authenticator.started = defer.DeferredQueue()
        kwargs.setdefault("fallback", WSGIResource(reactor, reactor.getThreadPool(), page))
        await super().startServer(wait, authenticator=self.authenticator, **kwargs)

    config = DjangoServerTestCase.config.replace(auth_concurrency=concurrency,
                                                 auth_queue=queue)

    async def _handshake(self, request: bytes) -> _Kept:
        raw = _Kept()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoints.connectProtocol(endpoint, raw)
        raw.transport.write(request)
        await self.authenticator.started.get().addTimeout(TIMEOUT, reactor)
        return raw

    async def test_resetStormHoldsAtMostConcurrencyThreadsAndPagesAreServed(self):
        """23 handshakes with john's cookie: 3 authenticate in threads, 20 wait, the 24th
        gets 503 with Retry-After; a page of the site is served while the 3 are held (the
        pool's other threads are free). All 23 reset: the waiting ones leave the queue,
        the 3 keep their slots until their threads end, so a handshake after the storm
        waits rather than starting a 4th thread, and is admitted once they ended. At no
        time did more than 3 authentications run in threads."""
        gate, held = self.authenticator.gate, self.held
        _, key = self.login("john")
        request = handshake_request("/ws/foobar" + ALL, self.cookie(key))
        raws = [await self._handshake(request)
                for _ in range(self.concurrency + self.queue)]
        for _ in range(self.concurrency):
            await held.started.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual((gate.running, gate.waiting, held.running),
                         (self.concurrency, self.queue, self.concurrency))

        status, text = await self._status("/ws/foobar" + ALL, self.cookie(key))
        self.assertEqual(status, 503, text)
        self.assertIn("too many handshakes waiting for authentication", text)
        self.assertIn("\r\nRetry-After: 1\r\n", text)
        await self.authenticator.started.get()  # it was refused by the gate

        answer = await raw_request(self.port, b"GET /page HTTP/1.0\r\nHost: x\r\n\r\n")
        self.assertEqual(status_of(answer)[0], 200, answer)
        self.assertEqual(held.running, self.concurrency)  # served while they are held

        for raw in raws:
            raw.transport.abortConnection()
        for _ in range(len(raws) + 1):  # and the one refused
            await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual((gate.running, gate.waiting), (self.concurrency, 0))

        after = await self._handshake(request)
        self.addCleanup(after.transport.abortConnection)
        self.assertEqual((gate.running, gate.waiting), (self.concurrency, 1))
        self.assertEqual(held.started.pending, [])  # no 4th thread

        held.release.set()
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        self.assertTrue(after.data.startswith(b"HTTP/1.1 101 "), after.data)
        for _ in range(self.concurrency + 1):
            await held.finished.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual((held.most, gate.most), (self.concurrency, self.concurrency))
        self.assertEqual(self.factory.node.router.memberCount(), 1)
        self.assertEqual(gate.refused, 1)


class AnonymousWithoutTheGateTests(DjangoServerTestCase):
    """An anonymous handshake (no session cookie, no hook set) is answered in the reactor
    thread: it neither waits for the authentication gate nor is refused by it, so a storm
    of cookie handshakes cannot hold anonymous clients back; with a hook set it is the
    site's code that decides, in a thread, through the gate as before."""

    async def startServer(self, wait: bool = True, **kwargs) -> None:
        self.authenticator = _django.SessionAuthenticator(settings, gate=AuthGate(1, 0))
        await super().startServer(wait, authenticator=self.authenticator, **kwargs)
        # The gate's one slot taken, its queue empty: whatever goes to a thread is 503.
        held: defer.Deferred[Any] = defer.Deferred()
        self.authenticator.gate.run(lambda: held)
        self.addCleanup(held.callback, None)

    async def test_anonymousHandshakeNeedsNoThread(self):
        """With the gate full, a handshake without a session cookie (another cookie does
        not matter) is admitted as anonymous (broadcast only), a handshake with a session
        cookie gets 503."""
        for headers in ({}, {"Cookie": "theme=dark"}):
            client = await self.client("/ws/foobar" + ALL, headers)
            self.assertEqual(non_probe(self.redis.pubsub_channels()),
                             ["ws4tx:broadcast:foobar"])
            await client.close()
            await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        _, key = self.login("john")
        status, text = await self._status("/ws/foobar" + ALL, self.cookie(key))
        self.assertEqual(status, 503, text)
        self.assertEqual(self.authenticator.gate.refused, 1)

    async def test_hooksStillDecideForAnonymous(self):
        """With ALLOWED_CHANNELS or PROCESS_REQUEST set, an anonymous handshake runs the
        hook in a thread: through the gate (here full, hence 503)."""
        for hook, function in (("WS4TX_ALLOWED_CHANNELS", "allow_broadcast_only"),
                               ("WS4TX_PROCESS_REQUEST", "ban_by_header")):
            self.settings_override(**{hook: f"{__name__}.{function}"})
            await self.service.stopService()
            await self.startServer()
            status, text = await self._status("/ws/foobar" + ALL, {})
            self.assertEqual(status, 503, f"{hook}: {text}")
            self.settings_override(**{hook: None})

    def test_postWithoutCookieStillGoesToTheThread(self):
        """A POST without a session cookie is not answered in the reactor: its CSRF check
        runs in the thread (here: the full gate refuses it)."""
        request = HandshakeRequest(peer="tcp:127.0.0.1:1", host="127.0.0.1", path="/ws/foobar",
                                   query="", params={}, headers={}, facility="foobar",
                                   method="POST")
        answer = self.authenticator.authenticate(request)
        self.assertIsInstance(answer, defer.Deferred)
        self.assertEqual(self.failureResultOf(answer).value.status, 503)
