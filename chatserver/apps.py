"""The demo chat's app configuration."""

from __future__ import annotations

from django.apps import AppConfig


class ChatserverConfig(AppConfig):
    """The ``chatserver`` app: templates, static files and fixtures of the demo."""

    name = "chatserver"
    verbose_name = "ws4tx demo chat"
