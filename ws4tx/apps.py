"""The Django application ``ws4tx``: put ``"ws4tx"`` in ``INSTALLED_APPS`` so that its static
files (``ws4tx/ws4tx.js``, ``js/ws4redis.js``) and its template tags (``{% load ws4tx %}``)
are found, and so that identity changes reach open sockets: a logout, a password change or
a deactivation closes the connections concerned on every node (see :mod:`ws4tx._live`;
setting ``DISCONNECT_ON_LOGOUT``). Its one model is the outbox of ``on_commit=True``
publishes (:mod:`ws4tx._outbox`; run ``migrate``, and ``manage.py ws4tx_relay`` beside the
site)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from django.apps import AppConfig, apps
from django.core import checks
from django.db.models.signals import pre_migrate


class Ws4txConfig(AppConfig):
    """ws4tx's application configuration."""

    name = "ws4tx"
    label = "ws4tx"
    verbose_name = "ws4tx WebSocket push"

    def ready(self) -> None:
        """Connect the receivers that close connections when an identity changes (they
        read ``DISCONNECT_ON_LOGOUT`` each time, so the setting may change at run time),
        and the check of the outbox's table."""
        from ws4tx import _outbox

        pre_migrate.connect(_outbox.forget_databases, dispatch_uid="ws4tx-outbox-tables")
        checks.register(check_outbox, checks.Tags.database)
        if apps.is_installed("django.contrib.auth"):
            from ws4tx import _live

            _live.connect()


def check_outbox(app_configs: Optional[Sequence[AppConfig]] = None,
                 databases: Optional[Sequence[str]] = None, **kwargs: Any) -> list[Any]:
    """``ws4tx.W001``: a database the outbox would be written to lacks its table or a
    column (``manage.py check --database default``; ``on_commit=True`` then fails with the
    same line). A warning, not an error: ``migrate`` runs this check before it migrates
    (and a database that was never migrated is left to that first ``migrate``)."""
    from django.db import connections, router
    from django.db.migrations.recorder import MigrationRecorder

    from ws4tx import _outbox
    from ws4tx.models import Outbox

    found = []
    for alias in databases or ():
        if not router.allow_migrate_model(alias, Outbox):
            continue
        if not MigrationRecorder(connections[alias]).has_table():
            continue  # a database never migrated: the first migrate is on its way
        lacking = _outbox.missing(alias)
        if lacking is not None:
            found.append(checks.Warning(
                _outbox.migration_error(alias, lacking),
                hint="python manage.py migrate ws4tx", id="ws4tx.W001"))
    return found
