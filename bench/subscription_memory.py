"""Server memory per extra subscription against per extra socket, in one invocation.

One ws4tx server (``twistd ws4tx``, its own Redis on a free port). Two phases on it:

1. ``sockets``: ``--sockets`` event clients (``ws4tx.v1``) open ``/ws/`` and each
   subscribes one broadcast channel of its own (``subscribe`` frame): what an extra socket
   with its channel costs, ``(RSS after - RSS before) / sockets``.
2. ``subscriptions``: ``--hosts`` of those clients each subscribe ``--per-host`` more
   channels of their own on the same connection: what an extra subscription costs,
   ``(RSS after - RSS before) / (hosts * per-host)``. With ``--shared-channels`` those
   are ``--per-host`` channels every host shares: the subscription without a channel.

Otherwise every channel is distinct in both phases, so both include a channel's cost (the hub, the
Redis subscription). RSS is the server's ``VmRSS`` after a garbage collection settles
(read three times, 0.5 s apart: the last). The clients are one Twisted process (Autobahn);
the server's CPU is not the limit of a memory count, but this machine is shared: say how
busy it was (the load average is printed).

    python3 bench/subscription_memory.py --sockets 2000 --hosts 200 --per-host 10

``--objects`` also traces the server's allocations (tracemalloc, from the first reading on,
``_traced_twistd.py``): the bytes per socket and per subscription of what is still alive
at each reading, by the source line that allocated it: where the memory goes, exactly and
without the allocator's noise in RSS (which varies by about 0.2 KB per subscription
between invocations at 2,000 subscriptions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, task

from ws4tx.server.embedded import EmbeddedRedis

from benchlib import oneserver
from benchlib.procs import free_port


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class _Client(WebSocketClientProtocol):
    answers: defer.DeferredQueue[dict[str, Any]]
    opened: defer.Deferred[None]

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        if frame.get("ws4tx") in ("subscribed", "refused"):
            self.answers.put(frame)

    async def subscribe(self, id: int, facility: str) -> None:
        self.sendMessage(json.dumps({"ws4tx": "subscribe", "id": id, "facility": facility,
                                     "audiences": {"broadcast": True}}).encode())
        answer = await self.answers.get().addTimeout(30, reactor)
        if answer["ws4tx"] != "subscribed":
            raise RuntimeError(f"subscribe refused: {answer}")


async def _connect(port: int) -> _Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws/", protocols=["ws4tx.v1"])
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=30)
    proto = _Client()
    proto.factory = factory
    proto.answers = defer.DeferredQueue()
    proto.opened = defer.Deferred()
    factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
    await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30).connect(
        factory)
    await proto.opened.addTimeout(30, reactor)
    return proto


class _Snapshots:
    """The server's tracemalloc snapshots (``--objects``): one per settled RSS."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.taken = 0

    async def take(self, pid: int) -> None:
        if self.directory is None:
            return
        self.taken += 1
        os.kill(pid, signal.SIGUSR1)
        done = os.path.join(self.directory, f"{self.taken}.done")
        deadline = time.monotonic() + 600
        while not os.path.exists(done):
            if time.monotonic() > deadline:
                raise RuntimeError("the server wrote no snapshot")
            await task.deferLater(reactor, 0.5, lambda: None)

    def per_unit(self, first: int, second: int, units: int, top: int) -> dict[str, Any]:
        """What the objects allocated between snapshots ``first`` and ``second`` and
        still alive cost per unit: in all, and by the source line that made them."""
        import tracemalloc

        assert self.directory is not None
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
                  tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
        a, b = (tracemalloc.Snapshot.load(os.path.join(self.directory, f"{n}.snapshot"))
                .filter_traces(ignore) for n in (first, second))
        stats = b.compare_to(a, "lineno")
        root = os.getcwd() + os.sep
        lines = [{"bytes": round(st.size_diff / units, 1),
                  "objects": round(st.count_diff / units, 2),
                  "where": f"{st.traceback[0].filename.replace(root, '')}:"
                           f"{st.traceback[0].lineno}"}
                 for st in stats[:top] if abs(st.size_diff) >= units]
        return {"bytes": round(sum(st.size_diff for st in stats) / units, 1),
                "by_line": lines}


async def _settled_rss(pid: int, snapshots: _Snapshots) -> int:
    await snapshots.take(pid)
    rss = 0
    for _ in range(3):
        await task.deferLater(reactor, 0.5, lambda: None)
        rss = _rss_kb(pid)
    return rss


async def _measure(options: argparse.Namespace, server: subprocess.Popen[bytes],
                   port: int, snapshots: _Snapshots) -> dict[str, Any]:
    clients: list[_Client] = []
    before = await _settled_rss(server.pid, snapshots)
    started = time.monotonic()
    for i in range(options.sockets):
        client = await _connect(port)
        await client.subscribe(1, f"s{i}")
        clients.append(client)
    sockets_took = time.monotonic() - started
    after_sockets = await _settled_rss(server.pid, snapshots)
    started = time.monotonic()
    for h, client in enumerate(clients[:options.hosts]):
        await defer.gatherResults([
            defer.ensureDeferred(client.subscribe(
                2 + k, f"x{k}" if options.shared_channels else f"h{h}x{k}"))
            for k in range(options.per_host)])
    subscriptions_took = time.monotonic() - started
    after_subscriptions = await _settled_rss(server.pid, snapshots)
    extra = options.hosts * options.per_host
    per_socket = (after_sockets - before) / options.sockets
    per_subscription = (after_subscriptions - after_sockets) / extra
    for client in clients:
        client.sendClose()
    objects = {} if snapshots.directory is None else {"objects": {
        "per_socket": snapshots.per_unit(1, 2, options.sockets, options.top),
        "per_subscription": snapshots.per_unit(2, 3, extra, options.top)}}
    return {**objects,
        "sockets": options.sockets, "subscriptions": extra,
        "rss_kb": {"before": before, "after_sockets": after_sockets,
                   "after_subscriptions": after_subscriptions},
        "kb_per_socket": round(per_socket, 2),
        "kb_per_subscription": round(per_subscription, 2),
        "ratio_subscription_to_socket": round(per_subscription / per_socket, 3),
        "seconds": {"sockets": round(sockets_took, 1),
                    "subscriptions": round(subscriptions_took, 1)},
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--per-host", type=int, default=10)
    parser.add_argument("--shared-channels", action="store_true",
                        help="the extra subscriptions are to --per-host channels that every "
                             "host shares (the subscription's own cost, without a new "
                             "channel's)")
    parser.add_argument("--objects", action="store_true",
                        help="also trace the server's allocations (tracemalloc, started "
                             "after start-up): the bytes per socket and per subscription "
                             "of the objects still alive, by the source line that made them "
                             "(slower; the RSS is then inflated by the tracing)")
    parser.add_argument("--top", type=int, default=25,
                        help="source lines listed with --objects")
    options = parser.parse_args()
    if options.hosts > options.sockets or options.per_host + 1 > 100:
        parser.error("--hosts must be at most --sockets, --per-host at most 99")
    redis = EmbeddedRedis()
    redis.start()
    port = free_port()
    snapshots = _Snapshots(tempfile.mkdtemp(prefix="ws4tx-objects-")
                           if options.objects else None)
    twistd = ([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "_traced_twistd.py"), snapshots.directory]
              if snapshots.directory is not None
              else [oneserver.TWISTD])
    server = subprocess.Popen(
        [*twistd, "-n", "--pidfile=", *oneserver.ws4tx_args(port, redis.url)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        oneserver.wait_started(server, lambda: oneserver.accepts(port))
        oneserver.measure_and_print(lambda: _measure(options, server, port, snapshots))
    finally:
        oneserver.stop(server)
        redis.stop()
        if snapshots.directory is not None:
            shutil.rmtree(snapshots.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
