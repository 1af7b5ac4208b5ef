"""The ws4tx application's one model: the outbox of messages published with
``on_commit=True`` (see :mod:`ws4tx._outbox`)."""

from __future__ import annotations

from typing import Any

from django.db import models


class Outbox(models.Model):
    """A message written in the transaction that publishes it, sent once it committed and
    then deleted: by the commit itself, or later by ``manage.py ws4tx_relay``. ``key`` is
    the idempotency key it is published with (``api.publish(..., key=...)``, else one of
    its own), so that a row sent but not deleted (a crash between the two) is not
    delivered twice when it is sent again. A row that can never be sent (refused by Redis
    or by the checks of a publish) is set aside: ``failed`` and ``error`` say when and
    why."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    created: models.DateTimeField[Any, Any] = models.DateTimeField(auto_now_add=True)
    facility: models.CharField[str, str] = models.CharField(max_length=128)
    channels: models.JSONField[Any, Any] = models.JSONField()
    payload: models.BinaryField[Any, Any] = models.BinaryField()
    expire: models.IntegerField[int, int] = models.IntegerField()
    key: models.CharField[str, str] = models.CharField(max_length=200)
    #: Sends that failed for a while (Redis unreachable): the row stays pending.
    attempts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    #: When a send failed for good (the row can never be sent): set aside, never sent
    #: again unless ``ws4tx_relay --retry-failed`` puts it back; None while pending.
    failed: models.DateTimeField[Any, Any] = models.DateTimeField(null=True, blank=True)
    #: The last failure, in one line.
    error: models.TextField[str, str] = models.TextField(blank=True, default="")

    class Meta:
        app_label = "ws4tx"
        ordering = ["id"]
        verbose_name = "outbox message"
