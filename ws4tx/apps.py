"""The Django application ``ws4tx``: put ``"ws4tx"`` in ``INSTALLED_APPS`` so that its static
files (``ws4tx/ws4tx.js``, ``js/ws4redis.js``) and its template tags (``{% load ws4tx %}``)
are found. It has no models."""

from __future__ import annotations

from django.apps import AppConfig


class Ws4txConfig(AppConfig):
    """ws4tx's application configuration."""

    name = "ws4tx"
    label = "ws4tx"
    verbose_name = "ws4tx WebSocket push"
