"""Site-wide policies: client publishing turned off, the empty-prefix refusal, and the
health URL's counters behind a token."""

from __future__ import annotations

import json

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope
from ws4tx.server.config import ServerConfig
from ws4tx.server.service import PushService
from ws4tx.testing import MemoryBroker

from test._server import ServerTestCase, identity_header
from test._wsclient import raw_request, status_of

JOHN = identity_header("john", ("chatusers",), "s-john")


class ClientPublishTests(ServerTestCase):
    """CLIENT_PUBLISH = False (--no-client-publish) refuses every client's publishing."""

    async def _publishAck(self) -> dict:
        client = await self.client("/ws/foobar?subscribe-broadcast&publish-broadcast&echo",
                                   headers=JOHN, protocols=(envelope.SUBPROTOCOL,))
        client.send(envelope.encode_event("chat.said", "hi", id=1))
        while True:
            message = json.loads(await client.text())
            if message.get("ws4tx") == "ack":
                return message

    async def test_authenticatedUserMayPublishByDefault(self):
        """By default a user's publish flag publishes (the ack carries no error)."""
        self.assertNotIn("error", await self._publishAck())

    async def test_noClientPublishDropsEveryPublishFlag(self):
        """With client publishing off, even an authenticated user's publish flags are
        dropped: the event is refused and nothing reaches Redis."""
        await self.service.stopService()
        await self.startServer(config={"client_publish": False})
        ack = await self._publishAck()
        self.assertIn("no handler", ack["error"])
        self.assertIsNone(self.redis.get("ws4tx:broadcast:foobar"))


class EmptyPrefixTests(SynchronousTestCase):
    """An empty prefix with client publishing lets clients overwrite other applications'
    keys: the server refuses to start so, in one line naming the settings, unless
    UNPREFIXED_PUBLISH says the site accepts it (then the startup log names the risk)."""

    def _startupLog(self, **config: object) -> list[str]:
        service = PushService(ServerConfig(**config), broker=MemoryBroker())
        with capturedLogs() as logged:
            service.startService()
        service.stopService()
        return [e["log_format"].format(**e) for e in logged if "risky" in e["log_format"]]

    def test_emptyPrefixWithPublishingIsRefused(self):
        """PREFIX = "" while clients may publish: no service, one line naming the way out,
        from ServerConfig's check and from ``twistd ws4tx`` alike."""
        from twisted.python import usage

        from ws4tx.server import tap

        e = self.assertRaises(ValueError, PushService, ServerConfig(prefix=""),
                              broker=MemoryBroker())
        refused = self.assertRaises(usage.UsageError, tap.makeService, _options("--prefix="))
        for message in (str(e), str(refused)):
            self.assertNotIn("\n", message)
            self.assertIn("PREFIX is empty and clients may publish", message)
            for name in ("CLIENT_PUBLISH = False", "UNPREFIXED_PUBLISH = True",
                         "--unprefixed-publish"):
                self.assertIn(name, message)

    def test_acceptedRiskIsLogged(self):
        """UNPREFIXED_PUBLISH = True starts the server and names the risk in its log."""
        (warning,) = self._startupLog(prefix="", unprefixed_publish=True)
        self.assertIn("prefix is empty", warning)
        self.assertIn("UNPREFIXED_PUBLISH", warning)

    def test_noWarningWithoutTheRisk(self):
        """No refusal nor warning with a prefix, nor with client publishing off."""
        self.assertEqual(self._startupLog(), [])
        self.assertEqual(self._startupLog(prefix="", client_publish=False), [])


def _options(*argv: str) -> object:
    from ws4tx.server import tap

    options = tap.Options()
    options.parseOptions(["--redis", "redis://127.0.0.1:1/0", *argv])
    return options


class HealthTokenTests(ServerTestCase):
    """With a health token the counters need it; the status stays public."""

    config = ServerTestCase.config.replace(health_token="s3cret-token")

    async def _health(self, authorization: str | None = None) -> tuple[int, dict]:
        extra = f"Authorization: {authorization}\r\n" if authorization else ""
        request = (f"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\n{extra}"
                   "Connection: close\r\n\r\n").encode()
        status, text = status_of(await raw_request(self.port, request))
        return status, json.loads(text.split("\r\n\r\n", 1)[1])

    async def _delivering(self) -> None:
        client = await self.client("/ws/foobar?subscribe-broadcast")
        await self.service.broker.publish("ws4tx:broadcast:foobar", b"after the probe")
        self.assertEqual(await client.text(), "after the probe")

    async def test_countersNeedTheToken(self):
        """Without the token (or with a wrong one) the body has the status and the Redis
        state only; with it, the counters too."""
        await self._delivering()
        for authorization in (None, "Bearer wrong", "s3cret-token", "Bearer s3cret-tokenX"):
            status, body = await self._health(authorization)
            self.assertEqual((status, body), (200, {"status": "ok", "redis": "delivering"}))
        status, body = await self._health("Bearer s3cret-token")
        self.assertEqual(status, 200)
        self.assertEqual(body["clients"], 1)
        self.assertIn("frames", body["counters"])

    async def test_withoutATokenTheCountersArePublic(self):
        """Without a configured token the counters are public, as before."""
        await self.service.stopService()
        await self.startServer(config={"health_token": None})
        await self._delivering()
        _, body = await self._health()
        self.assertIn("counters", body)
