"""The embedded Redis kept alive (:mod:`ws4tx.server.embedded_service`): the restart
policy on a Clock with a stand-in Redis, and the loud exit in a real process. The demo's
real Redis killed under a running server is in ``test/test_demo_process.py``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, Optional

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from ws4tx.redis_address import RedisAddress
from ws4tx.server.embedded import EmbeddedRedisError
from ws4tx.server.embedded_service import EXIT_STATUS, EmbeddedRedisService, why_ended

from test._process import ROOT


class FakeProcess:
    """What the service reads of a ``Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None


class FakeRedis:
    """An EmbeddedRedis that starts and stops instantly (or fails to start)."""

    def __init__(self) -> None:
        self.address = RedisAddress(host="127.0.0.1", port=8379)
        self.process: Optional[FakeProcess] = None
        self.starts = 0
        self.stops = 0
        self.fail_start = False

    def start(self) -> str:
        if self.process is not None:
            raise EmbeddedRedisError("already started")
        if self.fail_start:
            raise EmbeddedRedisError("Address already in use")
        self.starts += 1
        self.process = FakeProcess(1000 + self.starts)
        return self.address.url

    def stop(self) -> None:
        self.stops += 1
        self.process = None


class RestartPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.redis = FakeRedis()
        self.redis.start()
        self.watched: list[tuple[Any, Callable[[Any], None]]] = []
        self.gave_up: list[str] = []
        self.service = EmbeddedRedisService(
            self.redis, self.clock, stable=30.0, max_failures=3,  # type: ignore[arg-type]
            run_in_thread=lambda f: defer.maybeDeferred(f),
            watch=lambda process, ended: self.watched.append((process, ended)),
            give_up=self.gave_up.append)
        self.service.startService()

    def die(self, returncode: int = -9) -> FakeProcess:
        """The watched Redis ends and is reaped."""
        process, ended = self.watched[-1]
        process.returncode = returncode
        ended(process)
        return process

    def test_startsWatchingTheRunningRedis(self) -> None:
        self.assertEqual([p for p, _ in self.watched], [self.redis.process])

    def test_aDeadRedisIsStartedAgainAtOnceAndWatched(self) -> None:
        old = self.die()
        self.clock.advance(0)
        self.assertEqual(self.redis.starts, 2)
        self.assertIsNot(self.redis.process, old)
        self.assertIs(self.watched[-1][0], self.redis.process)
        self.assertEqual(self.service.restarts, 1)
        self.assertEqual(self.gave_up, [])

    def test_restartsInARowBackOff(self) -> None:
        """The first restart is at once, the next ones wait 1 s, 2 s, ..."""
        self.die()
        self.clock.advance(0)
        self.die()
        self.clock.advance(0.9)
        self.assertEqual(self.redis.starts, 2)
        self.clock.advance(0.1)
        self.assertEqual(self.redis.starts, 3)

    def test_aRedisThatKeepsDyingStopsTheServer(self) -> None:
        for _ in range(3):
            self.die()
            self.clock.advance(10)
        self.assertEqual(self.redis.starts, 4)
        self.die(returncode=1)
        self.assertEqual(len(self.gave_up), 1)
        self.assertIn("exited with status 1 4 times in a row", self.gave_up[0])
        self.clock.advance(60)
        self.assertEqual(self.redis.starts, 4)  # no more tries
        self.assertIsNone(self.redis.process)

    def test_aRedisThatStayedUpLongEnoughStartsTheCountAgain(self) -> None:
        for _ in range(10):
            self.die()
            self.clock.advance(0)  # started again at once
            self.clock.advance(30)
        self.assertEqual(self.gave_up, [])
        self.assertEqual(self.redis.starts, 11)

    def test_aRedisThatCannotBeStartedAgainStopsTheServer(self) -> None:
        self.redis.fail_start = True
        self.die()
        self.clock.advance(0)
        self.assertEqual(len(self.gave_up), 1)
        self.assertIn("could not be started again at redis://127.0.0.1:8379/0: "
                      "Address already in use", self.gave_up[0])

    def test_stoppingTheServiceStopsRedisAndIgnoresItsEnd(self) -> None:
        process, ended = self.watched[-1]
        self.service.stopService()
        self.assertIsNone(self.redis.process)
        process.returncode = 0
        ended(process)
        self.clock.advance(60)
        self.assertEqual((self.redis.starts, self.gave_up), (1, []))

    def test_stoppingCancelsAPendingRestart(self) -> None:
        self.die()
        self.clock.advance(0)
        self.die()  # restart in 1 s
        self.service.stopService()
        self.clock.advance(60)
        self.assertEqual(self.redis.starts, 2)

    def test_whyEnded(self) -> None:
        self.assertEqual(why_ended(-9), "was killed by signal 9")
        self.assertEqual(why_ended(3), "exited with status 3")


class ExitTests(SynchronousTestCase):
    def test_givingUpEndsTheProcessWithStatusOneAndSaysWhy(self) -> None:
        """The default give-up stops the reactor (services stop, what runs after the
        reactor runs) and then exits with 1."""
        script = (
            "from twisted.internet import reactor\n"
            "from ws4tx.server.embedded_service import exit_after_shutdown\n"
            "reactor.addSystemEventTrigger('before', 'shutdown', print, 'stopping', flush=True)\n"
            "reactor.callWhenRunning(exit_after_shutdown(reactor), 'Redis keeps dying')\n"
            "reactor.run()\n"
            "print('stopped', flush=True)\n")
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(done.returncode, EXIT_STATUS, done.stderr)
        self.assertIn("ws4tx: Redis keeps dying", done.stderr)
        self.assertEqual(done.stdout, "stopping\nstopped\n")  # then exit 1, at exit


class PortTakenTests(SynchronousTestCase):
    """A port picked free may be bound by another process before the server binds it (two
    test runs side by side): a real server then takes another, unless the port was given."""

    def setUp(self) -> None:
        import socket

        self.taken = socket.socket()
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen()
        self.addCleanup(self.taken.close)

    def test_aPickedPortTakenMeanwhileIsPickedAgain(self) -> None:
        from ws4tx.server.embedded import EmbeddedRedis, free_port

        taken = self.taken.getsockname()[1]
        picks = iter([taken])
        server = EmbeddedRedis(pick_port=lambda host: next(picks, None) or free_port(host))
        self.assertEqual(server.port, taken)
        server.start()
        self.addCleanup(server.stop)
        self.assertNotEqual(server.port, taken)

    def test_aGivenPortTakenIsAnError(self) -> None:
        from ws4tx.server.embedded import EmbeddedRedis

        server = EmbeddedRedis(port=self.taken.getsockname()[1])
        with self.assertRaisesRegex(EmbeddedRedisError, "Failed listening on port"):
            server.start()
