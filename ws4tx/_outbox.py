"""Publishes after the commit that are never lost nor doubled: the outbox behind
``on_commit=True``.

``api.publish(..., on_commit=True)`` (and ``emit``) writes the message as a row of
:class:`ws4tx.models.Outbox` in the current transaction (a rolled-back transaction leaves
none) and, once it committed, sends the pending rows up to its own, oldest first, deleting
each once Redis took it. What could not be sent then (Redis down, the process killed between
the commit and the send) stays and is sent by ``manage.py ws4tx_relay`` (``--once``: what is
pending, then exit), in the same order. Every row is published with an idempotency key (the
caller's, else one of its own): a row sent but not deleted is sent again without being
delivered twice, within the key's window (the history's ttl, a day without history).

Rows go out in the order of their ids, per sender: a sender that delivers a row has seen
every older row delivered (by itself or, as a repeat, by another). A transaction that
commits after a younger one may be sent after it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Optional

from django.core.exceptions import ImproperlyConfigured

from ws4tx import _prepare
from ws4tx.redis_store import PublishError, RedisStore, Sent

log = logging.getLogger("ws4tx")


def _model() -> Any:
    from django.apps import apps

    if not apps.is_installed("ws4tx"):
        raise ImproperlyConfigured(
            'on_commit=True keeps the message in ws4tx\'s outbox: add "ws4tx" to '
            "INSTALLED_APPS and run manage.py migrate")
    from ws4tx.models import Outbox

    return Outbox


def write(prepared: _prepare.Publish) -> None:
    """Write ``prepared`` in the current transaction; send it once that commits (at once
    outside a transaction)."""
    from django.db import transaction

    if not prepared.data or not prepared.publisher.channels:
        return
    row = _model().objects.create(
        facility=prepared.publisher.facility, channels=prepared.publisher.channels,
        payload=prepared.data, expire=prepared.expire,
        key=prepared.key or f"ws4tx-outbox-{uuid.uuid4().hex}")
    transaction.on_commit(lambda: _committed(row.pk))


def _committed(pk: int) -> None:
    """After the commit: send what is pending up to this row. Nothing escapes the commit
    hook (it would turn the committed request into an error and drop the transaction's
    later hooks): what cannot be sent stays for ``ws4tx_relay``, said in one line."""
    try:
        send_pending(up_to=pk)
    except PublishError as e:
        log.warning("outbox message %s kept: ws4tx_relay sends it once Redis answers (%s)",
                    pk, e)
    except Exception as e:  # noqa: BLE001 - a settings or database fault: kept, said
        log.error("outbox message %s kept: ws4tx_relay sends it once this is mended: "
                  "%s: %s", pk, type(e).__name__, e)


def send(row: Any) -> Sent:
    """Publish one outbox row (with its idempotency key), without deleting it."""
    store = RedisStore()
    store.facility = row.facility
    store._publishers = list(row.channels)
    return store.publish_message(bytes(row.payload), expire=row.expire, key=row.key)


def send_pending(up_to: Optional[int] = None) -> int:
    """Send the pending rows (those up to id ``up_to``), oldest first, deleting each once
    sent; how many were sent. Stops at the first that fails (:class:`PublishError`), so
    that none overtakes it."""
    rows = _model().objects.order_by("id")
    if up_to is not None:
        rows = rows.filter(id__lte=up_to)
    sent = 0
    for row in rows.iterator():
        send(row)
        row.delete()
        sent += 1
    return sent
