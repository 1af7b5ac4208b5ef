"""Django settings of the ws4tx demo chat.

Demo settings: an SQLite file next to this module (``CHATSERVER_DB`` overrides its path,
which is how the browser tests give every server a fresh database), and the secret key from
``DJANGO_SECRET_KEY`` with a fallback that is only fit for a demo.

Safe unless asked otherwise: ``DEBUG`` is off unless ``CHATSERVER_DEBUG=1`` (what
``python -m chatserver --debug`` sets), and the admin is served at ``/admin/`` only with
``CHATSERVER_ADMIN=1`` (``--admin``), since every demo user's password is "secret".
"""

from __future__ import annotations

import os
from pathlib import Path

from chatserver import channels as _channels

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-ws4tx-demo-only-never-use-this-key-in-production"
)


def _switch(name: str) -> bool:
    """Whether the environment variable ``name`` is set to 1 (anything else: off)."""
    return os.environ.get(name, "0").strip() == "1"


#: Off unless asked for: with DEBUG on, an error page shows a traceback and the settings.
DEBUG = _switch("CHATSERVER_DEBUG")
#: Whether /admin/ is served (chatserver.urls): the fixture's users share one password.
CHATSERVER_ADMIN = _switch("CHATSERVER_ADMIN")
#: The demo listens on 127.0.0.1 only; DEBUG off needs these all the same.
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    # Before the admin, so that its registration/ templates win.
    "chatserver",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ws4tx",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatserver.urls"
WSGI_APPLICATION = "chatserver.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # WEBSOCKET_URI and the heartbeat (WS4REDIS_HEARTBEAT / WS4TX_HEARTBEAT)
                "ws4tx.context_processors.default",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # *.sqlite3 is gitignored.
        "NAME": os.environ.get("CHATSERVER_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "chat"

# ws4tx (django-websocket-redis names keep working: WS4REDIS_* is read after WS4TX_*)

#: WebSocket URLs are ws://HOST/ws/{facility}?flags; ``twistd ws4tx --wsgi`` serves both.
WEBSOCKET_URL = "/ws/"
#: ws4redis's name on purpose: a ws4redis settings file works unchanged.
WS4REDIS_HEARTBEAT = "--heartbeat--"
#: Seconds the last message of a channel is kept, replayed to a page that (re)connects.
WS4TX_EXPIRE = 600
#: The chats keep their recent messages (offsets and epochs in Redis): a page shows them on
#: load, and ws4tx.js recovers what it missed while it was disconnected (docs/protocol.md).
WS4TX_HISTORY = {
    _channels.CHAT_FACILITY: {"size": 500, "ttl": 24 * 3600},
    # The event chat's history holds its 'typing' events too.
    _channels.EVENT_FACILITY: {"size": 500, "ttl": 24 * 3600},
}
#: The broadcast chat's page sends through a server-side handler (which names the sender);
#: raw clients (ws4redis.js, the compatibility matrix) may still publish there with
#: ``publish-broadcast`` (chatserver.channels), and the pages show what they send as it is,
#: never under a user's name.
WS4TX_HANDLER_FACILITY_PUBLISH = True
#: Who is on the event chat (its page lists them from ws4tx.presence events).
WS4TX_PRESENCE = [_channels.EVENT_FACILITY]
#: Only the flags the demo's pages use, per facility and login (deny by default; see
#: chatserver.channels): anonymous visitors listen, and nobody publishes to a group or user.
WS4REDIS_ALLOWED_CHANNELS = "chatserver.channels.allowed_channels"

#: The facility of the ws4redis-style chats (the name ws4redis's demo used); chatserver.channels
#: names the demo's facilities, since it allows each page's flags on its own facility only.
CHAT_FACILITY = _channels.CHAT_FACILITY
#: The facility of the event chat (chatserver.handlers.EventChat).
EVENT_FACILITY = _channels.EVENT_FACILITY
