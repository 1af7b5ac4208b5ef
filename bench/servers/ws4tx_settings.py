"""Minimal Django settings shared by the ws4tx server (``--django-settings ws4tx_settings``,
used by the many-channels scenario only, for its signed connection tokens) and by the
benchmark's publisher (``ws4tx.publisher.RedisPublisher``). No database: tokens are
verified with ``SECRET_KEY`` alone. Not a secret: a benchmark's key."""

SECRET_KEY = "ws4tx-bench-shared-key-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
# Tokens are made once before the clients connect; a long run must not outlive them.
WS4TX_TOKEN_MAX_AGE = 3600
