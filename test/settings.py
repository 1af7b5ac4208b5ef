"""Django settings of the test suite: an in-memory SQLite database shared by the threads of
the process (the server authenticates handshakes in threads), the auth, sessions and ws4tx
apps, and the ws4tx context processor. No Redis setting: each test points the Django side
at its own Redis with ``ws4tx._sync_redis.use_url``."""

SECRET_KEY = "ws4tx-test-suite-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1", "example.com"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "ws4tx",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # In memory, one database for all the threads of the process (a plain ":memory:"
        # would give each thread an empty database of its own).
        "NAME": "file:ws4tx-test?mode=memory&cache=shared",
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "ws4tx.context_processors.default",
            ],
        },
    }
]
