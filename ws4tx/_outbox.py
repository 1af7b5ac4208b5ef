"""Publishes after the commit that are never lost nor doubled: the outbox behind
``on_commit=True``.

``api.publish(..., on_commit=True)`` (and ``emit``) writes the message as a row of
:class:`ws4tx.models.Outbox` in the current transaction (a rolled-back transaction leaves
none) and, once it committed, sends that row, deleting it once Redis took it: the commit
sends what its transaction wrote, never the backlog of others. What could not be sent then
(Redis down, the process killed between the commit and the send) stays and is sent by
``manage.py ws4tx_relay`` (``--once``: what is pending, then exit). Every row is published
with an idempotency key (the caller's, else one of its own): a row sent but not deleted is
sent again without being delivered twice, within the key's window (the history's ttl, a day
without history).

Order, per channel: a row never goes out before an older pending row that shares one of its
channels. The relay sends in the order of the ids and skips the channels of a row it could
not send; a commit leaves its row to the relay when an older row of its channels is stuck
(it failed once, or was written more than :data:`GRACE` seconds ago and is still there). A
transaction that commits after a younger one may be sent after it.

Failures: Redis unreachable (or failing over, out of memory, a settings fault) keeps the
row pending (``attempts`` counts them; the relay waits longer after each failing pass, up to
:data:`MAX_BACKOFF` seconds); a row that can never be sent (Redis or the publish's checks
refuse it) is set aside: ``failed`` and ``error`` set, said in one line, never sent again
unless ``ws4tx_relay --retry-failed`` puts it back, and it blocks nothing.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import redis.exceptions
from django.core.exceptions import ImproperlyConfigured

from ws4tx import _prepare
from ws4tx.history import NotStored
from ws4tx.redis_store import PublishError, RedisStore, Sent

log = logging.getLogger("ws4tx")

#: Seconds after which a pending row that no send failed on counts as stuck (its committer
#: died before sending it): later commits to its channels leave theirs to the relay.
GRACE = 10.0

#: How many older stuck rows a commit reads at most to compare channels; more, and it
#: leaves its rows to the relay.
STUCK_READ = 200

#: The relay's longest wait between two passes that failed to reach Redis.
MAX_BACKOFF = 30.0

#: Consecutive rows that failed for a while after which a pass stops (Redis is down: no
#: need to wait for the timeout of every row).
STOP_AFTER = 3

#: Redis errors that say nothing about the row: the row stays pending.
_PASSING = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
            redis.exceptions.TryAgainError, redis.exceptions.ClusterError,
            redis.exceptions.AskError, redis.exceptions.NoScriptError,
            redis.exceptions.NoPermissionError, redis.exceptions.RedisClusterException)


#: Redis errors of no class of their own that say Redis cannot write now, not that the row
#: is wrong: a script running too long, too few replicas, snapshots failing.
_PASSING_CODES = ("BUSY", "NOREPLICAS", "MISCONF", "OOM", "READONLY", "LOADING", "TRYAGAIN",
                  "CLUSTERDOWN", "MASTERDOWN")


def _model() -> Any:
    from django.apps import apps

    if not apps.is_installed("ws4tx"):
        raise ImproperlyConfigured(
            'on_commit=True keeps the message in ws4tx\'s outbox: add "ws4tx" to '
            "INSTALLED_APPS and run manage.py migrate")
    from ws4tx.models import Outbox

    return Outbox


#: The databases (aliases) found to hold the outbox table with every column.
_ready: set[str] = set()


def missing(alias: str) -> Optional[str]:
    """What database ``alias`` lacks for the outbox (None: nothing), read from its
    catalogue: a read that cannot fail a transaction, unlike an INSERT into a table that
    is not there (PostgreSQL then refuses every later statement of the transaction)."""
    from django.db import connections

    model = _model()
    connection = connections[alias]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if table not in connection.introspection.table_names(cursor):
            return f"the table {table}"
        have = {column.name for column in
                connection.introspection.get_table_description(cursor, table)}
    absent = sorted(field.column for field in model._meta.concrete_fields
                    if field.column not in have)
    if absent:
        return f"the column(s) {', '.join(absent)} of {table}"
    return None


def migration_error(alias: str, lacking: str) -> str:
    """The one line that says ``lacking`` and how to mend it."""
    return (f"on_commit=True writes to ws4tx's outbox, but the database {alias!r} has not "
            f"got {lacking}: run python manage.py migrate ws4tx")


def check_database(alias: str) -> None:
    """Raise ImproperlyConfigured naming the fix unless database ``alias`` has the outbox
    as this version writes it (found once per process and database)."""
    if alias in _ready:
        return
    lacking = missing(alias)
    if lacking is not None:
        raise ImproperlyConfigured(migration_error(alias, lacking))
    _ready.add(alias)


def forget_databases(**_: Any) -> None:
    """Look at the databases again (connected to ``pre_migrate``: a migration may drop the
    table)."""
    _ready.clear()


def write(prepared: _prepare.Publish) -> None:
    """Write ``prepared`` in the current transaction; send it once that commits (at once
    outside a transaction). A database without the outbox table fails here, before
    anything is written (:func:`check_database`)."""
    from django.db import router, transaction

    if not prepared.data or not prepared.publisher.channels:
        return
    model = _model()
    alias = router.db_for_write(model)
    check_database(alias)
    row = model.objects.using(alias).create(
        facility=prepared.publisher.facility, channels=prepared.publisher.channels,
        payload=prepared.data, expire=prepared.expire,
        key=prepared.key or f"ws4tx-outbox-{uuid.uuid4().hex}")
    transaction.on_commit(lambda: _committed(row.pk), using=alias)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def transient(error: BaseException) -> bool:
    """Whether ``error`` (raised by a send) says nothing about the row: Redis unreachable
    or not ready, or a settings fault. Otherwise the row can never be sent."""
    if isinstance(error, ImproperlyConfigured):
        return True
    cause = error.__cause__ if isinstance(error, PublishError) else error
    if isinstance(error, PublishError) and cause is None:
        return True
    if isinstance(cause, _PASSING):
        return True
    return isinstance(cause, redis.exceptions.ResponseError) and \
        str(cause).split(" ", 1)[0] in _PASSING_CODES


def _committed(pk: int) -> None:
    """After the commit: send this row. Nothing escapes the commit hook (it would turn the
    committed request into an error and drop the transaction's later hooks): what cannot be
    sent stays for ``ws4tx_relay``, said in one line."""
    try:
        row = _model().objects.filter(pk=pk, failed__isnull=True).first()
        if row is None:  # sent already, by the relay
            return
        if _waits_for_older(row):
            log.info("outbox message %s left to ws4tx_relay: an older message of its "
                     "channels is still pending", pk)
            return
        _attempt(row)
    except Exception as e:  # noqa: BLE001 - a database fault: kept, said
        log.error("outbox message %s kept: ws4tx_relay sends it once this is mended: %s",
                  pk, _one_line(e))


def _waits_for_older(row: Any) -> bool:
    """Whether an older row that shares a channel with ``row`` is stuck (see the module)."""
    from django.db.models import Q
    from django.utils import timezone

    old = timezone.now() - datetime.timedelta(seconds=GRACE)
    stuck = list(_model().objects.filter(id__lt=row.pk, failed__isnull=True)
                 .filter(Q(attempts__gt=0) | Q(created__lt=old))
                 .order_by("id").values_list("channels", flat=True)[:STUCK_READ + 1])
    if len(stuck) > STUCK_READ:
        return True
    mine = _channels(row.channels)
    return any(mine & _channels(channels) for channels in stuck)


def _channels(channels: Any) -> set[str]:
    if isinstance(channels, list):
        return {str(channel) for channel in channels}
    return {str(channels)}


def send(row: Any) -> Sent:
    """Publish one outbox row (with its idempotency key), without deleting it."""
    if not isinstance(row.channels, list) or not all(
            isinstance(channel, str) for channel in row.channels):
        raise ValueError(f"channels must be a list of names, not {row.channels!r}")
    store = RedisStore()
    store.facility = row.facility
    store._publishers = list(row.channels)
    return store.publish_message(bytes(row.payload), expire=row.expire, key=row.key)


def _attempt(row: Any) -> Optional[BaseException]:
    """Send ``row``: deleted once sent, set aside when it can never be, kept (its
    ``attempts`` counted) when Redis could not take it now; the error of that last case,
    else None."""
    from django.utils import timezone

    try:
        send(row)
    except NotStored as e:  # delivered: sending it again would deliver it twice
        log.warning("outbox message %s delivered but not stored: %s", row.pk, e)
    except Exception as e:  # noqa: BLE001 - sorted right below
        if transient(e):
            row.attempts += 1
            row.error = _one_line(e)[:2000]
            row.save(update_fields=["attempts", "error"])
            log.warning("outbox message %s kept: ws4tx_relay sends it once Redis answers "
                        "(%s)", row.pk, row.error)
            return e
        row.failed = timezone.now()
        row.error = _one_line(e)[:2000]
        row.save(update_fields=["failed", "error"])
        log.error("outbox message %s set aside, it can never be sent (facility %r, "
                  "channels %r): %s; ws4tx_relay --retry-failed sends it again", row.pk,
                  row.facility, row.channels, row.error)
        return None
    row.delete()
    return None


@dataclass
class Pass:
    """What one pass over the pending rows did: rows ``sent``, rows ``set_aside`` (can
    never be sent), and the ``error`` that kept rows pending (None: none was)."""

    sent: int = 0
    set_aside: int = 0
    error: Optional[BaseException] = None

    def __str__(self) -> str:
        said = f"{self.sent} outbox message(s) sent"
        if self.set_aside:
            said += f", {self.set_aside} set aside (failed for good, see their error)"
        return said


def send_pending(rows: Optional[Iterable[Any]] = None) -> Pass:
    """One pass over the pending rows, oldest first: each sent (and deleted), set aside,
    or kept; a row kept blocks the later rows of its channels, and :data:`STOP_AFTER` kept
    in a row end the pass (Redis is down)."""
    if rows is None:
        rows = _model().objects.filter(failed__isnull=True).order_by("id").iterator()
    done = Pass()
    blocked: set[str] = set()
    kept_in_a_row = 0
    for row in rows:
        channels = _channels(row.channels)
        if channels & blocked:
            continue
        before = row.failed
        error = _attempt(row)
        if error is not None:
            done.error = error
            blocked |= channels
            kept_in_a_row += 1
            if kept_in_a_row >= STOP_AFTER:
                break
            continue
        kept_in_a_row = 0
        if row.failed is not None and before is None:
            done.set_aside += 1
        else:
            done.sent += 1
    return done


def retry_failed() -> int:
    """Put the rows set aside back in the queue; how many."""
    return int(_model().objects.filter(failed__isnull=False).update(
        failed=None, error="", attempts=0))


class Relay:
    """``ws4tx_relay``'s loop: a pass every ``interval`` seconds; after a pass that could
    not reach Redis, twice the last wait, up to :data:`MAX_BACKOFF`. ``sleep`` waits (a
    test passes its own); ``said`` prints one line."""

    def __init__(self, interval: float, sleep: Callable[[float], None],
                 said: Callable[[str], None],
                 between: Callable[[], None] = lambda: None) -> None:
        self.interval = interval
        self._sleep = sleep
        self._said = said
        self._between = between

    def run(self) -> None:
        """Pass after pass, forever."""
        wait = self.interval
        while True:
            self._between()
            done = send_pending()
            if done.sent or done.set_aside:
                self._said(str(done))
            if done.error is None:
                wait = self.interval
            else:
                self._said(f"outbox not all sent, trying again in {wait:g} s: "
                           f"{_one_line(done.error)}")
            self._sleep(wait)
            if done.error is not None:
                wait = min(max(wait * 2, self.interval), max(MAX_BACKOFF, self.interval))
