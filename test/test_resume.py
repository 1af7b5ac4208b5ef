"""Resumable sessions: resume tokens signed and verified (ws4tx._resume), and a real
server (real Redis, real WebSocket clients, Django's test database) that reopens a cookie
connection's channels from its resume token without a database query, and refuses it on
another node once the user logged out."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from test._django import setup_django

setup_django()

from django.db.backends.utils import CursorWrapper  # noqa: E402
from django.test import override_settings  # noqa: E402

from ws4tx import _resume, _sync_redis, envelope, naming, tokens  # noqa: E402
from ws4tx.naming import Flags, Identity  # noqa: E402
from ws4tx.server import _django  # noqa: E402
from ws4tx.server._resume import resume  # noqa: E402
from ws4tx.server.auth import HandshakeRequest  # noqa: E402

from test._server import start_node  # noqa: E402
from test._wsclient import TIMEOUT, WSClient, connect  # noqa: E402
from test.test_django_auth import DjangoServerTestCase  # noqa: E402

FLAGS = Flags(frozenset({"user", "broadcast"}), frozenset(), False)
CLAIM = _resume.Claim(Identity("john", frozenset({"chatusers"}), "ab" * 16), "foobar",
                      FLAGS, 3, None)


def _unstamped(claim: Any) -> Any:
    """``claim`` without when it was authenticated (the token stamps it)."""
    return dataclasses.replace(claim, authenticated=None)


class SignatureTests(unittest.SynchronousTestCase):
    """Signing and verifying resume tokens: no database, no Redis."""

    def test_renewalsNeverOutliveTheChain(self):
        """A renewed token keeps when its identity was really authenticated: it expires at
        the latest CHAIN x RESUME_TTL after it, and one signed past that is refused
        (renewed for ever, a cookie connection's tokens outlived its session, its groups
        and any ban of the site's hooks)."""
        chain = _resume.CHAIN * 300
        authenticated = time.time() - chain + 100
        claim = dataclasses.replace(CLAIM, authenticated=authenticated)
        token, expires = _resume.sign(claim)
        self.assertEqual(expires, int(authenticated) + chain)
        self.assertEqual(_resume.verify(token).authenticated, int(authenticated))
        late = dataclasses.replace(CLAIM, authenticated=time.time() - chain - 1)
        token, expires = _resume.sign(late)
        self.assertLess(expires, time.time())
        with self.assertRaises(_resume.InvalidResume) as caught:
            _resume.verify(token)
        self.assertTrue(caught.exception.expired)

    def test_aTokenGivesBackItsClaim(self):
        """What was signed comes back: identity, facility, flags, counter."""
        token, expires = _resume.sign(CLAIM)
        self.assertEqual(_unstamped(_resume.verify(token)), CLAIM)
        self.assertLess(abs(expires - (time.time() + 300)), 2)

    def test_aTamperedTokenIsRefused(self):
        """Changing any character of the payload or signature breaks it."""
        token, _ = _resume.sign(CLAIM)
        for i in (0, len(token) // 2, len(token) - 1):
            forged = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
            with self.assertRaises(_resume.InvalidResume) as caught:
                _resume.verify(forged)
            self.assertFalse(caught.exception.expired)

    def test_anExpiredTokenIsRefused(self):
        """A token signed longer ago than RESUME_TTL is refused as expired; within it,
        accepted."""
        old, expires = _resume.sign(CLAIM, now=time.time() - 301)
        self.assertLess(expires, time.time())
        with self.assertRaises(_resume.InvalidResume) as caught:
            _resume.verify(old)
        self.assertTrue(caught.exception.expired)
        recent, _ = _resume.sign(CLAIM, now=time.time() - 290)
        self.assertEqual(_unstamped(_resume.verify(recent)), CLAIM)
        with override_settings(WS4TX_RESUME_TTL=60), self.assertRaises(
                _resume.InvalidResume):
            _resume.verify(recent)

    def test_anotherSaltIsRefusedBothWays(self):
        """A connection token is no resume token, and a resume token no connection
        token: each is signed with a salt of its own."""
        with self.assertRaises(_resume.InvalidResume):
            _resume.verify(tokens.make_token("john", ["chatusers"]))
        token, _ = _resume.sign(CLAIM)
        with self.assertRaises(tokens.InvalidToken):
            tokens.read_token(token)

    def test_anotherSecretIsRefused(self):
        """A token signed with another SECRET_KEY is refused."""
        with override_settings(SECRET_KEY="another secret, another site" * 2):
            token, _ = _resume.sign(CLAIM)
        with self.assertRaises(_resume.InvalidResume):
            _resume.verify(token)

    def test_aRotatedSecretIsSeen(self):
        """The signer is kept between tokens, yet a change of SECRET_KEY and
        SECRET_KEY_FALLBACKS is seen at once: after a rotation a token of the old key is
        still accepted (it is a fallback), one of the new key too."""
        from django.conf import settings

        old_key = settings.SECRET_KEY
        old, _ = _resume.sign(CLAIM)
        with override_settings(SECRET_KEY="the rotated secret of the site" * 2,
                               SECRET_KEY_FALLBACKS=[old_key]):
            self.assertEqual(_unstamped(_resume.verify(old)), CLAIM)
            new, _ = _resume.sign(CLAIM)
            self.assertEqual(_unstamped(_resume.verify(new)), CLAIM)
        with self.assertRaises(_resume.InvalidResume):
            _resume.verify(new)


class _Counters:
    """A broker's ``fetch`` over a dict (the revocation counters)."""

    def __init__(self, **values: int) -> None:
        self.values = {naming.revocation_key("ws4tx", k): str(v).encode()
                       for k, v in values.items()}
        self.reads: list[str] = []

    def fetch(self, key: str) -> defer.Deferred[Any]:
        self.reads.append(key)
        return defer.succeed(self.values.get(key))


def _handshake(query: str, facility: str = "foobar") -> HandshakeRequest:
    return HandshakeRequest(peer="tcp:127.0.0.1:1", host="h", path="/ws/" + facility,
                            query=query, params={}, headers={}, facility=facility,
                            flags=naming.parse_flags(query))


class ResumeDecisionTests(unittest.SynchronousTestCase):
    """What a presented resume token grants, given the revocation counter."""

    def decide(self, counters: _Counters, token: str,
               query: str = "subscribe-user&subscribe-broadcast&subscribe-group",
               facility: str = "foobar") -> tuple[Any, Counter[str]]:
        outcomes: Counter[str] = Counter()
        authenticator = _django.SessionAuthenticator(_django_settings())
        result = self.successResultOf(resume(authenticator, counters, "ws4tx",
                                             _handshake(query, facility), token,
                                             time.time(), outcomes))
        return result, outcomes

    def test_anUnmovedCounterResumesWithTheSignedChannelsOnly(self):
        """With the counter as signed, the grant is the token's identity and the flags
        both the token and the URL name (subscribe-group was not admitted at connect);
        one counter read."""
        counters = _Counters(john=3)
        (grant, counter, _), outcomes = self.decide(counters, _resume.sign(CLAIM)[0])
        self.assertEqual(grant.identity, CLAIM.identity)
        self.assertEqual(grant.flags, FLAGS)
        self.assertEqual(counter, 3)
        self.assertEqual(counters.reads, ["ws4tx:revoked:john"])
        self.assertEqual(outcomes, {"resumed": 1})

    def test_aMovedCounterIsRevoked(self):
        """Once the counter moved (logout, ...) the token grants nothing."""
        result, outcomes = self.decide(_Counters(john=4), _resume.sign(CLAIM)[0])
        self.assertIsNone(result)
        self.assertEqual(outcomes, {"revoked": 1})

    def test_aNeverBumpedCounterIsZero(self):
        claim = _resume.Claim(CLAIM.identity, "foobar", FLAGS, 0, None)
        (grant, _, _), _ = self.decide(_Counters(), _resume.sign(claim)[0])
        self.assertEqual(grant.identity, CLAIM.identity)

    def test_otherFacilityForgedOrExpiredCredentialFallsBack(self):
        counters = _Counters(john=3)
        token = _resume.sign(CLAIM)[0]
        self.assertEqual(self.decide(counters, token, facility="other")[1],
                         {"other facility": 1})
        self.assertEqual(self.decide(counters, token[:-2] + "xx")[1], {"invalid": 1})
        ended = _resume.Claim(CLAIM.identity, "foobar", FLAGS, 3, time.time() - 1)
        self.assertEqual(self.decide(counters, _resume.sign(ended)[0])[1],
                         {"credential expired": 1})
        self.assertEqual(counters.reads, [])


def _django_settings() -> Any:
    from django.conf import settings

    return settings


class _Queries:
    """Counts the SQL statements any thread runs."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.count = 0
        self._lock = threading.Lock()
        original = CursorWrapper.execute

        def execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
            return original(cursor, *args, **kwargs)

        case.patch(CursorWrapper, "execute", execute)


PATH = "/ws/foobar?subscribe-user&subscribe-broadcast&subscribe-session&resume="


class ResumeServerTests(DjangoServerTestCase):
    """A cookie client of the default authenticator resumes on a real server."""

    async def _setUp(self) -> None:
        await super()._setUp()
        _sync_redis.use_url(self.redis_server.url)
        self.addCleanup(_sync_redis.reset)

    async def events(self, port: int, path: str, headers: dict[str, str]) -> WSClient:
        return await connect(port, path, protocols=[envelope.SUBPROTOCOL], headers=headers)

    async def sessionEvent(self, client: WSClient) -> dict[str, Any]:
        while True:
            message = json.loads(await client.text())
            if message.get("event") == envelope.SESSION_EVENT:
                data: dict[str, Any] = message["data"]
                return data

    async def test_aCookieClientResumesWithoutTheDatabaseUntilLogout(self):
        """A cookie client gets a resume token; reconnecting with it runs no SQL and
        gives the same channels (the cookie handshake ran some); after logout a second
        node refuses the token and the client is authenticated by its cookie again
        (anonymous now)."""
        browser, key = self.login("john")
        queries = _Queries(self)
        first = await self.events(self.port, PATH, self.cookie(key))
        # its join, which the reconnect below must not take for its own
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        session = await self.sessionEvent(first)
        self.assertGreater(queries.count, 0)  # the cookie's session and user
        self.assertLess(abs(session["expires"] - (time.time() + 300)), 5)
        await first.close()
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)

        queries.count = 0
        again = await self.events(self.port, PATH + session["resume"],
                                  self.cookie(key))
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(queries.count, 0)
        self.assertEqual(self.factory.node.resumes, {"resumed": 1})
        renewed = await self.sessionEvent(again)  # a token for the next reconnect
        self.assertEqual(_resume.verify(renewed["resume"]).identity,
                         _resume.verify(session["resume"]).identity)
        self.publish("ws4tx:user:john:foobar", "for john")
        self.assertEqual(await again.text(), "for john")

        other = await start_node(self, self.config.replace(redis=self.redis_server.address),
                                 _django.SessionAuthenticator(_django_settings()))
        started = reactor.seconds()
        browser.logout()
        await again.closed.addTimeout(TIMEOUT, reactor)
        after = await self.events(other.port, PATH + session["resume"],
                                  self.cookie(key))
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertEqual(other.factory.node.resumes, {"revoked": 1})
        await other.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        self.publish("ws4tx:user:john:foobar", "for john only")
        self.publish("ws4tx:broadcast:foobar", "for everybody")
        self.assertEqual(await after.text(), "for everybody")
        await after.close()

    async def test_credentialChangesBumpTheCounter(self):
        """A password change, a deactivation, a deleted session and a deleted user each
        bump the user's revocation counter (a resume token made before is refused)."""
        from django.contrib.auth.models import User
        from django.contrib.sessions.models import Session

        def counter() -> int:
            return int(self.redis.get("ws4tx:revoked:mary") or 0)

        _, key = self.login("mary")
        user = User.objects.get(username="mary")
        user.set_password("changed")
        user.save()
        self.assertEqual(counter(), 1)
        user.is_active = False
        user.save()
        self.assertEqual(counter(), 2)
        user.is_active = True
        user.save()
        self.assertEqual(counter(), 2)
        Session.objects.get(session_key=key).delete()
        self.assertEqual(counter(), 3)
        User.objects.create_user("gone", password="x").delete()
        self.assertEqual(int(self.redis.get("ws4tx:revoked:gone") or 0), 1)

    async def test_aSiteDisconnectAndAnyCredentialChangeRevoke(self):
        """api.disconnect(users=...) revokes the users' resume tokens (their connections
        come back authenticated anew, as its documentation says), once per call; a
        password change revokes them even when DISCONNECT_ON_LOGOUT keeps the sockets."""
        from django.contrib.auth.models import User

        from ws4tx import api

        def counter(name: str) -> int:
            return int(self.redis.get(f"ws4tx:revoked:{name}") or 0)

        api.disconnect(users=["john", "mary"], reason="suspended")
        self.assertEqual((counter("john"), counter("mary")), (1, 1))
        api.disconnect(sessions=["some-session"])
        self.assertEqual((counter("john"), counter("mary")), (1, 1))
        self.settings_override(WS4TX_DISCONNECT_ON_LOGOUT=False)
        user = User.objects.get(username="mary")
        user.set_password("changed")
        user.save()
        self.assertEqual(counter("mary"), 2)

    async def test_aResumeReadmitsOnlyWhatTheHooksAdmitted(self):
        """With ALLOWED_CHANNELS narrowing john to broadcast, his resume token holds
        broadcast only: a resume that asks for his user channel does not get it."""
        from test.test_django_auth import allow_broadcast_only

        self.settings_override(WS4TX_ALLOWED_CHANNELS=allow_broadcast_only)
        await self.service.stopService()
        await self.startServer()
        _, key = self.login("john")
        first = await self.events(self.port, PATH, self.cookie(key))
        # its join, which the reconnect below must not take for its own
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        session = await self.sessionEvent(first)
        await first.close()
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(_resume.verify(session["resume"]).flags,
                         Flags(frozenset({"broadcast"}), frozenset(), False))
        again = await self.events(self.port, PATH + session["resume"], {})
        await self.factory.test_joined.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(self.factory.node.resumes, {"resumed": 1})
        self.publish("ws4tx:user:john:foobar", "for john")
        self.publish("ws4tx:broadcast:foobar", "for everybody")
        await self.sessionEvent(again)
        self.assertEqual(await again.text(), "for everybody")
        await again.close()
