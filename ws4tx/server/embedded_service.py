"""The embedded Redis of ``twistd ws4tx --redis embedded`` as a Twisted service that keeps
it alive.

The child is reaped the moment it ends (a thread waits for it: the reactor reaps only the
processes it spawned itself, so without this a dead Redis stayed a ``<defunct>`` child and
the health URL answered 503 for good). Then it is started again on the same port: to the
broker that is an outage, so event clients are told (``ws4tx.interrupted``, then
``ws4tx.resumed``); everything Redis held is gone, so history starts a new epoch and
recovering clients get ``recovered: false``. A Redis that cannot be started again (its port
was taken meanwhile) or that keeps ending (``max_failures`` times in a row, each within
``stable`` seconds of its start) stops the server with a message and exit status 1, instead
of serving without Redis.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx.server._log import observer
from ws4tx.server.embedded import EmbeddedRedis

_log = Logger(observer=observer)

#: The exit status of a server whose embedded Redis could not be kept alive.
EXIT_STATUS = 1


def why_ended(returncode: Optional[int]) -> str:
    """How a child process ended, from its ``returncode``, for people."""
    if returncode is None:
        return "ended"
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def exit_after_shutdown(reactor: Any) -> Callable[[str], None]:
    """The default way to give up: say why on stderr, stop the reactor (the other services
    drain their clients, twistd cleans up as after any stop) and then end the process with
    :data:`EXIT_STATUS` instead of 0."""
    def give_up(message: str) -> None:
        _log.critical("{message}", message=message)
        print(f"ws4tx: {message}", file=sys.stderr, flush=True)
        atexit.register(_exit, EXIT_STATUS)
        if reactor.running:
            reactor.stop()
    return give_up


class EmbeddedRedisService(service.Service):
    """Reaps the embedded Redis when it ends and starts it again (same port), or gives up.

    ``run_in_thread(f)`` runs the blocking :meth:`EmbeddedRedis.start` (default: the
    reactor's thread pool); ``watch(process, ended)`` calls ``ended(process)`` in the reactor
    thread once ``process`` has been reaped (default: a thread that waits for it). Restarts
    in a row wait ``backoff(n)`` seconds (0 s, then 1 s doubling); a Redis that stayed up
    ``stable`` seconds resets the count. On stop the Redis is stopped (it is meant to be
    the first child of the server, stopped last)."""

    def __init__(
        self,
        redis: EmbeddedRedis,
        reactor: Any,
        *,
        stable: float = 30.0,
        max_failures: int = 5,
        backoff: Callable[[int], float] = backoffPolicy(
            initialDelay=1.0, maxDelay=10.0, factor=2.0, jitter=lambda: 0.0),
        run_in_thread: Optional[Callable[[Callable[[], Any]], defer.Deferred[Any]]] = None,
        watch: Optional[Callable[[Any, Callable[[Any], None]], None]] = None,
        give_up: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.redis = redis
        self.reactor = reactor
        self.stable = stable
        self.max_failures = max_failures
        self.backoff = backoff
        self.run_in_thread = run_in_thread or (
            lambda f: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f))
        self.watch = watch or self._watchInThread
        self.give_up = give_up or exit_after_shutdown(reactor)
        #: How many times in a row the Redis ended soon after its start.
        self.failures = 0
        #: How many times it was started again.
        self.restarts = 0
        self._started = 0.0
        self._restart: Any = None

    def startService(self) -> None:
        super().startService()
        self._started = self.reactor.seconds()
        if self.redis.process is not None:
            self.watch(self.redis.process, self.ended)

    def stopService(self) -> None:
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        self.redis.stop()

    def _watchInThread(self, process: Any, ended: Callable[[Any], None]) -> None:
        def wait() -> None:
            process.wait()
            self.reactor.callFromThread(ended, process)

        threading.Thread(target=wait, name=f"embedded-redis-{process.pid}",
                         daemon=True).start()

    def ended(self, process: subprocess.Popen[bytes]) -> None:
        """``process`` was reaped: unless it was stopped on purpose, start it again."""
        if not self.running or process is not self.redis.process:
            return  # stopped on purpose, or an old one
        lived = self.reactor.seconds() - self._started
        if lived >= self.stable:
            self.failures = 0
        self.failures += 1
        why = why_ended(process.returncode)
        if self.failures > self.max_failures:
            self.redis.stop()
            self.give_up(f"the embedded Redis (pid {process.pid}) {why} {self.failures} times "
                         f"in a row, each within {self.stable:g} s of its start: stopping")
            return
        delay = self.backoff(self.failures - 2) if self.failures > 1 else 0.0
        _log.error("the embedded Redis (pid {pid}) {why} after {lived:.1f} s; starting it "
                   "again at {url} in {delay:g} s (what it held is gone: history starts a new "
                   "epoch)", pid=process.pid, why=why, lived=lived, url=self.redis.address.safe_url,
                   delay=delay)
        self.redis.stop()  # the temporary directory; the process is reaped already
        self._restart = self.reactor.callLater(delay, self._startAgain)

    def _startAgain(self) -> None:
        self._restart = None
        if not self.running:
            return

        def started(_: Any) -> None:
            if not self.running:
                self.redis.stop()
                return
            process = self.redis.process
            self.restarts += 1
            self._started = self.reactor.seconds()
            _log.warn("the embedded Redis is running again (pid {pid}) at {url}",
                      pid=getattr(process, "pid", None), url=self.redis.address.safe_url)
            self.watch(process, self.ended)

        def failed(failure: Failure) -> None:
            if self.running:
                self.give_up(f"the embedded Redis could not be started again at "
                             f"{self.redis.address.safe_url}: {failure.getErrorMessage()}")

        self.run_in_thread(self.redis.start).addCallbacks(started, failed)
