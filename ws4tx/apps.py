"""The Django application ``ws4tx``: put ``"ws4tx"`` in ``INSTALLED_APPS`` so that its static
files (``ws4tx/ws4tx.js``, ``js/ws4redis.js``) and its template tags (``{% load ws4tx %}``)
are found, and so that identity changes reach open sockets: a logout, a password change or
a deactivation closes the connections concerned on every node (see :mod:`ws4tx._live`;
setting ``DISCONNECT_ON_LOGOUT``). Its one model is the outbox of ``on_commit=True``
publishes (:mod:`ws4tx._outbox`; run ``migrate``, and ``manage.py ws4tx_relay`` beside the
site)."""

from __future__ import annotations

from django.apps import AppConfig, apps


class Ws4txConfig(AppConfig):
    """ws4tx's application configuration."""

    name = "ws4tx"
    label = "ws4tx"
    verbose_name = "ws4tx WebSocket push"

    def ready(self) -> None:
        """Connect the receivers that close connections when an identity changes (they
        read ``DISCONNECT_ON_LOGOUT`` each time, so the setting may change at run time)."""
        if apps.is_installed("django.contrib.auth"):
            from ws4tx import _live

            _live.connect()
