"""Site-wide policies: client publishing turned off, and the empty-prefix warning."""

from __future__ import annotations

import json

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import envelope
from ws4tx.config import ServerConfig
from ws4tx.service import PushService
from ws4tx.testing import MemoryBroker

from test._server import ServerTestCase, identity_header

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


class EmptyPrefixWarningTests(SynchronousTestCase):
    """An empty prefix with client publishing is named as a risk at startup."""

    def _startupLog(self, **config: object) -> list[str]:
        service = PushService(ServerConfig(**config), broker=MemoryBroker())
        with capturedLogs() as logged:
            service.startService()
        service.stopService()
        return [e["log_format"].format(**e) for e in logged if "risky" in e["log_format"]]

    def test_emptyPrefixWithPublishingWarns(self):
        """PREFIX = "" while clients may publish logs a warning naming the risk."""
        (warning,) = self._startupLog(prefix="")
        self.assertIn("prefix is empty", warning)
        self.assertIn("--no-client-publish", warning)

    def test_noWarningWithoutTheRisk(self):
        """No warning with a prefix, nor with client publishing off."""
        self.assertEqual(self._startupLog(), [])
        self.assertEqual(self._startupLog(prefix="", client_publish=False), [])
