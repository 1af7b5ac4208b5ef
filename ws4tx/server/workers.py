"""``twistd ws4tx --workers N``: the supervisor that runs N worker processes on one port.

Each worker is a ``twistd ws4tx`` of its own, with the supervisor's options less
``--workers``, ``--redis`` and the secrets (:func:`worker_argv`), which reach it through
its environment instead (:func:`worker_environment`: a process's command line is readable
by every local user), and its ports as ``reuseport:`` so that the kernel spreads the
connections. :class:`Workers` restarts a worker that ends, with a growing delay, and on
stop lets them drain.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python import failure

from ws4tx import redis_address, schema
from ws4tx.server._log import observer
from ws4tx.server.config import FIELDS, ServerConfig

if TYPE_CHECKING:
    from ws4tx.server.tap import Options

_log = Logger(observer=observer)


#: The environment variable by which the supervisor hands its workers the Redis it
#: resolved (in place of ``--redis``, which every local user can read in ``/proc``).
WORKER_REDIS_ENV = "WS4TX_WORKER_REDIS_URL"

#: Settings ``--workers`` does not pass on as options: each worker gets its own port
#: description, the Redis and the secrets come through the environment.
_NOT_PASSED_ON = frozenset({"workers", "listen", "redis"})


def worker_argv(options: Options) -> list[str]:
    """A worker's ``twistd ws4tx`` arguments: what the supervisor's command line gave,
    less ``--workers``, ``--redis`` and the secrets (see :func:`worker_environment`), plus
    the same ports with SO_REUSEPORT. Rebuilt from the parsed values, so that no spelling
    of an option (``-rURL``, an abbreviation) slips through."""
    argv = []
    for setting in schema.SETTINGS:
        if not setting.option_name:
            continue
        if (setting.key in _NOT_PASSED_ON or setting.kind == schema.SECRET
                or setting.key not in options.given):
            continue
        value, name = options.given[setting.key], "--" + setting.option_name
        if setting.flag:
            argv.append(name)
        elif setting.kind in schema.REPEATABLE:
            argv.extend(f"{name}={schema.item_text(setting, item)}" for item in value)
        else:
            argv.append(f"{name}={'' if value is None else value}")
    for description in options["listen"]:
        argv.append("--listen=reuseport:" + description[len("tcp:"):])
    return argv


def worker_environment(config: ServerConfig,
                        environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """A worker's environment: the supervisor's, plus the Redis it resolved
    (:data:`WORKER_REDIS_ENV`) and each secret setting it resolved (from a file, the
    environment or the Django settings) under the setting's own environment variable.
    A process's environment is readable only by its user, unlike its command line."""
    env = dict(os.environ if environ is None else environ)
    env[WORKER_REDIS_ENV] = redis_address.urls_text(config.shards)
    for setting in FIELDS:
        if setting.kind == schema.SECRET and setting.env:
            value = getattr(config, setting.key)
            if value:
                env[setting.env] = value
            else:
                env.pop(setting.env, None)
    return env


def _why(reason: Any) -> str:
    """Why a worker process ended, for the log."""
    value = getattr(reason, "value", reason)
    if getattr(value, "signal", None):
        return f"killed by signal {value.signal}"
    if getattr(value, "exitCode", None) is not None:
        return f"exited with status {value.exitCode}"
    if isinstance(value, OSError):
        return f"could not start ({value})"
    return f"ended ({value})"


class Workers(service.Service):
    """Runs ``count`` ``twistd ws4tx`` workers and restarts one that ends.

    A worker that keeps ending is restarted after a growing delay (``backoff(n)`` for its
    n-th restart in a row: 1 s doubling to 60 s); once a worker stayed up ``stable`` seconds
    its count starts again. Each end is logged once, with why and when it restarts. On stop
    the workers get SIGTERM and their drain is awaited (SIGKILL after ``drain_timeout`` and
    a margin); a worker that already ended is fine.

    ``twisted.runner.procmon.ProcessMonitor`` does not fit: its stopService does not wait
    for the processes (twistd would exit before they drained, and never send SIGKILL), it
    relays their output through its own log, and its exit hook is private."""

    #: Extra time, past the drain timeout, a worker has to exit before SIGKILL.
    KILL_MARGIN = 5.0

    def __init__(self, argv: list[str], env: dict[str, str], count: int,
                 drain_timeout: float, reactor: Any,
                 backoff: Callable[[int], float] = backoffPolicy(
                     initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0.0),
                 stable: float = 60.0) -> None:
        self.argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                     "-n", "--pidfile=", "ws4tx", *argv]
        self.env = env
        self.count = count
        self.drain_timeout = drain_timeout
        self.reactor = reactor
        self.backoff = backoff
        self.stable = stable
        #: worker number -> its process (while it runs).
        self.processes: dict[int, Any] = {}
        #: worker number -> how many times in a row it ended before ``stable`` s.
        self.failures: dict[int, int] = {}
        self._workers: dict[int, Worker] = {}
        self._restarts: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if not self.running:
            return
        worker = Worker(self, number, self.reactor.seconds())
        self._workers[number] = worker
        try:
            self.processes[number] = self.reactor.spawnProcess(
                worker, sys.executable, self.argv, env=self.env,
                childFDs={0: "w", 1: 1, 2: 2})
        except OSError as e:
            worker.processEnded(failure.Failure(e))

    def workerEnded(self, worker: Worker, reason: Any) -> None:
        """Called by a worker's protocol when its process ended: restart it (later)."""
        number = worker.number
        self.processes.pop(number, None)
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        if lived >= self.stable:
            self.failures[number] = 0
        attempt = self.failures.get(number, 0)
        self.failures[number] = attempt + 1
        delay = self.backoff(attempt)
        _log.warn("worker {n} (pid {pid}) {why} after {lived:.1f} s; restarting it in "
                  "{delay:g} s", n=number, pid=worker.pid, why=_why(reason), lived=lived,
                  delay=delay)
        self._restarts[number] = self.reactor.callLater(delay, self._spawn, number)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        live = [w for w in self._workers.values() if not w.ended.called]
        self._signal(live, "TERM")
        if (yield self._whenEnded(live, self.drain_timeout + self.KILL_MARGIN)):
            return
        _log.warn("{n} worker(s) still draining after {t:g} s: killing them",
                  n=sum(not w.ended.called for w in live), t=self.drain_timeout)
        self._signal(live, "KILL")
        yield self._whenEnded(live, self.KILL_MARGIN)

    @staticmethod
    def _signal(workers: list[Worker], signal_name: str) -> None:
        for worker in workers:
            if worker.ended.called or worker.transport is None:
                continue
            process: Any = worker.transport
            try:
                process.signalProcess(signal_name)
            except ProcessExitedAlready:
                pass  # its processEnded is on its way

    def _whenEnded(self, workers: list[Worker], timeout: float) -> defer.Deferred[bool]:
        """Fires with True once every worker ended, False after ``timeout`` s."""
        waiting: defer.Deferred[bool] = defer.Deferred()
        pending = [w for w in workers if not w.ended.called]
        if not pending:
            return defer.succeed(True)

        def one_ended(_: Any) -> Any:
            if not waiting.called and all(w.ended.called for w in pending):
                waiting.callback(True)
            return _

        for worker in pending:
            worker.ended.addCallback(one_ended)
        def timed_out() -> None:
            if not waiting.called:
                waiting.callback(False)

        timer = self.reactor.callLater(timeout, timed_out)
        waiting.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiting


class Worker(protocol.ProcessProtocol):
    """One worker process: tells :class:`Workers` when it ended."""

    def __init__(self, workers: Workers, number: int, started: float) -> None:
        self.workers, self.number, self.started = workers, number, started
        self.pid: Optional[int] = None
        #: Fires (with None) when the process ended.
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def processEnded(self, reason: Any) -> None:
        self.workers.workerEnded(self, reason)
        self.ended.callback(None)


class TemporaryDirectory(service.Service):
    """Removes a directory once everything after it stopped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


