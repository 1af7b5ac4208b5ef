"""The outbox behind ``on_commit=True`` and ``manage.py ws4tx_relay``: real transactions of
the test database, a real Redis that is stopped and started again."""

from __future__ import annotations

import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

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
        self.settings(WS4TX_HISTORY={"chat": {"size": 10, "ttl": 600},
                                     "poisoned": {"size": 10, "ttl": 600}},
                      WS4TX_PUBLISH_TIMEOUT=0.5)

    def rows(self) -> list[bytes]:
        from ws4tx.models import Outbox

        return [bytes(row.payload) for row in Outbox.objects.order_by("id")]

    def pending(self, facility: str, payload: bytes, history: bool = True,
                key: str = "", channels: object = None) -> Any:
        """A committed row that no commit sent (its process died), as the relay finds it."""
        from ws4tx.models import Outbox

        return Outbox.objects.create(
            facility=facility if history else "plain",
            channels=[f"ws4tx:broadcast:{facility}"] if channels is None else channels,
            payload=payload, expire=0, key=key or f"k-{payload.hex()}")

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

    def test_aLaterCommitOfTheSameChannelWaitsForTheOlderRow(self):
        """A commit after Redis came back, while an older row of its channel waits: its
        row goes to the relay, which sends both in order; a commit to another channel is
        not held up."""
        from django.db import transaction

        self.redis.stop()
        with self.assertLogs("ws4tx", "WARNING"), transaction.atomic():
            api.publish("chat", "pending", broadcast=True, on_commit=True)
        self.redis.start()
        self.store.close()
        with transaction.atomic():
            api.publish("chat", "new", broadcast=True, on_commit=True)
        self.assertEqual(self.payloads(), [])
        with transaction.atomic():
            api.publish("news", "elsewhere", broadcast=True, on_commit=True)
        self.assertEqual(self.rows(), [b"pending", b"new"])
        self.assertEqual(relay_once(), "2 outbox message(s) sent")
        self.assertEqual(self.payloads(), [b"pending", b"new"])
        self.assertEqual(self.rows(), [])

    def test_aTransactionsLaterRowWaitsForItsEarlierOne(self):
        """Two rows of one channel in one transaction, Redis down at the commit: the first
        is tried and kept; the second is left to the relay without waiting for Redis
        again (it could not overtake the first anyway); the relay sends both in order."""
        from django.db import transaction

        from ws4tx.models import Outbox

        self.redis.stop()
        with self.assertLogs("ws4tx", "INFO") as logged, transaction.atomic():
            api.publish("chat", "one", broadcast=True, on_commit=True)
            api.publish("chat", "two", broadcast=True, on_commit=True)
        self.assertEqual(list(Outbox.objects.order_by("id").values_list("attempts", flat=True)),
                         [1, 0])
        self.assertIn("left to ws4tx_relay", logged.output[-1])
        self.redis.start()
        self.store.close()
        self.assertEqual(relay_once(), "2 outbox message(s) sent")
        self.assertEqual(self.payloads(), [b"one", b"two"])

    def test_commitSendsOnlyWhatItsTransactionWrote(self):
        """A backlog of other channels (a process died before sending it) is left to the
        relay: the commit sends its own row, not every pending one."""
        from django.db import transaction

        backlog = [self.pending("news", b"old %d" % i) for i in range(3)]
        listener = self.listen(CHAT, "ws4tx:broadcast:news")
        with transaction.atomic():
            api.publish("chat", "mine", broadcast=True, on_commit=True)
        self.assertEqual([m.split(b"__", 2)[-1] for _, m in listener.received()], [b"mine"])
        self.assertEqual(self.rows(), [b"old 0", b"old 1", b"old 2"])
        self.assertEqual(relay_once(), "3 outbox message(s) sent")
        self.assertEqual([m for _, m in listener.received()], [b"old 0", b"old 1", b"old 2"])
        self.assertEqual(len(backlog), 3)

    def test_poisonRowIsSetAsideAndTheLaterRowsGo(self):
        """A row that can never be sent (Redis refuses it: its history's meta is no hash) is
        set aside with its error, said in one line and counted; the rows after it, of its
        channel too, go out; it is not tried again until --retry-failed."""
        from ws4tx import naming
        from ws4tx.models import Outbox

        _, meta = naming.history_keys("ws4tx", "ws4tx:broadcast:poisoned")
        self.store.set(meta, "not a hash")
        poison = self.pending("poisoned", b"poison", history=True)
        self.pending("chat", b"after")
        self.pending("poisoned", b"after on its channel", history=False)
        with self.assertLogs("ws4tx", "ERROR") as logged:
            self.assertEqual(relay_once(), "2 outbox message(s) sent, 1 set aside "
                                           "(failed for good, see their error)")
        self.assertEqual(len(logged.output), 1)
        self.assertNotIn("\n", logged.output[0])
        self.assertIn(f"outbox message {poison.pk} set aside", logged.output[0])
        self.assertIn("WRONGTYPE", logged.output[0])
        row = Outbox.objects.get()
        self.assertIsNotNone(row.failed)
        self.assertIn("WRONGTYPE", row.error)
        self.assertEqual(relay_once(), "0 outbox message(s) sent")  # not tried again
        self.store.delete(meta)
        from django.core.management import call_command

        out = io.StringIO()
        call_command("ws4tx_relay", "--once", "--retry-failed", stdout=out)
        self.assertEqual(out.getvalue().split("\n")[:2],
                         ["1 failed outbox message(s) put back", "1 outbox message(s) sent"])
        self.assertEqual(self.rows(), [])

    def test_invalidRowIsSetAside(self):
        """A row the publish checks refuse (an invalid key, channels that are not names)
        is set aside at once, by the commit hook as by the relay."""
        from ws4tx.models import Outbox

        bad_key = self.pending("chat", b"bad key", key="k" * 201)  # longer than MAX_KEY_LENGTH
        bad_channels = self.pending("chat", b"bad channels", channels={"not": "a list"})
        self.pending("chat", b"good")
        with self.assertLogs("ws4tx", "ERROR") as logged:
            self.assertEqual(relay_once(), "1 outbox message(s) sent, 2 set aside "
                                           "(failed for good, see their error)")
        self.assertEqual(len(logged.output), 2)
        self.assertEqual(self.payloads(), [b"good"])
        self.assertEqual(sorted(Outbox.objects.filter(failed__isnull=False)
                                .values_list("pk", flat=True)),
                         [bad_key.pk, bad_channels.pk])

    def test_redisDownKeepsRowsPendingAndTheRelayBacksOff(self):
        """Redis down: each pass counts an attempt on the first row and stops soon (no
        timeout per row); the relay waits twice as long after each failing pass, up to
        30 s, and its interval again once Redis answers; nothing is set aside."""
        from ws4tx import _outbox
        from ws4tx.models import Outbox

        for i in range(5):
            self.pending("chat" if i % 2 else "news", b"m%d" % i)
        self.redis.stop()
        waits: list[float] = []
        said: list[str] = []

        class Stop(Exception):
            pass

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 7:
                self.redis.start()
            if len(waits) == 9:
                raise Stop

        with self.assertLogs("ws4tx", "WARNING"), self.assertRaises(Stop):
            _outbox.Relay(1.0, sleep, said.append).run()
        self.assertEqual(waits, [1, 2, 4, 8, 16, 30, 30, 1, 1])
        self.assertEqual(self.rows(), [])
        self.assertEqual(said[-1], "5 outbox message(s) sent")
        self.assertFalse(Outbox.objects.filter(failed__isnull=False).exists())

    def test_redisDownCountsAttemptsWithoutSettingAside(self):
        from ws4tx import _outbox
        from ws4tx.models import Outbox

        self.pending("chat", b"a")
        self.pending("news", b"b")
        self.redis.stop()
        with self.assertLogs("ws4tx", "WARNING"):
            for _ in range(2):
                done = _outbox.send_pending()
                self.assertIsNotNone(done.error)
                self.assertEqual((done.sent, done.set_aside), (0, 0))
        self.assertEqual(list(Outbox.objects.values_list("attempts", "failed")),
                         [(2, None), (2, None)])

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


class UnmigratedTests(DjangoRedisTestCase):
    """A database where ws4tx's migrations were not applied (``migrate ws4tx zero``, put
    back after each test)."""

    def setUp(self) -> None:
        from django.core.management import call_command

        super().setUp()
        call_command("migrate", "ws4tx", "zero", verbosity=0, skip_checks=True)
        self.addCleanup(call_command, "migrate", "ws4tx", verbosity=0, skip_checks=True)

    def test_onCommitFailsBeforeTouchingTheTransaction(self):
        """on_commit=True raises one line naming the fix before any statement on the
        outbox: the caller's transaction goes on and commits its own writes."""
        from django.contrib.auth.models import User
        from django.core.exceptions import ImproperlyConfigured
        from django.db import connection, transaction
        from django.test.utils import CaptureQueriesContext

        with transaction.atomic():
            User.objects.create_user("before")
            with CaptureQueriesContext(connection) as queries, \
                    self.assertRaises(ImproperlyConfigured) as caught:
                api.publish("chat", "lost?", broadcast=True, on_commit=True)
            User.objects.create_user("after")
        message = str(caught.exception)
        self.assertIn("python manage.py migrate ws4tx", message)
        self.assertIn("ws4tx_outbox", message)
        self.assertNotIn("\n", message)
        self.assertFalse([q for q in queries.captured_queries
                          if "ws4tx_outbox" in q["sql"]])
        self.assertEqual(sorted(User.objects.values_list("username", flat=True)),
                         ["after", "before"])

    def test_halfMigratedDatabaseIsNamedToo(self):
        """The first migration only (a column of the second is missing): the same line."""
        from django.core.exceptions import ImproperlyConfigured
        from django.core.management import call_command
        from django.db import transaction

        call_command("migrate", "ws4tx", "0001", verbosity=0, skip_checks=True)
        with self.assertRaises(ImproperlyConfigured) as caught, transaction.atomic():
            api.publish("chat", "lost?", broadcast=True, on_commit=True)
        self.assertIn("column(s) attempts, error, failed", str(caught.exception))
        self.assertIn("python manage.py migrate ws4tx", str(caught.exception))

    def test_systemCheckWarnsNamingTheFix(self):
        """manage.py check --database default says it once, as ws4tx.W001."""
        from django.core import checks
        from django.core.management import call_command

        found = [m for m in checks.run_checks(databases=["default"])
                 if m.id == "ws4tx.W001"]
        self.assertEqual(len(found), 1)
        self.assertEqual(found[0].hint, "python manage.py migrate ws4tx")
        call_command("migrate", "ws4tx", verbosity=0, skip_checks=True)
        self.assertFalse([m for m in checks.run_checks(databases=["default"])
                          if m.id == "ws4tx.W001"])


class SortingTests(SynchronousTestCase):
    """Which failures of a send keep a row pending (pure logic: the exceptions that the
    tests above get from a real Redis, and the replies no test can make Redis give)."""

    def test_whatKeepsARowAndWhatSetsItAside(self):
        import redis.exceptions as r
        from django.core.exceptions import ImproperlyConfigured

        from ws4tx.redis_store import PublishError

        def failed(cause: BaseException) -> PublishError:
            error = PublishError(f"could not publish to Redis: {cause}")
            error.__cause__ = cause
            return error

        keep = [failed(r.ConnectionError("refused")), failed(r.TimeoutError("slow")),
                failed(r.ReadOnlyError("READONLY You can't write")),
                failed(r.ResponseError("MISCONF snapshots failing")),
                failed(r.ResponseError("BUSY Redis is busy running a script")),
                failed(r.ResponseError("NOREPLICAS Not enough good replicas")),
                PublishError("no cause"), ImproperlyConfigured("HISTORY differs")]
        set_aside = [failed(r.ResponseError("WRONGTYPE Operation against a key")),
                     failed(r.ResponseError("ERR Protocol error: invalid bulk length")),
                     failed(r.DataError("Invalid input of type: 'dict'")),
                     ValueError("key too long"), TypeError("not bytes")]
        self.assertEqual([e for e in keep if not _outbox.transient(e)], [])
        self.assertEqual([e for e in set_aside if _outbox.transient(e)], [])
