"""Authentication of WebSocket handshakes from Django: session cookies with several
session engines, invalidation, tokens, ws4redis's hooks, and cross-site WebSocket
hijacking, through a real server and real clients."""

from __future__ import annotations

import time

from django.core.exceptions import PermissionDenied

from test._django import setup_django

setup_django()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from ws4tx import _django, tokens  # noqa: E402

from test._server import ServerTestCase, non_probe  # noqa: E402
from test._wsclient import handshake_request, raw_request, status_of  # noqa: E402

ALL = "?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"


def allow_broadcast_only(request, channels):
    """An ALLOWED_CHANNELS hook: only broadcast, and never for 'mary'."""
    if request.user.get_username() == "mary":
        raise PermissionDenied("mary may not listen here")
    return [c for c in channels if c.endswith("-broadcast")]


def header_user(request):
    """A PROCESS_REQUEST hook: the user named by a header (like a token scheme would)."""
    from django.contrib.auth.models import AnonymousUser

    name = request.META.get("HTTP_X_USER")
    request.user = User.objects.get(username=name) if name else AnonymousUser()
    request.session = None


class DjangoAuthTests(ServerTestCase):
    """The default authenticator of `twistd ws4tx --django-settings`."""

    async def _setUp(self) -> None:
        group, _ = Group.objects.get_or_create(name="chatusers")
        for name in ("john", "mary"):
            user = User.objects.filter(username=name).first() or \
                User.objects.create_user(name, password="secret")
            user.set_password("secret")
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

    async def test_processRequestHookReplacesSessionAuth(self):
        """PROCESS_REQUEST replaces the default session processing."""
        with override_settings(WS4TX_PROCESS_REQUEST=header_user):
            await self.service.stopService()
            await self.startServer()
            channels = await self._channels({"X-User": "mary"}, "?subscribe-user")
        self.assertEqual(channels, ["ws4tx:user:mary:foobar"])

    async def test_foreignOriginWithCookieIsRefused(self):
        """Cross-site WebSocket hijacking: another site's page connecting with the user's
        cookie is refused with 403; the site's own origins are accepted."""
        _, key = self.login("john")
        status, text = await self._status(
            "/ws/foobar" + ALL, self.cookie(key, Origin="https://evil.example.net"))
        self.assertEqual(status, 403)
        self.assertIn("cross-site", text)
        for origin in ("http://localhost:8000", "https://example.com",
                       f"http://127.0.0.1:{self.port}"):
            channels = await self._channels(self.cookie(key, Origin=origin))
            self.assertIn("ws4tx:user:john:foobar", channels, origin)

    async def test_foreignOriginWithoutCookieIsAnonymous(self):
        """Without the session cookie a foreign page gets an anonymous connection."""
        channels = await self._channels({"Origin": "https://other.example.net"})
        self.assertEqual(channels, ["ws4tx:broadcast:foobar"])
