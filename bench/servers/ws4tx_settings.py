"""Minimal Django settings shared by the ws4tx server (``--django-settings ws4tx_settings``,
used by the many-channels scenario only, for its signed connection tokens) and by the
benchmark's publisher (``ws4tx.publisher.RedisPublisher``). No database: tokens are
verified with ``SECRET_KEY`` alone. Not a secret: a benchmark's key.

``$BENCH_HISTORY`` (JSON) is the publisher's ``WS4TX_HISTORY`` in the history and recovery
scenarios, the same as the server's ``--history``."""

import json
import os

SECRET_KEY = "ws4tx-bench-shared-key-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
# Tokens are made once before the clients connect; a long run must not outlive them.
WS4TX_TOKEN_MAX_AGE = 3600
# The facilities that keep a history (the history and recovery scenarios set it).
WS4TX_HISTORY = json.loads(os.environ.get("BENCH_HISTORY") or "{}")
