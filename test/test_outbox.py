"""The outbox behind ``on_commit=True`` and ``manage.py ws4tx_relay``: real transactions of
the test database, a real Redis that is stopped and started again."""

from __future__ import annotations

import io

from ws4tx import _outbox, api

from test._djangoredis import DjangoRedisTestCase

CHAT = "ws4tx:broadcast:chat"


def relay_once() -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("ws4tx_relay", "--once", stdout=out)
    return out.getvalue().strip()


class OutboxTests(DjangoRedisTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.settings(WS4TX_HISTORY={"chat": {"size": 10, "ttl": 600}},
                      WS4TX_PUBLISH_TIMEOUT=0.5)

    def rows(self) -> list[bytes]:
        from ws4tx.models import Outbox

        return [bytes(row.payload) for row in Outbox.objects.order_by("id")]

    def payloads(self) -> list[bytes]:
        return [p.payload for p in api.history("chat", broadcast=True).publications]

    def test_rollbackSendsNothingAndLeavesNoRow(self):
        """A rolled-back transaction leaves no row: the relay has nothing to send."""
        from django.db import transaction

        with self.assertRaises(ZeroDivisionError), transaction.atomic():
            api.publish("chat", "never", broadcast=True, on_commit=True)
            self.assertEqual(self.rows(), [b"never"])  # written in the transaction
            raise ZeroDivisionError
        self.assertEqual(self.rows(), [])
        self.assertEqual(relay_once(), "0 outbox message(s) sent")
        self.assertEqual(self.payloads(), [])

    def test_commitSendsAndDeletesTheRow(self):
        """After the commit the message is delivered once and its row is gone."""
        from django.db import transaction

        listener = self.listen(CHAT)
        with transaction.atomic():
            api.emit("chat", "paid", {"order": 42}, broadcast=True, on_commit=True)
            self.assertEqual(listener.received(), [])
        self.assertEqual(len(listener.received()), 1)
        self.assertEqual(self.rows(), [])

    def test_redisDownAtCommitKeepsTheRowForTheRelay(self):
        """Redis down at the commit: no error for the caller (a warning), the row stays;
        ws4tx_relay --once fails with one line while Redis is down, and sends it once,
        in order, when Redis is back."""
        from django.core.management.base import CommandError
        from django.db import transaction

        self.redis.stop()
        with self.assertLogs("ws4tx", "WARNING") as logged:
            for text in ("first", "second"):
                with transaction.atomic():
                    api.publish("chat", text, broadcast=True, on_commit=True)
        self.assertIn("ws4tx_relay sends it", logged.output[0])
        self.assertEqual(self.rows(), [b"first", b"second"])
        with self.assertRaises(CommandError) as caught:
            relay_once()
        self.assertIn("outbox not sent", str(caught.exception))
        self.assertEqual(self.rows(), [b"first", b"second"])
        self.redis.start()
        self.store.close()
        listener = self.listen(CHAT)
        self.assertEqual(relay_once(), "2 outbox message(s) sent")
        self.assertEqual(relay_once(), "0 outbox message(s) sent")
        self.assertEqual([m.split(b"__", 2)[-1] for _, m in listener.received()],
                         [b"first", b"second"])
        self.assertEqual(self.payloads(), [b"first", b"second"])
        self.assertEqual(self.rows(), [])

    def test_aLaterCommitSendsTheOlderPendingRowsFirst(self):
        """A commit after Redis came back sends what is still pending before its own."""
        from django.db import transaction

        self.redis.stop()
        with self.assertLogs("ws4tx", "WARNING"), transaction.atomic():
            api.publish("chat", "pending", broadcast=True, on_commit=True)
        self.redis.start()
        with transaction.atomic():
            api.publish("chat", "new", broadcast=True, on_commit=True)
        self.assertEqual(self.payloads(), [b"pending", b"new"])
        self.assertEqual(self.rows(), [])

    def test_rowSentButNotDeletedIsDeliveredOnce(self):
        """A crash between the send and the delete: the relay sends the row again, and
        its idempotency key makes Redis store and deliver it once."""
        from django.db import transaction

        from ws4tx.models import Outbox

        self.redis.stop()
        with self.assertLogs("ws4tx", "WARNING"), transaction.atomic():
            api.publish("chat", "once", broadcast=True, users=["john"], on_commit=True)
        self.redis.start()
        self.store.close()
        listener = self.listen(CHAT, "ws4tx:user:john:chat")
        first = _outbox.send(Outbox.objects.get())  # ... and the process dies here
        self.assertEqual(int(first), 2)
        self.assertEqual(relay_once(), "1 outbox message(s) sent")
        self.assertEqual(len(listener.received()), 2)  # one per channel, not two
        self.assertEqual(self.payloads(), [b"once"])
        self.assertEqual(self.rows(), [])

    def test_givenKeyIsTheRowsKey(self):
        """A key given with on_commit is the one the row is published with: a direct
        publish of the same key later is a repeat."""
        from django.db import transaction

        with transaction.atomic():
            api.publish("chat", "paid", broadcast=True, key="order-42", on_commit=True)
        self.assertTrue(api.publish("chat", "paid", broadcast=True, key="order-42").repeated)
        self.assertEqual(self.payloads(), [b"paid"])

    def test_relayRefusesABadInterval(self):
        from django.core.management import call_command
        from django.core.management.base import CommandError

        with self.assertRaises(CommandError) as caught:
            call_command("ws4tx_relay", "--interval", "0")
        self.assertIn("--interval", str(caught.exception))
