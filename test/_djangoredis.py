"""Test helpers for the Django side: Django set up, a real Redis per test, users, requests,
and a Redis listener that sees exactly what a publish sent."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Optional

import redis
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.server.embedded import EmbeddedRedis

from test._cluster import Cluster
from test._django import setup_django

#: Bound on waiting for Redis (never reached when things work).
TIMEOUT = 10.0


class Listener:
    """A redis-py subscriber to some channels. :meth:`received` returns everything
    published to them so far: it publishes a marker on a channel of its own and reads up to
    it (Redis delivers in order), so nothing that was sent can still be on its way."""

    SENTINEL = "test-listener-sentinel"

    def __init__(self, url: str, channels: Iterable[str]) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        wanted = set(channels) | {self.SENTINEL}
        self.pubsub.subscribe(*wanted)
        confirmed = 0
        deadline = time.monotonic() + TIMEOUT
        while confirmed < len(wanted):
            message = self.pubsub.get_message(timeout=self._left(deadline))
            if message and message["type"] == "subscribe":
                confirmed += 1

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("Redis did not answer in time")
        return left

    def received(self) -> list[tuple[str, bytes]]:
        """(channel, payload) of every message published to the channels until now."""
        marker = uuid.uuid4().hex.encode()
        self.client.publish(self.SENTINEL, marker)
        found: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self.pubsub.get_message(timeout=self._left(deadline))
            if not message or message["type"] != "message":
                continue
            channel = message["channel"].decode()
            if channel == self.SENTINEL and message["data"] == marker:
                return found
            found.append((channel, message["data"]))

    def close(self) -> None:
        """Unsubscribe and disconnect."""
        self.pubsub.close()
        self.client.close()


def wipe_database() -> None:
    """Delete the outbox rows, users, groups and sessions a test made (the database is shared)."""
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.models import Session

    from ws4tx.models import Outbox

    Outbox.objects.all().delete()
    Session.objects.all().delete()
    User.objects.all().delete()
    Group.objects.all().delete()


def make_user(name: str, groups: Iterable[str] = ()) -> Any:
    """A saved user ``name`` in the named groups (created as needed)."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(name, password="secret")
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def make_request(user: Any = None, session: bool = True, secure: bool = False,
                 host: str = "testserver") -> Any:
    """A GET request with ``user`` (anonymous when None) and a saved session."""
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    request = RequestFactory().get("/", secure=secure, HTTP_HOST=host)
    request.user = user if user is not None else AnonymousUser()
    if session:
        request.session = SessionStore()
        request.session.create()
    return request


class DjangoTestCase(SynchronousTestCase):
    """Django set up; the database wiped after each test; :meth:`settings` overrides."""

    def setUp(self) -> None:
        setup_django()
        self.addCleanup(wipe_database)

    def settings(self, **values: Any) -> None:
        """Override Django settings until the end of the test."""
        from django.test import override_settings

        override = override_settings(**values)
        override.enable()
        self.addCleanup(override.disable)


class DjangoRedisTestCase(DjangoTestCase):
    """Also a real Redis (``self.redis``) that the Django side publishes to, and a plain
    client of it (``self.store``)."""

    redis_password: Optional[str] = None

    def setUp(self) -> None:
        from ws4tx import _sync_redis

        super().setUp()
        self.redis = EmbeddedRedis(password=self.redis_password)
        self.redis.start()
        self.addCleanup(self.redis.stop)
        _sync_redis.use_url(self.redis.url)
        self.addCleanup(_sync_redis.reset)
        self.store = redis.Redis.from_url(self.redis.url)
        self.addCleanup(self.store.close)

    def listen(self, *channels: str) -> Listener:
        """A listener to ``channels``, closed at the end of the test."""
        listener = Listener(self.redis.url, channels)
        self.addCleanup(listener.close)
        return listener


class DjangoClusterTestCase(DjangoTestCase):
    """Also a three-primary Redis Cluster of the test's own (``self.cluster``) that the
    Django side publishes to."""

    def setUp(self) -> None:
        from ws4tx import _sync_redis

        super().setUp()
        self.cluster = Cluster()
        self.cluster.start()
        self.addCleanup(self.cluster.stop)
        _sync_redis.use_url(self.cluster.url)
        self.addCleanup(_sync_redis.reset)
