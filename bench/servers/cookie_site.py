"""The Django site of the cookie-storm scenario: settings (``--django-settings
cookie_site``: auth, sessions in the database, ws4tx), a WSGI application (``--wsgi
cookie_site.app``) that answers how many SQL statements and database connections the
server process ran so far, and ``python cookie_site.py prepare N``, which creates the
database (``$BENCH_COOKIE_DB``, SQLite) with N users, each logged in with a session of its
own, and prints their session keys (JSON). Not a secret: a benchmark's key."""

import json
import os
import sys
import threading

SECRET_KEY = "ws4tx-bench-cookie-site-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "ws4tx"]
# Persistent connections, as ws4tx's README recommends for a site whose sessions the
# server reads: each authentication thread keeps its connection instead of opening one per
# handshake (Django's default, CONN_MAX_AGE = 0).
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("BENCH_COOKIE_DB", "cookie_site.sqlite3"),
                         "CONN_MAX_AGE": 600}}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_lock = threading.Lock()
_counts = {"queries": 0, "connections": 0}


def _count_query(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
    with _lock:
        _counts["queries"] += 1
    return execute(sql, params, many, context)


def _connected(sender, connection, **kwargs):  # type: ignore[no-untyped-def]
    with _lock:
        _counts["connections"] += 1
    if _count_query not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count_query)


def _watch() -> None:
    from django.db.backends.signals import connection_created

    connection_created.connect(_connected, dispatch_uid="bench-cookie-site-count")


_watch()


def app(environ, start_response):  # type: ignore[no-untyped-def]
    """``{"queries": ..., "connections": ...}`` of this process so far."""
    with _lock:
        body = json.dumps(_counts).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def prepare(n: int) -> list[str]:
    """A fresh database with users ``c00000``... each with a logged-in session."""
    import datetime

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    Session.objects.all().delete()
    User.objects.all().delete()
    group, _ = Group.objects.get_or_create(name="members")
    password = make_password("secret")
    users = User.objects.bulk_create(
        [User(username=f"c{i:05d}", password=password) for i in range(n)], batch_size=500)
    users = list(User.objects.order_by("username"))
    User.groups.through.objects.bulk_create(
        [User.groups.through(user_id=u.pk, group_id=group.pk) for u in users], batch_size=500)
    store = SessionStore()
    expire = timezone.now() + datetime.timedelta(days=1)
    keys, rows = [], []
    for user in users:
        key = store._get_new_session_key()
        keys.append(key)
        rows.append(Session(session_key=key, expire_date=expire, session_data=store.encode({
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
            "_auth_user_hash": user.get_session_auth_hash()})))
    Session.objects.bulk_create(rows, batch_size=500)
    return keys


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "prepare":
        sys.exit("usage: cookie_site.py prepare N")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cookie_site")
    print(json.dumps(prepare(int(sys.argv[2]))))
