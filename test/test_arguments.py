"""The Django side's ws4tx.api and a handler's ServerAPI refuse the same bad arguments with
the same message: both take their checks from ws4tx._arguments (and ws4tx.control)."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.task import Clock

from ws4tx import api
from ws4tx.history import Retention, Rule
from ws4tx.server.handlers import ServerAPI
from ws4tx.testing import MemoryBroker

from test._djangoredis import DjangoTestCase

#: (what is wrong, the api call, the same call on a ServerAPI, part of the message).
BAD: list[tuple[str, Callable[[], Any], Callable[[ServerAPI], Any], str]] = [
    ("publish to nobody",
     lambda: api.publish("chat", "m"),
     lambda s: s.publish("chat", "m"),
     "no audience"),
    ("publish to a facility with a colon",
     lambda: api.publish("a:b", "m", broadcast=True),
     lambda s: s.publish("a:b", "m", broadcast=True),
     "may contain only"),
    ("publish to an empty facility",
     lambda: api.publish("", "m", users=["ann"]),
     lambda s: s.publish("", "m", users=["ann"]),
     "facility is missing"),
    ("publish with a negative expire",
     lambda: api.publish("chat", "m", broadcast=True, expire=-1),
     lambda s: s.publish("chat", "m", broadcast=True, expire=-1),
     "expire must be >= 0"),
    ("publish with an expire that is no number",
     lambda: api.publish("chat", "m", broadcast=True, expire="soon"),
     lambda s: s.publish("chat", "m", broadcast=True, expire="soon"),
     "expire"),
    ("emit one of the server's own events",
     lambda: api.emit("chat", "ws4tx.recovered", broadcast=True),
     lambda s: s.emit("ws4tx.recovered", facility="chat", broadcast=True),
     "ws4tx."),
    ("emit to nobody",
     lambda: api.emit("chat", "said"),
     lambda s: s.emit("said", facility="chat"),
     "no audience"),
    ("the history of a facility without history",
     lambda: api.history("chat", broadcast=True),
     lambda s: s.history("chat", broadcast=True),
     "keeps no history"),
    ("the history of two channels",
     lambda: api.history("hist", users=["ann", "bob"]),
     lambda s: s.history("hist", users=["ann", "bob"]),
     "history is read from one channel"),
    ("the history of nobody",
     lambda: api.history("hist"),
     lambda s: s.history("hist"),
     "no audience"),
    ("the history since a negative offset",
     lambda: api.history("hist", broadcast=True, since=-1),
     lambda s: s.history("hist", broadcast=True, since=-1),
     "since must be an offset"),
    ("the history with a limit of 0",
     lambda: api.history("hist", broadcast=True, limit=0),
     lambda s: s.history("hist", broadcast=True, limit=0),
     "limit must be"),
    ("the presence of a facility without presence",
     lambda: api.presence("chat"),
     lambda s: s.presence("chat"),
     "keeps no presence"),
    ("the presence of two audiences",
     lambda: api.presence("pres", broadcast=True, users=["ann"]),
     lambda s: s.presence("pres", broadcast=True, users=["ann"]),
     "ONE audience"),
    ("the presence of a facility with a colon",
     lambda: api.presence_stats("a:b"),
     lambda s: s.presence_stats("a:b"),
     "may contain only"),
    ("disconnect nobody",
     lambda: api.disconnect(),
     lambda s: s.disconnect(),
     "users or sessions"),
    ("disconnect with a reason over 120 bytes",
     lambda: api.disconnect(users=["ann"], reason="x" * 121),
     lambda s: s.disconnect(users=["ann"], reason="x" * 121),
     "120"),
    ("unsubscribe from an audience that does not exist",
     lambda: api.unsubscribe(users=["ann"], audiences=["everyone"]),
     lambda s: s.unsubscribe(users=["ann"], audiences=["everyone"]),
     "everyone"),
    ("channels matching an empty pattern",
     lambda: api.channels(""),
     lambda s: s.channels(""),
     "pattern must be"),
]


class SameRefusalsTests(DjangoTestCase):
    """Each bad call is refused by both APIs, with the same exception and message."""

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"hist": {"size": 5, "ttl": 60}},
                      WS4TX_PRESENCE=["pres"])
        self.broker = MemoryBroker()
        self.server = ServerAPI(self.broker, "ws4tx",
                                history=(Rule("hist", Retention(5, 60)),),
                                presence=("pres",), listen=lambda channel, receiver: None,
                                clock=Clock())

    def refusal(self, call: Callable[[], Any]) -> Exception:
        """What ``call`` raised, or what the Deferred it returned failed with."""
        try:
            result = call()
        except (ValueError, TypeError) as e:
            return e
        if isinstance(result, defer.Deferred):
            return self.failureResultOf(result).value  # type: ignore[no-any-return]
        self.fail(f"accepted, returned {result!r}")

    def test_bothRefuseWithTheSameMessage(self):
        """Every row of the table: the same type, the same words, and the expected ones."""
        for what, django_side, server_side, words in BAD:
            on_django = self.refusal(django_side)
            on_server = self.refusal(lambda call=server_side: call(self.server))
            self.assertIsInstance(on_django, ValueError, what)
            self.assertEqual((type(on_server), str(on_server)),
                             (type(on_django), str(on_django)), what)
            self.assertIn(words, str(on_django), what)

    def test_theTableCanFail(self):
        """A good call is not refused: the ServerAPI publishes it, and the helper says a
        call was accepted."""
        self.broker.connected = True  # up, with no listener to tell
        published = self.server.publish("chat", "m", broadcast=True, expire=0)
        self.assertEqual(self.successResultOf(published), 0)
        with self.assertRaises(self.failureException):
            self.refusal(lambda: self.server.publish("chat", "m", broadcast=True, expire=0))
