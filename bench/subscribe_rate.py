"""Subscribes per second with signed grants against subscribes through the authenticator,
in one invocation.

One ws4tx server (``twistd ws4tx`` with the Django site of ``servers/cookie_site.py``:
users and sessions in SQLite, the server's SQL statements counted in its process and
answered on ``/count``), its own Redis on a free port. ``--clients`` logged-in event
clients (``ws4tx.v1``, each with its session cookie) open ``/ws/``. Then two phases, the
frames spread evenly over the clients and sent at ``--rate`` per second (every 10 ms a
slice), each to a facility of its own (a new channel: the Redis SUBSCRIBE is part of what
is measured):

1. ``grants``: ``--subscribes`` frames, each with a grant of the page
   (:func:`ws4tx.grants.make_grant`, made before the phase) for the client's user channel;
2. ``authenticator``: ``--baseline`` frames without a grant, authorized as a URL would be
   (the session and the user read from the database in the authenticator's threads).

Per phase: the time from a frame's send to its ``subscribed`` answer (p50, p99, max),
answers per second, refusals, the SQL statements the server ran meanwhile, the server's
CPU (of one core) and the load generator's, the time each waited, runnable, for a core
(``/proc/PID/task/*/schedstat``: the machine's other load), and which was the limit
(``benchlib/limits.py``: ``server``, ``generator``, ``... starved`` when using and waiting
make 90 % of a core, ``neither``). Then the ratios. The clients are one Twisted process (Autobahn). This machine is shared: the load
average is printed; say how busy it was with any number.

    python3 bench/subscribe_rate.py --clients 200 --subscribes 10000 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, task

from ws4tx.server.embedded import EmbeddedRedis

from benchlib import oneserver
from benchlib.limits import limit_of
from benchlib.procs import cpu_seconds, free_port, runqueue_wait_seconds

SERVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers")
SITE = "cookie_site"
def _count(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as answer:
        counts: dict[str, int] = json.loads(answer.read())
        return counts


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Client(WebSocketClientProtocol):
    opened: defer.Deferred[None]
    #: frame id -> when it was sent (monotonic)
    sent: dict[int, float]
    latencies: list[float]
    refused: list[dict[str, Any]]
    done: defer.Deferred[None]
    expected: int

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        kind = frame.get("ws4tx")
        if kind not in ("subscribed", "refused"):
            return
        started = self.sent.pop(frame["id"])
        if kind == "subscribed":
            self.latencies.append(time.monotonic() - started)
        else:
            self.refused.append(frame)
        self.expected -= 1
        if self.expected == 0:
            self.done.callback(None)

    def expect(self, count: int) -> defer.Deferred[None]:
        self.expected = count
        self.latencies, self.refused = [], []
        self.done = defer.Deferred()
        if count == 0:
            self.done.callback(None)
        return self.done

    def subscribe(self, id: int, facility: str, grant: str | None) -> None:
        frame: dict[str, Any] = {"ws4tx": "subscribe", "id": id, "facility": facility,
                                 "audiences": {"user": True}}
        if grant is not None:
            frame["grant"] = grant
        self.sent[id] = time.monotonic()
        self.sendMessage(json.dumps(frame, separators=(",", ":")).encode())


async def _connect(port: int, session_key: str) -> _Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws/", protocols=["ws4tx.v1"],
                                     headers={"Cookie": f"sessionid={session_key}"})
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=30)
    proto = _Client()
    proto.factory = factory
    proto.opened = defer.Deferred()
    proto.sent = {}
    factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
    await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30).connect(
        factory)
    await proto.opened.addTimeout(30, reactor)
    return proto


async def _phase(name: str, clients: list[_Client], frames: list[tuple[int, str, Any]],
                 rate: float, port: int, server_pid: int, tick: float) -> dict[str, Any]:
    """Send ``frames`` (client index, facility, grant) at ``rate`` per second, those due
    every ``tick`` seconds together."""
    per_client = [0] * len(clients)
    for index, _, _ in frames:
        per_client[index] += 1
    finished = defer.gatherResults([c.expect(n) for c, n in zip(clients, per_client,
                                                                 strict=True)])
    queries0, cpu0, own0 = _count(port), cpu_seconds(server_pid), oneserver.own_cpu()
    wait0, own_wait0 = runqueue_wait_seconds(server_pid), runqueue_wait_seconds(os.getpid())
    started = time.monotonic()
    position = 0
    ids = [1_000_000 * (name == "authenticator")] * len(clients)

    def send() -> None:
        nonlocal position
        due = min(len(frames), int((time.monotonic() - started) * rate) + 1)
        while position < due:
            index, facility, grant = frames[position]
            ids[index] += 1
            clients[index].subscribe(ids[index], facility, grant)
            position += 1
        if position == len(frames) and loop.running:
            loop.stop()

    loop = task.LoopingCall(send)
    await loop.start(tick, now=True)
    sending = time.monotonic() - started
    await finished.addTimeout(60 + len(frames) / max(rate, 1), reactor)
    took = time.monotonic() - started
    queries1, cpu1, own1 = _count(port), cpu_seconds(server_pid), oneserver.own_cpu()
    wait1, own_wait1 = runqueue_wait_seconds(server_pid), runqueue_wait_seconds(os.getpid())
    latencies = [x for c in clients for x in c.latencies]
    refused = [r for c in clients for r in c.refused]
    server_cpu = (cpu1 - cpu0) / took
    generator_cpu = (own1 - own0) / took
    server_wait, generator_wait = (wait1 - wait0) / took, (own_wait1 - own_wait0) / took
    limit = limit_of(server_cpu, generator_cpu, server_wait=server_wait,
                     generator_wait=generator_wait)
    return {
        "subscribes": len(frames), "subscribed": len(latencies), "refused": len(refused),
        "refusals": sorted({r["reason"] for r in refused})[:3],
        "offered_per_s": rate, "sent_per_s": round(len(frames) / max(sending, 1e-6)),
        "answered_per_s": round(len(frames) / took),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "db_queries": queries1["queries"] - queries0["queries"],
        "server_cpu": round(server_cpu, 3), "generator_cpu": round(generator_cpu, 3),
        # What a subscribe costs the server, whatever the machine gave it: the rate one
        # core sustains is 1e6 / this.
        "server_cpu_us_per_subscribe": round((cpu1 - cpu0) / len(frames) * 1e6),
        "server_runqueue_wait": round(server_wait, 3),
        "generator_runqueue_wait": round(generator_wait, 3), "limit": limit,
    }


async def _measure(options: argparse.Namespace, keys: list[str], port: int,
                   server_pid: int) -> dict[str, Any]:
    from ws4tx import grants

    clients = [await _connect(port, key) for key in keys]
    n = len(clients)
    users = [f"c{i:05d}" for i in range(n)]
    frames = []
    for k in range(options.subscribes):
        index = k % n
        facility = f"g{k // n}"
        frames.append((index, facility, grants.make_grant(facility, ["user"],
                                                          user=users[index])))
    baseline = [(k % n, f"a{k // n}", None) for k in range(options.baseline)]
    # Every client says who it is before anything is timed.
    await task.deferLater(reactor, 0.5, lambda: None)
    result: dict[str, Any] = {"clients": n}
    result["grants"] = await _phase("grants", clients, frames, options.rate, port,
                                    server_pid, options.tick)
    result["authenticator"] = await _phase("authenticator", clients, baseline,
                                           options.rate, port, server_pid, options.tick)
    g, a = result["grants"], result["authenticator"]
    result["ratios"] = {
        "p99_grants_to_authenticator": round(g["p99_ms"] / a["p99_ms"], 3)
        if g["p99_ms"] and a["p99_ms"] else None,
        "answered_per_s_grants_to_authenticator": round(
            g["answered_per_s"] / a["answered_per_s"], 3) if a["answered_per_s"] else None,
    }
    result["target"] = {"rate": 2000, "p99_ms": 5, "db_queries": 0,
                        "met": bool(g["subscribed"] == g["subscribes"]
                                    and g["answered_per_s"] >= 0.98 * options.rate
                                    and g["p99_ms"] is not None and g["p99_ms"] <= 5
                                    and g["db_queries"] == 0)}
    result["load_average"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    for client in clients:
        client.sendClose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--subscribes", type=int, default=10_000,
                        help="subscribes with grants (at most 100 per client: the cap)")
    parser.add_argument("--baseline", type=int, default=2_000,
                        help="subscribes through the authenticator")
    parser.add_argument("--rate", type=float, default=2000.0, help="frames per second")
    parser.add_argument("--tick", type=float, default=0.01,
                        help="seconds between two sends of what is due (0.01: 20 frames "
                             "at once at 2,000/s; 0.001: 2, closer to independent pages)")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the server under cProfile (twistd --profile), its stats "
                             "saved to PATH when it stops")
    options = parser.parse_args()
    if max(options.subscribes, options.baseline) > 50 * options.clients:
        parser.error("at most 50 subscribes of each phase per client (both phases stay "
                     "under max_subscriptions, 100 channels)")
    workdir = tempfile.mkdtemp(prefix="ws4tx-subscribe-rate-")
    env = {**os.environ, "PYTHONPATH": SERVERS, "DJANGO_SETTINGS_MODULE": SITE,
           "BENCH_COOKIE_DB": os.path.join(workdir, "site.sqlite3")}
    prepared = subprocess.run([sys.executable, os.path.join(SERVERS, SITE + ".py"),
                               "prepare", str(options.clients)], env=env, cwd=SERVERS,
                              stdout=subprocess.PIPE, timeout=600, check=True)
    keys: list[str] = json.loads(prepared.stdout)
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "BENCH_COOKIE_DB")})
    sys.path.insert(0, SERVERS)
    import django

    django.setup()
    redis = EmbeddedRedis()
    redis.start()
    port = free_port()
    server = subprocess.Popen(
        [oneserver.TWISTD, "-n", "--pidfile=",
         *(("--profile", options.profile, "--profiler", "cprofile", "--savestats")
           if options.profile else ()),
         *oneserver.ws4tx_args(port, redis.url), "--django-settings", SITE,
         "--wsgi", SITE + ".app"],
        env={**env, "PYTHONPATH": os.pathsep.join([os.getcwd(), SERVERS])},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        oneserver.wait_started(server, lambda: _count(port), timeout=60)
        oneserver.measure_and_print(lambda: _measure(options, keys, port, server.pid))
    finally:
        oneserver.stop(server)
        redis.stop()


if __name__ == "__main__":
    main()
