"""``twistd ws4tx`` options: parsing, precedence, and errors that name the option."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
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
        self.assertEqual(options["listen"], ["tcp:9001:backlog=1024",
                                             "unix:/tmp/ws4tx-test.sock"])

    def test_tcpPortsGetAPushServerBacklog(self):
        """A tcp: or reuseport: port without backlog= gets 1024 (Twisted's 50 drops
        connection bursts); one that names its backlog keeps it; others are unchanged."""
        table = [
            ("tcp:9000", "tcp:9000:backlog=1024"),
            ("tcp:9000:interface=127.0.0.1", "tcp:9000:interface=127.0.0.1:backlog=1024"),
            ("tcp:9000:backlog=9", "tcp:9000:backlog=9"),
            ("reuseport:9000", "reuseport:9000:backlog=1024"),
            ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
        ]
        for given, used in table:
            self.assertEqual(tap.with_backlog(given), used)
        self.assertEqual(parse("--listen", "tcp:9000")["listen"], ["tcp:9000:backlog=1024"])

    def test_badListenNamesTheOption(self):
        """An endpoint description Twisted cannot parse is refused naming --listen."""
        e = self.assertRaises(usage.UsageError, parse, "--listen", "nonsense:1")
        self.assertIn("--listen", str(e))

    def test_badRedisNamesTheOption(self):
        """An unusable Redis URL is refused naming --redis."""
        for url in ("http://x", "redis://h:notaport/0", "redis://h/x"):
            e = self.assertRaises(usage.UsageError, parse, "--redis", url)
            self.assertIn("--redis", str(e))

    def test_embeddedRedisOnAPort(self):
        """``embedded`` takes a free port, ``embedded:PORT`` that one; anything else after
        ``embedded`` is refused naming --redis."""
        self.assertEqual(parse("--redis", "embedded").given["redis"], ("embedded",))
        self.assertIsNone(tap.embedded_port("embedded"))
        self.assertEqual(tap.embedded_port("embedded:8379"), 8379)
        for bad in ("embedded:", "embedded:x", "embedded:0", "embedded:65536", "embeddedx"):
            e = self.assertRaises(usage.UsageError, parse, "--redis", bad)
            self.assertIn("--redis", str(e))
        # The embedded Redis is one server: it is not sharded with others.
        e = self.assertRaises(usage.UsageError, parse, "--redis", "embedded:8379",
                              "--redis", "redis://127.0.0.1:1/0")
        self.assertIn("--redis", str(e))
        self.assertIn("sharded", str(e))

    def test_embeddedRedisPortIsUsedAndATakenOneIsReportedAsAnError(self):
        """--redis embedded:PORT starts the Redis on PORT; if it is taken the server does
        not start, naming --redis."""
        import socket

        from ws4tx.server.embedded import free_port

        port = free_port()
        top = tap.makeService(parse("--redis", f"embedded:{port}", "--listen", "tcp:0"))
        try:
            (push,) = [s for s in top if isinstance(s, PushService)]
            self.assertEqual(push.config.redis.port, port)
            with socket.socket() as squatter:
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                taken = squatter.getsockname()[1]
                e = self.assertRaises(usage.UsageError, tap.makeService,
                                      parse("--redis", f"embedded:{taken}"))
                self.assertIn("--redis", str(e))
        finally:
            for child in top:
                if child.__class__.__name__ == "EmbeddedRedisService":
                    child.redis.stop()

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

    def test_authBoundsReachTheDjangoAuthenticatorsGate(self):
        """--auth-concurrency and --auth-queue bound the Django authenticator's gate (the
        defaults leave half of the reactor's ten threads to the site's pages)."""
        from ws4tx import _sync_redis

        from test._django import setup_django

        setup_django()
        self.addCleanup(_sync_redis.reset)
        argv = ("--django-settings", "test.settings", "--no-client-publish")
        gate = push_service(parse(*argv)).factory.authenticator.gate
        self.assertEqual((gate.concurrency, gate.queue), (5, 1000))
        gate = push_service(parse(*argv, "--auth-concurrency", "2", "--auth-queue", "0")
                            ).factory.authenticator.gate
        self.assertEqual((gate.concurrency, gate.queue), (2, 0))
        e = self.assertRaises(usage.UsageError,
                              lambda: push_service(parse("--auth-concurrency", "0")))
        self.assertIn("auth-concurrency must be >= 1", str(e))

    def test_emptyPrefixMeansNone(self):
        """--prefix '' gives ws4redis's unprefixed channel names (with client publishing
        off or accepted)."""
        self.assertIsNone(push_service(parse("--prefix", "", "--no-client-publish")).config.prefix)
        self.assertIsNone(push_service(parse("--prefix", "", "--unprefixed-publish")).config.prefix)

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

    def test_workerArgumentsShareThePortAndLeaveOutTheRedis(self):
        """Workers get the same options less --workers and --redis (however it was
        spelled), and the ports as reuseport:."""
        for redis in (["--redis=redis://:pw@h:1/0"], ["-r", "redis://:pw@h:1/0"],
                      ["-rredis://:pw@h:1/0"]):
            options = parse("--workers", "3", "-l", "tcp:9000:backlog=9", *redis,
                            "--prefix", "p", "--heartbeat=--hb--", "--no-client-publish",
                            "--allowed-origin", "https://a.example", "--expire", "0")
            argv = tap._worker_argv(options)
            self.assertEqual(argv, ["--prefix=p", "--expire=0", "--heartbeat=--hb--",
                                    "--allowed-origin=https://a.example",
                                    "--no-client-publish",
                                    "--listen=reuseport:9000:backlog=9"])
            self.assertNotIn("pw", " ".join(argv))
            # what the worker parses is what the supervisor parsed
            worker = parse(*argv)
            self.assertEqual({k: v for k, v in worker.given.items() if k != "listen"},
                             {k: v for k, v in options.given.items()
                              if k not in ("listen", "workers", "redis")})

    def test_secretsReachWorkersThroughTheEnvironment(self):
        """The resolved Redis URL and health token are in the workers' environment, never
        in their arguments; a worker takes that Redis over $WS4TX_REDIS_URL."""
        with tempfile.NamedTemporaryFile("w", suffix=".token") as token:
            token.write("t0ken\n")
            token.flush()
            options = parse("--workers", "2", "--redis", "redis://:pw@h:1/0",
                            "--health-token-file", token.name)
            argv = tap._worker_argv(options)
            self.assertNotIn("--health-token-file", " ".join(argv))
            config = check(ServerConfig(redis=tap.RedisAddress.from_url("redis://:pw@h:1/0"),
                                        health_token="t0ken"))
            env = tap._worker_environment(config, {"PATH": "/bin",
                                                   "WS4TX_REDIS_URL": "redis://env:1/3"})
        self.assertEqual(env[tap.WORKER_REDIS_ENV], "redis://:pw@h:1/0")
        self.assertEqual(env["WS4TX_HEALTH_TOKEN"], "t0ken")
        self.assertEqual(env["PATH"], "/bin")
        self.patch(os, "environ", env)
        worker = push_service(parse(*argv)).config
        self.assertEqual((worker.redis.url, worker.health_token),
                         ("redis://:pw@h:1/0", "t0ken"))
        self.assertNotIn(tap.WORKER_REDIS_ENV, os.environ)  # handed over once

    def test_workersNeedTcp(self):
        """--workers refuses listen descriptions it cannot share."""
        e = self.assertRaises(usage.UsageError, parse, "--workers", "2",
                              "--listen", "unix:/tmp/x.sock")
        self.assertIn("--workers", str(e))


class _FakeProcess:
    """A spawned process of :class:`_ProcessClock`."""

    def __init__(self, protocol, pid: int, env) -> None:
        self.protocol, self.pid, self.env = protocol, pid, env
        self.signals: list[str] = []
        self.exited = False

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def exit(self, status: int = 1, signal=None) -> None:
        """The process ends (its protocol is told)."""
        self.exited = True
        reason = ProcessDone(0) if status == 0 and signal is None else \
            ProcessTerminated(exitCode=None if signal else status, signal=signal)
        self.protocol.processEnded(Failure(reason))


class _ProcessClock(Clock):
    """A Clock that also spawns (fake) processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[_FakeProcess] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None,
                     gid=None, usePTY=False, childFDs=None):
        process = _FakeProcess(protocol, 1000 + len(self.spawned), env)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process

    def running(self, number: int) -> _FakeProcess:
        """The newest process of worker ``number`` (the workers spawn in order)."""
        return [p for p in self.spawned if p.protocol.number == number][-1]


class SupervisorTests(SynchronousTestCase):
    """--workers' supervisor: restarts with backoff, logs each end, stops any worker."""

    def setUp(self) -> None:
        self.clock = _ProcessClock()
        self.workers = tap._Workers(["--prefix=p"], {"WS4TX_WORKER_REDIS_URL": "redis://x"},
                                    2, 10.0, self.clock)
        self.workers.startService()

    def restartDelays(self, number: int, lived: float, times: int) -> list[float]:
        """Let worker ``number`` die ``times`` times after living ``lived`` s; the delays
        before each restart."""
        delays = []
        for _ in range(times):
            self.clock.advance(lived)
            before = len(self.clock.spawned)
            self.clock.running(number).exit(3)
            waited = 0.0
            while len(self.clock.spawned) == before:
                self.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
        return delays

    def test_workersGetTheirArgumentsAndEnvironment(self):
        """Each worker runs twistd ws4tx with the argv and the environment given."""
        self.assertEqual(len(self.clock.spawned), 2)
        for process in self.clock.spawned:
            self.assertEqual(process.env, {"WS4TX_WORKER_REDIS_URL": "redis://x"})
        self.assertEqual(self.workers.argv[-2:], ["ws4tx", "--prefix=p"])

    def test_aWorkerThatKeepsDyingIsRestartedLaterAndLater(self):
        """A crash loop: 1 s, doubling to 60 s; the other worker is not affected."""
        self.assertEqual(self.restartDelays(0, lived=0.5, times=8),
                         [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(self.restartDelays(1, lived=0.5, times=1), [1])

    def test_theDelayResetsOnceAWorkerStayedUp(self):
        """A worker that stayed up 60 s is restarted after 1 s again, and the next quick
        ends start the doubling again."""
        self.assertEqual(self.restartDelays(0, lived=1, times=4), [1, 2, 4, 8])
        self.assertEqual(self.restartDelays(0, lived=60, times=1), [1])
        self.assertEqual(self.restartDelays(0, lived=1, times=2), [2, 4])

    def test_eachEndIsLoggedOnceWithWhyAndWhen(self):
        """One warning per end, naming the worker, its status and the restart delay."""
        with capturedLogs() as events:
            self.clock.running(1).exit(3)
            self.clock.advance(1)  # restarted
            self.clock.advance(1.5)
            self.clock.running(1).exit(signal=9)
            self.clock.advance(2)
        lines = [e["log_format"].format(**e) for e in events
                 if e["log_namespace"] == "ws4tx.server.workers"]
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"worker 1 \(pid 1001\) exited with status 3 after 0\.0 s; "
                                   r"restarting it in 1 s")
        self.assertRegex(lines[1], r"worker 1 \(pid 1002\) killed by signal 9 after 1\.5 s; "
                                   r"restarting it in 2 s")

    def test_stopTerminatesWaitsForTheDrainThenKills(self):
        """Stop: SIGTERM to each worker, wait for their drain, SIGKILL past the drain
        timeout (10 s) plus a margin; done once every worker ended."""
        stopped = self.workers.stopService()
        first, second = self.clock.spawned
        self.assertEqual((first.signals, second.signals), (["TERM"], ["TERM"]))
        first.exit(0)
        self.clock.advance(14.9)
        self.assertNoResult(stopped)
        self.assertEqual(second.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(second.signals, ["TERM", "KILL"])
        second.exit(signal=9)
        self.successResultOf(stopped)
        self.assertEqual(len(self.clock.spawned), 2)  # no restart while stopping

    def test_stopToleratesWorkersThatAlreadyExited(self):
        """A worker whose process already exited (its end not yet reported, or reported
        and awaiting its restart) does not break the stop."""
        first, second = self.clock.spawned
        first.exit(1)        # reported: a restart is pending
        second.exited = True  # exited, not yet reported
        stopped = self.workers.stopService()
        self.assertEqual((first.signals, second.signals), ([], []))
        second.exit(1)
        self.successResultOf(stopped)
        self.clock.advance(120)
        self.assertEqual(len(self.clock.spawned), 2)  # the pending restart was cancelled


