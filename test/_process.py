"""Running ``twistd ws4tx`` in a child process and waiting on what it prints."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Optional

from twisted.internet import defer, protocol, reactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 20.0


def twistd_path() -> str:
    """The twistd script of the running interpreter's environment."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


class Twistd(protocol.ProcessProtocol):
    """A ``twistd -n ws4tx`` child; ``output`` accumulates stdout and stderr."""

    def __init__(self) -> None:
        self.output = ""
        #: What it wrote on stderr alone.
        self.errors = ""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._waiters: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []

    def start(self, *args: str, env: Optional[dict[str, str]] = None) -> Twistd:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = ROOT + os.pathsep + environ.get("PYTHONPATH", "")
        environ.update(env or {})
        argv = [twistd_path(), "-n", "--pidfile=", "ws4tx", *args]
        self.transport = reactor.spawnProcess(self, argv[0], argv, env=environ, path=ROOT)
        return self

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for item in list(self._waiters):
            match = item[0].search(self.output)
            if match:
                self._waiters.remove(item)
                item[1].callback(match)

    def errReceived(self, data: bytes) -> None:
        self.errors += data.decode("utf-8", "replace")
        self.outReceived(data)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)
        for _, d in self._waiters:
            d.errback(AssertionError(f"twistd ended before printing it:\n{self.output}"))
        self._waiters = []

    def waitFor(self, pattern: str, timeout: float = TIMEOUT) -> defer.Deferred[re.Match[str]]:
        """Fires with the first match of ``pattern`` in the output (bounded)."""
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        if match:
            return defer.succeed(match)
        d: defer.Deferred[re.Match[str]] = defer.Deferred()
        self._waiters.append((compiled, d))

        def timedOut(failure):
            failure.trap(defer.TimeoutError)
            raise AssertionError(f"no {pattern!r} within {timeout} s in:\n{self.output}")

        return d.addTimeout(timeout, reactor).addErrback(timedOut)

    def stop(self, signal: str = "TERM") -> defer.Deferred[int]:
        """Send a signal (if still running) and wait for the exit status."""
        if not self.ended.called:
            self.transport.signalProcess(signal)
        return self.ended.addTimeout(TIMEOUT, reactor)


def started_redis(testcase: Any) -> tuple[Any, Any]:
    """A Redis server of the test's own (stopped at its end) and a redis-py client of it."""
    import redis

    from ws4tx.server.embedded import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    testcase.addCleanup(server.stop)
    store = redis.Redis.from_url(server.url)
    testcase.addCleanup(store.close)
    return server, store
