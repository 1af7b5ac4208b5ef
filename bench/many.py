"""Many connections on one node: idle memory per connection, then a broadcast to all of them.

Opens ``--connections`` WebSocket connections (100,000 by default) to one server process on
this machine, from ``--sources`` loopback source addresses (127.0.0.2, 127.0.0.3, ...: about
28,000 ephemeral ports each) and from as many client processes as the open-files limit
needs, then publishes one message to all of them. Reported per system (``ws4tx``, twistd
ws4tx with ``--server-args``; ``ceiling``, bare Autobahn, ``servers/ceiling.py``):

- server memory per idle connection: (RSS with every client connected and subscribed −
  RSS before the first) / connections, and the connect rate;
- the broadcast: the time from the publish until the last client has the whole frame
  (each client process times its own clients on the same clock), and the server's CPU
  seconds over it per delivered frame.

File descriptors: every process of the run gets its open-files limit raised to the hard
limit; a server process holds one descriptor per connection, so ``--connections`` is cut
to what the hard limit allows (and said) when it is lower. Usage::

    python3 bench/many.py                                  # 100,000, or what the limits allow
    python3 bench/many.py --connections 10000 --systems ws4tx
    python3 bench/many.py --server-args=--compression      # compression offered by nobody: its cost when unused
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from typing import Any, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
FACILITY = "bench"
#: Descriptors a server process needs beyond its connections (listening sockets, Redis,
#: logs, the interpreter's own).
SPARE_FDS = 200


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _family(pid: int) -> list[int]:
    """``pid`` and its children (twistd --workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (twistd --workers)."""
    total = 0
    for p in _family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for row in f:
                    if row.startswith("VmRSS:"):
                        total += int(row.split()[1]) * 1024
        except OSError:
            pass
    return total


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


# --- a client process ---------------------------------------------------------------------

def client_main(args: argparse.Namespace) -> None:
    """``args.count`` connections from ``args.source``; then, told ``expect N``, the time
    at which the last of them had N bytes more."""
    _raise_nofile()
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    got: dict[int, int] = {}
    pending: dict[int, bytes] = {}
    started = time.monotonic()
    in_flight = 0

    def handshake_reads(wait: float) -> None:
        nonlocal in_flight
        for key, _ in sel.select(wait):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            fd = s.fileno()
            data = pending.get(fd, b"") + s.recv(65536)
            if fd not in pending:
                continue
            if b"\r\n\r\n" in data:
                head = data.split(b"\r\n\r\n", 1)[0]
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit(f"many: handshake refused: {head[:120]!r}")
                del pending[fd]
                in_flight -= 1
            else:
                pending[fd] = data

    for i in range(args.count):
        s = socket.socket()
        s.bind((args.source, 0))
        s.connect(("127.0.0.1", args.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        s.setblocking(False)
        socks.append(s)
        pending[s.fileno()] = b""
        got[s.fileno()] = 0
        sel.register(s, selectors.EVENT_READ)
        in_flight += 1
        while in_flight >= args.in_flight:
            handshake_reads(1.0)
        if i % 1000 == 999:
            handshake_reads(0)
    deadline = time.monotonic() + 120
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"many: {len(pending)} handshakes unanswered")
        handshake_reads(1.0)
    print(f"connected {len(socks)} {time.monotonic() - started:.3f}", flush=True)
    command = sys.stdin.readline().split()
    assert command[0] == "expect", command
    want = int(command[1])
    missing = set(got)
    last = 0.0
    deadline = time.monotonic() + float(command[2])
    while missing and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj  # type: ignore[assignment]
            fd = s.fileno()
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            got[fd] += len(data)
            if fd in missing and got[fd] >= want:
                missing.discard(fd)
                last = time.time()
    print(f"received {len(got) - len(missing)} {last:.6f}", flush=True)
    sys.stdin.readline()


# --- the run ------------------------------------------------------------------------------

def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float,
                    log_path: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                said = f.read()[-1500:].decode(errors="replace")
            raise SystemExit(f"many: the server exited ({proc.returncode}):\n{said}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("many: the server did not listen")


def run_system(system: str, n: int, args: argparse.Namespace, log_dir: str) -> dict[str, Any]:
    from ws4tx import naming
    from ws4tx.server.embedded import EmbeddedRedis

    redis: Optional[EmbeddedRedis] = None
    log = open(os.path.join(log_dir, f"many-{system}.log"), "wb")  # noqa: SIM115
    if system == "ws4tx":
        redis = EmbeddedRedis()
        redis.start()
    clients: list[subprocess.Popen[bytes]] = []
    for attempt in range(3):
        # A free port may be taken by another process before the server binds it.
        port, aux = _free_port(), _free_port()
        if system == "ws4tx":
            assert redis is not None
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            argv = [twistd, "-n", "--pidfile=", "ws4tx", "--listen",
                    f"tcp:{port}:interface=127.0.0.1:backlog=4096", "--redis", redis.url,
                    "--ping-interval", "0", "--max-connections-per-ip", "0",
                    *args.server_args.split()]
            path = f"/ws/{FACILITY}?subscribe-broadcast"
        else:
            argv = [sys.executable, os.path.join(BENCH, "servers", "ceiling.py"), str(port),
                    str(aux)]
            path = f"/{FACILITY}"
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=_raise_nofile, cwd=REPO)
        try:
            _wait_listening(port, server, 60, log.name)
            break
        except SystemExit as e:
            if attempt == 2 or "in use" not in str(e):
                if redis is not None:
                    redis.stop()
                raise
    try:
        time.sleep(1.0)
        rss_before = _rss(server.pid)
        per_process = min(args.clients_per_process, _raise_nofile() - SPARE_FDS)
        # Each process's connections come from one source address, the processes taking
        # the addresses in turn; an address has about 28,000 ephemeral ports.
        processes = -(-n // per_process)
        sources = args.sources or max(2, -(-n // 25_000))
        if -(-processes // sources) * per_process > 28_000:
            raise SystemExit(f"many: {sources} source addresses are too few for {n} "
                             "connections (--sources)")
        started = time.monotonic()
        left, index = n, 0
        while left:
            count = min(left, per_process)
            source = f"127.0.0.{2 + index % sources}"
            clients.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--client", "--port", str(port),
                 "--path", path, "--count", str(count), "--source", source,
                 "--in-flight", str(args.in_flight)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                preexec_fn=_raise_nofile))
            left -= count
            index += 1
        connected = 0
        for c in clients:
            assert c.stdout is not None
            answer = c.stdout.readline().split()
            if not answer or answer[0] != b"connected":
                raise SystemExit(f"many: a client process failed (see {log.name})")
            connected += int(answer[1])
        connect_seconds = time.monotonic() - started
        # Subscriptions settle (ws4tx subscribes after the handshake).
        time.sleep(3.0)
        rss_after = _rss(server.pid)
        payload = b"B|many|0|" + str(time.time_ns()).encode() + b"|"
        payload += b"x" * (100 - len(payload))
        frame = 2 + len(payload)
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(f"expect {frame} {args.timeout}\n".encode())
            c.stdin.flush()
        time.sleep(0.5)
        cpu_before = _cpu(server.pid)
        sent = time.time()
        if system == "ws4tx":
            import redis as redis_py

            assert redis is not None
            client = redis_py.Redis.from_url(redis.url)
            client.publish(naming.broadcast_channel(naming.DEFAULT_PREFIX, FACILITY), payload)
            client.close()
        else:
            with socket.create_connection(("127.0.0.1", aux)) as trigger:
                trigger.sendall(f"/{FACILITY} ".encode() + payload + b"\n")
        received, last = 0, 0.0
        for c in clients:
            assert c.stdout is not None
            answer = c.stdout.readline().split()
            received += int(answer[1])
            last = max(last, float(answer[2]))
        cpu = _cpu(server.pid) - cpu_before
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(b"done\n")
            c.stdin.flush()
        return {"system": system, "connections": connected, "server_args": args.server_args,
                "rss_per_connection": (rss_after - rss_before) / max(connected, 1),
                "connect_rate": connected / connect_seconds,
                "received": received, "delivery_s": last - sent if received else None,
                "cpu_us_per_frame": cpu / max(received, 1) * 1e6}
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
            c.wait()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if redis is not None:
            redis.stop()
        log.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--systems", default="ws4tx,ceiling")
    p.add_argument("--server-args", default="", help="more options for twistd ws4tx")
    p.add_argument("--clients-per-process", type=int, default=15_000)
    p.add_argument("--sources", type=int, default=0,
                   help="loopback source addresses (127.0.0.2 on); default: one per 25,000 "
                        "connections, at least 2")
    p.add_argument("--in-flight", type=int, default=200,
                   help="handshakes in flight per client process")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds the clients wait for the broadcast")
    p.add_argument("--logs", default=os.path.join(BENCH, "results"))
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        client_main(args)
        return 0
    hard = _raise_nofile()
    n = args.connections
    if n > hard - SPARE_FDS:
        n = hard - SPARE_FDS
        print(f"many: the open-files hard limit is {hard} (ulimit -Hn) and this process may "
              f"not raise it: one server process holds at most {n} connections, not "
              f"{args.connections}; raise the hard limit (LimitNOFILE=, limits.conf, or "
              f"ulimit -Hn as root) for more", file=sys.stderr)
    os.makedirs(args.logs, exist_ok=True)
    results = []
    for system in args.systems.split(","):
        print(f"many: {system}, {n} connections...", file=sys.stderr)
        results.append(run_system(system, n, args, args.logs))
    load = os.getloadavg()[0]
    print(f"\n{n} connections on one server process; load average {load:.1f} on "
          f"{os.cpu_count()} cores" + (f"; ws4tx {args.server_args}" if args.server_args else ""))
    print("\n| system | connections | KB per idle connection | connects/s | got the broadcast "
          "| delivery to all (s) | server CPU µs per frame |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        delivery = f"{r['delivery_s']:.3f}" if r["delivery_s"] is not None else "—"
        print(f"| {r['system']} | {r['connections']:,} | {r['rss_per_connection'] / 1024:.1f} | "
              f"{r['connect_rate']:,.0f} | {r['received']:,} | {delivery} | "
              f"{r['cpu_us_per_frame']:.2f} |")
    ceiling = next((r for r in results if r["system"] == "ceiling"), None)
    ours = next((r for r in results if r["system"] == "ws4tx"), None)
    if ceiling and ours:
        print(f"\nws4tx / ceiling memory per connection: "
              f"{ours['rss_per_connection'] / ceiling['rss_per_connection']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
