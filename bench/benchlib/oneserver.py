"""One ``twistd ws4tx`` under measurement, driven from a Twisted load generator in this
process: the server's command line, its start (bounded) and its stop, and one run of the
reactor for the measurement (shared by subscribe_rate, subscription_fanout and
subscription_memory)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def ws4tx_args(port: int, redis_url: str) -> list[str]:
    """``twistd`` arguments from ``ws4tx`` on: loopback on ``port`` with a deep backlog, no
    pings and no per-IP or rate limits (the load comes from one address)."""
    return ["ws4tx", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
            "--redis", redis_url, "--ping-interval", "0", "--max-connections-per-ip", "0",
            "--rate-limit", "0"]


def own_cpu() -> float:
    """This process's user + system CPU seconds so far."""
    times = os.times()
    return times.user + times.system


def accepts(port: int) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; ``OSError`` if it does not."""
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def wait_started(server: subprocess.Popen[Any], ready: Callable[[], object],
                 timeout: float = 30.0) -> None:
    """Call ``ready`` until it stops raising ``OSError``; exit naming the failure if the
    server ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def measure_and_print(measure: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Run the reactor for ``measure`` and print its result as JSON (its failure raised)."""
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await measure())

    d = defer.ensureDeferred(run())
    d.addBoth(lambda r: (reactor.stop(), r)[1])  # type: ignore[attr-defined]
    failures: list[Any] = []
    d.addErrback(failures.append)
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        failures[0].raiseException()
    print(json.dumps(result, indent=1))


def stop(server: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """SIGTERM the server; kill it if it has not ended within ``grace`` seconds."""
    server.terminate()
    try:
        server.wait(grace)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)
