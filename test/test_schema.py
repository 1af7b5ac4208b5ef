"""The one settings schema: every setting declared once, and everything that lists or reads
settings (twistd's options, the README table, both halves' Django-settings readers) agrees
with it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from twisted.internet import threads
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ws4tx import schema
from ws4tx.history import Retention, Rule
from ws4tx.server import tap
from ws4tx.server.config import FIELDS, ServerConfig, check
from ws4tx.server.service import PushService

from test._djangoredis import DjangoTestCase
from test._server import ServerTestCase

README = Path(__file__).resolve().parent.parent / "README.md"

#: A valid command-line value, different from the default, for settings whose kind alone
#: does not give one.
SAMPLES = {
    "websocket_url": "/push/", "health_url": "/up", "metrics_url": "/stats", "prefix": "app",
    "heartbeat": "--hb--",
    "trusted_proxies": "10.0.0.0/8", "allowed_origins": "https://a.example",
    "stored_facilities": "chat*", "history": "chat*=100:600", "presence": "chat*",
}


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def server_config(*argv: str) -> ServerConfig:
    top = tap.makeService(parse(*argv))
    (push,) = [s for s in top if isinstance(s, PushService)]
    return push.config


class SchemaTests(SynchronousTestCase):
    """The schema covers everything, and what is derived from it matches it."""

    def test_readmeTableIsTheSchemas(self):
        """The README's configuration table is the one the schema generates
        (regenerate it with ``python -m ws4tx.schema``)."""
        self.assertIn(schema.markdown_table(), README.read_text(encoding="utf-8"))

    def test_everyFieldIsDeclaredWithItsDefault(self):
        """Each ServerConfig field (but the Redis address, an option of its own) is a
        setting of the schema with the same default, and vice versa."""
        fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
        declared = {s.key for s in FIELDS}
        self.assertEqual(set(fields) - {"redis", "redis_shards"}, declared)
        config = ServerConfig()
        for setting in FIELDS:
            self.assertEqual(getattr(config, setting.key), setting.default, setting.key)

    def test_everySettingHasAnOptionInHelp(self):
        """``twistd ws4tx --help`` lists an option for every setting of the server."""
        text = str(tap.Options())
        for setting in schema.SETTINGS:
            if setting.where != schema.DJANGO:
                self.assertIn(f"--{setting.option_name}", text)

    def test_boundsAreOptionsAndSettings(self):
        """Every bound of the security review is a command-line option and a setting."""
        for key in ("max_connections_per_ip", "rate_limit", "rate_burst", "max_queue_bytes",
                    "max_queue_messages", "slow_timeout", "max_backlog", "handshake_timeout",
                    "max_frame_size", "max_outgoing_size", "max_query_length",
                    "max_facility_length", "max_fragments", "store_budget"):
            setting = schema.get(key)
            self.assertTrue(setting.option_name and setting.setting_names, key)

    def test_everyOptionReachesTheConfig(self):
        """A value given on the command line ends up in the server's configuration."""
        for setting in FIELDS:
            if setting.kind == schema.SECRET:
                continue
            argv: list[str] = [f"--{setting.option_name}"]
            if setting.kind == schema.INT:
                argv.append(str(int(setting.default) + 7))
            elif setting.kind == schema.NUMBER:
                argv.append(str(setting.default + 7.5))
            elif setting.kind != schema.BOOL:
                argv.append(SAMPLES[setting.key])
            config = server_config(*argv)
            expected = setting.parse_text(argv[1]) if len(argv) > 1 else not setting.default
            self.assertEqual(getattr(config, setting.key), expected, setting.key)
            self.assertNotEqual(expected, setting.default, setting.key)

    def test_badValuesNameTheOption(self):
        """A bad value on the command line stops the start naming its option."""
        for argv in (["--max-connections-per-ip", "-1"], ["--rate-limit", "fast"],
                     ["--max-backlog", "0"], ["--handshake-timeout", "soon"],
                     ["--trusted-proxy", "proxy.example"], ["--max-fragments", "0"]):
            e = self.assertRaises(usage.UsageError, parse, *argv)
            self.assertIn(argv[0], str(e))

    def test_historyOptionIsRepeatableGlobSizeTtl(self):
        """--history glob=size:ttl, repeatable, in order (the first match wins); a bad
        one stops the start naming --history."""
        config = server_config("--history", "chat*=100:600", "--history", "news=5:60")
        self.assertEqual(config.history, (Rule("chat*", Retention(100, 600)),
                                          Rule("news", Retention(5, 60))))
        self.assertEqual(config.history_for("chat-room"), (100, 600))
        self.assertIsNone(config.history_for("other"))
        for bad in ("chat", "chat=100", "chat=x:60", "chat=0:60", "chat=10:0", "a:b=1:1",
                    "=1:1"):
            with self.subTest(value=bad):
                e = self.assertRaises(usage.UsageError, parse, "--history", bad)
                self.assertIn("--history", str(e))

    def test_historyReachesTheWorkersAsGiven(self):
        """--workers passes --history on in the form it was given."""
        options = parse("--workers", "2", "--history", "chat*=100:600")
        self.assertIn("--history=chat*=100:600", tap._worker_argv(options))

    def test_checkNamesTheOptionForEmbedders(self):
        """A ServerConfig built in code is checked by the same schema."""
        e = self.assertRaises(ValueError, check, ServerConfig(max_queue_messages=0))
        self.assertIn("max-queue-messages", str(e))
        self.assertIsNone(check(ServerConfig(heartbeat="", prefix="",
                                                 client_publish=False)).heartbeat)


class SecretTests(SynchronousTestCase):
    """The health token never needs to be on the command line."""

    def test_tokenFromAFileOrTheEnvironment(self):
        """--health-token-file reads the token; $WS4TX_HEALTH_TOKEN gives it too; it is
        never shown in the configuration's repr."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = os.path.join(directory.name, "token")
        Path(path).write_text("s3cret\n")
        config = server_config("--health-token-file", path)
        self.assertEqual(config.health_token, "s3cret")
        self.assertNotIn("s3cret", repr(config))
        self.patch(os, "environ", {schema.HEALTH_TOKEN_ENV: "from-env"})
        self.assertEqual(server_config().health_token, "from-env")

    def test_missingFileNamesTheOption(self):
        """An unreadable token file stops the start naming the option."""
        e = self.assertRaises(usage.UsageError, parse, "--health-token-file", "/nonexistent")
        self.assertIn("--health-token-file", str(e))


# Every setting both halves read: (key, Django-side reader), values given as settings,
# and what both must make of them (an exception type means "refused, naming the setting").
_SHARED_CASES: list[tuple[str, str, Any, Any]] = [
    ("prefix", "PREFIX", "app", "app"),
    ("prefix", "PREFIX", "", None),
    ("prefix", "PREFIX", None, None),
    ("prefix", "PREFIX", 5, ValueError),
    ("prefix", "PREFIX", b"app", ValueError),
    ("expire", "EXPIRE", 0, 0),
    ("expire", "EXPIRE", 60, 60),
    ("expire", "EXPIRE", 60.0, 60),
    ("expire", "EXPIRE", 1.5, ValueError),
    ("expire", "EXPIRE", -1, ValueError),
    ("expire", "EXPIRE", "60", ValueError),
    ("expire", "EXPIRE", True, ValueError),
    ("expire", "EXPIRE", None, ValueError),
    ("heartbeat", "HEARTBEAT", "--hb--", "--hb--"),
    ("heartbeat", "HEARTBEAT", "", None),
    ("heartbeat", "HEARTBEAT", None, None),
    ("heartbeat", "HEARTBEAT", 5, ValueError),
    ("websocket_url", "WEBSOCKET_URL", "/push/", "/push/"),
    ("websocket_url", "WEBSOCKET_URL", "/ws", ValueError),
    ("websocket_url", "WEBSOCKET_URL", "ws/", ValueError),
    ("websocket_url", "WEBSOCKET_URL", "", ValueError),
    ("websocket_url", "WEBSOCKET_URL", 5, ValueError),
    ("history", "HISTORY", {}, ()),
    ("history", "HISTORY", {"chat*": {"size": 100, "ttl": 600}, "news": {"size": 5, "ttl": 60}},
     (Rule("chat*", Retention(100, 600)), Rule("news", Retention(5, 60)))),
    ("history", "HISTORY", {"chat": {"size": 10.0, "ttl": 60}},
     (Rule("chat", Retention(10, 60)),)),
    ("history", "HISTORY", {"chat": {"size": 0, "ttl": 60}}, ValueError),
    ("history", "HISTORY", {"chat": {"size": 10, "ttl": -1}}, ValueError),
    ("history", "HISTORY", {"chat": {"size": 10}}, ValueError),
    ("history", "HISTORY", {"chat": {"size": 10, "ttl": 60, "mode": "x"}}, ValueError),
    ("history", "HISTORY", {"chat": 10}, ValueError),
    ("history", "HISTORY", {"a:b": {"size": 10, "ttl": 60}}, ValueError),
    ("history", "HISTORY", {"": {"size": 10, "ttl": 60}}, ValueError),
    ("history", "HISTORY", ["chat"], ValueError),
    ("history", "HISTORY", "chat", ValueError),
]


class SharedSettingsTests(DjangoTestCase):
    """Both halves read every setting they share the same way."""

    def setUp(self) -> None:
        super().setUp()
        from ws4tx import _sync_redis

        # twistd ws4tx points the Django-side publishers at its own Redis.
        self.addCleanup(_sync_redis.reset)

    def _django(self, key: str) -> Any:
        from ws4tx import _django_settings

        try:
            return getattr(_django_settings, key)()
        except ImproperlyConfigured as e:
            return ValueError(str(e))

    def _server(self, key: str) -> Any:
        try:
            # (Client publishing off: an empty PREFIX with it refuses to start.)
            return getattr(server_config("--django-settings", "test.settings",
                                         "--no-client-publish"), key)
        except usage.UsageError as e:
            return ValueError(str(e))

    def test_sameValueOrSameErrorOnBothSides(self):
        """Each value, under each of its names, gives both halves the same value, or the
        same error naming the setting."""
        for key, name, value, expected in _SHARED_CASES:
            names = schema.get(key).setting_names
            self.assertIn(name, names[0])
            for full in names:
                with self.subTest(setting=full, value=value):
                    from django.test import override_settings

                    with override_settings(**{full: value}):
                        django_side, server_side = self._django(key), self._server(key)
                    if expected is ValueError:
                        self.assertIsInstance(django_side, ValueError)
                        self.assertIsInstance(server_side, ValueError)
                        self.assertEqual(str(django_side), str(server_side))
                        self.assertIn(full, str(server_side))
                    else:
                        self.assertEqual((django_side, server_side), (expected, expected))

    def test_unsetMeansTheSameDefault(self):
        """Without the settings both halves use the same defaults."""
        for key in ("prefix", "expire", "heartbeat", "websocket_url"):
            self.assertEqual(self._django(key), self._server(key), key)


class HistoryAgreementTests(ServerTestCase):
    """Both halves read HISTORY from the schema, but from two configurations: every node
    puts its HISTORY in the node registry, and the Django side refuses to publish while
    its own differs, saying how."""

    config = ServerTestCase.config.replace(history=(("chat*", {"size": 100, "ttl": 600}),))

    async def _setUp(self) -> None:
        from ws4tx import _history_check

        await super()._setUp()
        await self.service.node.whenRegistered()
        _history_check.forget()
        self.addCleanup(_history_check.forget)

    def _publish(self) -> int:
        from ws4tx import api

        return api.publish("chatroom", "hello", broadcast=True)

    async def test_differentHistoryIsRefusedSayingHow(self):
        """A site without HISTORY (or with another size) may not publish: the error names
        the node, what it keeps and what the site keeps; nothing reaches Redis."""
        from django.core.exceptions import ImproperlyConfigured

        for history, shown in (({}, "no history"),
                               ({"chat*": {"size": 10, "ttl": 600}}, "'chat*=10:600'")):
            self.useDjangoSide(WS4TX_HISTORY=history)
            e = self.assertRaises(ImproperlyConfigured, self._publish)
            self.assertIn(f"the node keeps 'chat*=100:600', this site {shown}", str(e))
            self.assertIn(self.service.node.id, str(e))
            self.assertIn("WS4TX_HISTORY", str(e))
        self.assertIsNone(self.redis.get("ws4tx:broadcast:chatroom"))

    async def test_anotherRedisIsAskedAgain(self):
        """The agreement is with the nodes of one registry: once the Django side's client
        goes to another Redis (or is rebuilt), its next publish checks again."""
        from ws4tx import _history_check, _sync_redis

        self.useDjangoSide(WS4TX_HISTORY={"chat*": {"size": 100, "ttl": 600}})
        await threads.deferToThread(self._publish)
        self.assertIsNone(_history_check.pending())
        _sync_redis.use_url(self.redis_server.url)
        self.assertIsNotNone(_history_check.pending())

    async def test_aScriptWithoutSettingsTakesTheNodesHistory(self):
        """A plain script (no Django settings, the README's shell line) has no HISTORY to
        compare: it takes the live nodes' and publishes with positions, as the site would."""
        code = ("from ws4tx import api\n"
                "print(api.publish('chatroom', 'from a script', broadcast=True).positions)\n")
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env.update(WS4TX_REDIS_URL=self.redis_server.url,
                   PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        done = await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", code], cwd=tempfile.gettempdir(), env=env,
            capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("ws4tx:broadcast:chatroom", done.stdout)  # it has a position there
        self.assertTrue(any(self.redis.scan_iter("ws4tx:history:*")))

    async def test_sameHistoryPublishes(self):
        """With the same HISTORY the site publishes, with positions."""
        self.useDjangoSide(WS4TX_HISTORY={"chat*": {"size": 100, "ttl": 600}})
        self._publish()
        self.assertTrue(any(self.redis.scan_iter("ws4tx:history:*")))
