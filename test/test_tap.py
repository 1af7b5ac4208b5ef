"""``twistd ws4tx`` options: parsing, precedence, and errors that name the option."""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.server import tap
from ws4tx.server.config import ServerConfig, check
from ws4tx.server.service import PushService


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def push_service(options: tap.Options) -> PushService:
    top = tap.makeService(options)
    (push,) = [s for s in top if isinstance(s, PushService)]
    return push


class OptionsTests(SynchronousTestCase):
    """Parsing and validation of the command line."""

    def test_defaults(self):
        """Without options ws4tx listens on loopback port 8000 with the default settings."""
        options = parse()
        self.assertEqual(options["listen"], [tap.DEFAULT_LISTEN])
        self.assertEqual(push_service(options).config.websocket_url, "/ws/")

    def test_listenIsRepeatable(self):
        """--listen may be given several times."""
        options = parse("--listen", "tcp:9001", "--listen", "unix:/tmp/ws4tx-test.sock")
        self.assertEqual(options["listen"], ["tcp:9001", "unix:/tmp/ws4tx-test.sock"])

    def test_badListenNamesTheOption(self):
        """An endpoint description Twisted cannot parse is refused naming --listen."""
        e = self.assertRaises(usage.UsageError, parse, "--listen", "nonsense:1")
        self.assertIn("--listen", str(e))

    def test_badRedisNamesTheOption(self):
        """An unusable Redis URL is refused naming --redis."""
        for url in ("http://x", "redis://h:notaport/0", "redis://h/x"):
            e = self.assertRaises(usage.UsageError, parse, "--redis", url)
            self.assertIn("--redis", str(e))

    def test_badNumberNamesTheOption(self):
        """A value that is not a number is refused naming its option."""
        e = self.assertRaises(usage.UsageError, parse, "--expire", "soon")
        self.assertIn("--expire", str(e))

    def test_badValueNamesTheOption(self):
        """A value out of range fails at startup naming the option."""
        e = self.assertRaises(usage.UsageError, lambda: push_service(
            parse("--websocket-url", "ws", "--redis", "redis://h:1/0")))
        self.assertIn("websocket-url", str(e))
        e = self.assertRaises(usage.UsageError,
                              lambda: push_service(parse("--max-message-size", "0")))
        self.assertIn("max-message-size", str(e))

    def test_commandLineValuesReachTheConfig(self):
        """Options become the server's configuration."""
        config = push_service(parse(
            "--redis", "redis://:pw@example.org:6380/2", "--prefix", "app", "--expire", "0",
            "--heartbeat", "--hb--", "--allowed-origin", "https://a.example",
            "--max-connections", "5")).config
        self.assertEqual(config.redis.url, "redis://:pw@example.org:6380/2")
        self.assertEqual((config.prefix, config.expire, config.heartbeat),
                         ("app", 0, "--hb--"))
        self.assertEqual(config.allowed_origins, ("https://a.example",))
        self.assertEqual(config.max_connections, 5)

    def test_emptyPrefixMeansNone(self):
        """--prefix '' gives ws4redis's unprefixed channel names."""
        self.assertIsNone(push_service(parse("--prefix", "")).config.prefix)

    def test_redisFromEnvironment(self):
        """Without --redis or settings, $WS4TX_REDIS_URL names Redis."""
        self.patch(os, "environ", {"WS4TX_REDIS_URL": "redis://env:1/3"})
        self.assertEqual(push_service(parse()).config.redis.url, "redis://env:1/3")

    def test_wsgiNeedsDjango(self):
        """--wsgi without --django-settings is refused."""
        e = self.assertRaises(usage.UsageError, push_service, parse("--wsgi", "x.y"))
        self.assertIn("--wsgi", str(e))

    def test_badHandlerNamesTheOption(self):
        """A handler path that does not import is refused naming handlers."""
        e = self.assertRaises(usage.UsageError, push_service,
                              parse("--handlers", "no.such.Handler"))
        self.assertIn("handlers", str(e))


class ConfigTests(SynchronousTestCase):
    """ServerConfig checks."""

    def test_defaultsAreSafe(self):
        """Pings, size caps and a handshake timeout are on by default."""
        config = check(ServerConfig())
        self.assertGreater(config.ping_interval, 0)
        self.assertEqual(config.max_message_size, 64 * 1024)
        self.assertGreater(config.handshake_timeout, 0)

    def test_negativeExpireRefused(self):
        """A negative expire is refused naming it."""
        e = self.assertRaises(ValueError, check, ServerConfig(expire=-1))
        self.assertIn("expire", str(e))


class WorkerOptionsTests(SynchronousTestCase):
    """What --workers passes on to its workers."""

    def test_workerArgumentsShareThePortAndTheRedis(self):
        """Workers get the same options less --workers, the ports as reuseport:, and
        the resolved Redis (an embedded one is started once, by the supervisor)."""
        options = parse("--workers", "3", "-l", "tcp:9000:backlog=9", "--redis=redis://h:1/0",
                        "--prefix", "p", "--heartbeat=--hb--")
        argv = tap._worker_argv(options, tap.RedisAddress.from_url("redis://h:1/0"))
        self.assertEqual(argv, ["--prefix", "p", "--heartbeat=--hb--",
                                "--listen=reuseport:9000:backlog=9", "--redis=redis://h:1/0"])

    def test_workersNeedTcp(self):
        """--workers refuses listen descriptions it cannot share."""
        e = self.assertRaises(usage.UsageError, parse, "--workers", "2",
                              "--listen", "unix:/tmp/x.sock")
        self.assertIn("--workers", str(e))
