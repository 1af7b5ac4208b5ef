"""Token connections last as long as their token: the server asks an event client for a
fresh one before it expires, checks it as it checked the first and extends the connection;
a connection without a fresh token is closed with 4002 when its token expires. The timing
on a task.Clock; the whole exchange with real WebSocket clients against the Django
authenticator."""

from __future__ import annotations

import json
import time
from unittest import mock

from twisted.internet import reactor, task
from twisted.trial.unittest import SynchronousTestCase

from test._django import setup_django

setup_django()

from django.core import signing  # noqa: E402
from django.test import override_settings  # noqa: E402

from ws4tx import closecodes, envelope, tokens  # noqa: E402
from ws4tx.server.expiry import REFRESH_LEAD, Expiry  # noqa: E402

from test._wsclient import TIMEOUT, WSClient  # noqa: E402
from test.test_django_auth import DjangoServerTestCase, request_with_session  # noqa: E402

EVENTS = (envelope.SUBPROTOCOL,)
PATH = "/ws/foobar?subscribe-broadcast"


class ExpiryTests(SynchronousTestCase):
    """The deadline of one connection, on a Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.log: list[tuple[str, float]] = []

    def expiry(self, deadline: float) -> Expiry:
        return Expiry(self.clock, deadline, lambda at: self.log.append(("ask", at)),
                      lambda: self.log.append(("expire", self.clock.seconds())))

    def test_asksTheLeadBeforeAndExpiresAtTheDeadline(self):
        self.expiry(1100)
        self.clock.advance(100 - REFRESH_LEAD - 0.001)
        self.assertEqual(self.log, [])
        self.clock.advance(0.001)
        self.assertEqual(self.log, [("ask", 1100)])
        self.clock.advance(REFRESH_LEAD - 0.001)
        self.assertEqual(len(self.log), 1)
        self.clock.advance(0.001)
        self.assertEqual(self.log, [("ask", 1100), ("expire", 1100)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aDeadlineCloserThanTheLeadIsAskedHalfWay(self):
        self.expiry(1010)
        self.clock.advance(4.999)
        self.assertEqual(self.log, [])
        self.clock.advance(0.001)
        self.assertEqual(self.log, [("ask", 1010)])
        self.clock.advance(5)
        self.assertEqual(self.log[-1], ("expire", 1010))

    def test_aFreshTokenThatEndsNoLaterIsNotAskedAgain(self):
        expiry = self.expiry(1010)
        self.clock.advance(5)
        expiry.extend(1010)
        self.clock.advance(5)
        self.assertEqual(self.log, [("ask", 1010), ("expire", 1010)])

    def test_extendMovesTheDeadline(self):
        expiry = self.expiry(1010)
        self.clock.advance(5)
        expiry.extend(1300)
        self.clock.advance(5)
        self.assertEqual(self.log, [("ask", 1010)])  # not expired at the old deadline
        self.clock.advance(300 - 10 - REFRESH_LEAD)
        self.assertEqual(self.log[-1], ("ask", 1300))
        self.clock.advance(REFRESH_LEAD)
        self.assertEqual(self.log[-1], ("expire", 1300))

    def test_extendWithoutADeadlineAndStopEndEverything(self):
        expiry = self.expiry(1100)
        expiry.extend(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.expiry(1100).stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(200)
        self.assertEqual(self.log, [])


class TokenConnectionTests(DjangoServerTestCase):
    """Token connections through the Django authenticator, real clients."""

    async def _setUp(self) -> None:
        await super()._setUp()
        _, self.key = self.login("john")

    def token(self, key=None) -> str:
        return tokens.token_for_request(request_with_session(key or self.key))

    async def nextEvent(self, client: WSClient) -> dict:
        return json.loads(await client.text())

    async def refresh(self, client: WSClient, token: str, id: int = 1) -> dict:
        client.send(envelope.encode_event(envelope.REFRESH_EVENT, {"token": token}, id=id))
        return await self.nextEvent(client)

    async def test_aRawTokenConnectionIsClosedWith4002WhenItsTokenExpires(self):
        self.settings_override(WS4TX_TOKEN_MAX_AGE=1)
        token = self.token()
        started = reactor.seconds()
        by_token = await self.client(PATH + "&token=" + token)
        by_cookie = await self.client(PATH, self.cookie(self.key))
        self.assertEqual(await by_token.closed.addTimeout(TIMEOUT, reactor),
                         (closecodes.TOKEN_EXPIRED, "token expired"))
        # The token was signed in the second before `started` at the earliest.
        self.assertLess(reactor.seconds() - started, 1 + 1 + 0.5)
        self.publish("ws4tx:broadcast:foobar", "still here")
        self.assertEqual(await by_cookie.text(), "still here")
        # Counted under the server's code (the client's echo of the close frame aside).
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.assertEqual(dict(self.factory.node.closed), {"4002": 1})

    async def test_anEventClientIsAskedAndAFreshTokenKeepsItOpen(self):
        self.settings_override(WS4TX_TOKEN_MAX_AGE=1)
        token = self.token()
        events = await self.client(PATH + "&token=" + token, protocols=EVENTS)
        control = await self.client(PATH + "&token=" + token)  # same token, never refreshed
        asked = await self.nextEvent(events)
        self.assertEqual(asked["event"], envelope.REFRESH_EVENT)
        old = asked["data"]["expires"]
        self.assertEqual(old, tokens.expires_at(token, 1))
        with override_settings(WS4TX_TOKEN_MAX_AGE=60):
            fresh = self.token()
            ack = await self.refresh(events, fresh)
        self.assertEqual(ack, {"ws4tx": "ack", "id": 1,
                               "data": {"expires": tokens.expires_at(fresh, 60)}})
        # The unrefreshed one is closed at the old deadline; the refreshed one stays.
        self.assertEqual((await control.closed.addTimeout(TIMEOUT, reactor))[0],
                         closecodes.TOKEN_EXPIRED)
        self.assertGreaterEqual(reactor.seconds(), old - 0.05)
        self.publish("ws4tx:broadcast:foobar", "still here")
        self.assertEqual(await events.text(), "still here")
        self.assertFalse(events.closed.called)

    async def test_subscribesAreAuthorizedWithTheFreshToken(self):
        """After a refresh, subscribe frames are authorized with the fresh token: a
        subscribe after the first token expired is allowed."""
        self.settings_override(WS4TX_TOKEN_MAX_AGE=6)
        with mock.patch.object(signing.TimestampSigner, "timestamp",
                               lambda _: signing.b62_encode(int(time.time()) - 5)):
            old = self.token()  # signed 5 s ago: about a second left
        events = await self.client("/ws/?token=" + old, protocols=EVENTS)
        control = await self.client(PATH + "&token=" + old)
        connection, = (c for c in self.factory.node.router.hub.clients()
                       if c.speaks_events)
        fresh = self.token()
        self.assertNotEqual(fresh, old)
        ack = await self.refresh(events, fresh)
        self.assertEqual(ack["data"], {"expires": tokens.expires_at(fresh)})
        self.assertEqual(connection.handshake.params["token"], [fresh])
        # The first token is expired once the connection that kept it is closed.
        self.assertEqual((await control.closed.addTimeout(TIMEOUT, reactor))[0],
                         closecodes.TOKEN_EXPIRED)
        events.send(json.dumps({"ws4tx": "subscribe", "id": 2, "facility": "foobar",
                                "audiences": {"user": True}}, separators=(",", ":")))
        self.assertEqual(await self.nextEvent(events), {
            "ws4tx": "subscribed", "id": 2, "facility": "foobar",
            "channels": ["ws4tx:user:john:foobar"]})

    async def test_aTokenOfAnotherIdentityOrABadOneIsRefused(self):
        events = await self.client(PATH + "&token=" + self.token(), protocols=EVENTS)
        _, marys = self.login("mary")
        for token, words in ((self.token(marys), "another identity"),
                             (self.token()[:-2] + "xx", "bad signature"),
                             ("", '{"token"')):
            ack = await self.refresh(events, token)
            self.assertIn(words, ack["error"])
        self.assertFalse(events.closed.called)

    async def test_aCookieConnectionHasNoTokenToRefresh(self):
        events = await self.client(PATH, self.cookie(self.key), protocols=EVENTS)
        ack = await self.refresh(events, self.token())
        self.assertEqual(ack["error"], "this connection has no token to refresh")
