"""The cost of one delivered frame, counted instead of timed: ws4tx against the picows floor.

The suite's fan-out cells time CPU seconds, which a busy machine blurs. This harness counts
what a message costs the server per client it reaches, the same on an idle machine and a
loaded one: each server runs in its own process, its clients (raw sockets, after a real
WebSocket handshake) in this one, and only the fan-out itself is measured — from the
message handed to the server, through its whole code path, to the bytes in every client's
socket — by one of two meters:

- ``callgrind`` (the default when ``valgrind`` is on PATH): the server runs under
  ``valgrind --tool=callgrind`` with collection switched on only inside the measured call
  (``--toggle-collect``), so the count is the machine instructions of the fan-out, C and
  Python alike (the interpreter, Twisted, uvloop, the kernel calls' user side), and
  nothing of the setup or the handshakes;
- ``calls``: the Python function calls and C calls made from Python inside the measured
  call (``sys.setprofile``): how much per-client Python work there is, and no more.

What is measured, for ``--messages`` M messages of 100 bytes to ``--clients`` N clients,
in rounds of ``--batch`` messages (one round = what one read of the broker or trigger
holds; 1 is the 10 and 100 msg/s pattern, where each message comes alone):

- ``ws4tx``: ``twistd ws4tx``'s service (``ws4tx.server.tap.makeService``, the same options
  as the suite's, plus ``--server-args``) connected to a real Redis; each round is handed
  to the router as the broker hands it one read (``Router.readStarted``, then each message
  as ``Router.messageReceived``, after txredisapi parsed the Redis reply: the parsing is
  per message, not per client, and not counted, then ``Router.readEnded``), and one
  reactor iteration (``reactor.iterate(0)``) follows each round: the router's fan-out,
  every client's ``deliver`` (``deliverRun`` for a run of messages), the direct write path
  and the flush after the turn;
- ``floor-picows``: ``servers/floor_picows.py`` in the load generator's venv on uvloop, its
  trigger protocol handed the round's lines (``Trigger.data_received``), then one loop
  iteration.

The harness checks that every client got every frame (exact byte count) before it trusts a
count, and prints per delivered frame: instructions (or calls), and ws4tx's ratio to the
floor in the same invocation. Usage::

    python3 bench/fanout_cost.py                          # 1000 clients, 100 messages, batch 1 and 10
    python3 bench/fanout_cost.py --meter calls --systems ws4tx
    python3 bench/fanout_cost.py --server-args=--compression

Run from the repository with the ws4tx venv's Python; the floor needs
``bench/.venvs/loadgen`` (``python3 bench/run.py`` makes it; else it is left out, and said).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
LOADGEN_PYTHON = os.path.join(BENCH, ".venvs", "loadgen", "bin", "python")
#: The C function the measured call runs inside (``itertools.starmap``'s next): callgrind
#: collects only under it, and nothing else in these servers calls ``starmap``.
TOGGLE = "starmap_next"
PAYLOAD_SIZE = 100
FACILITY = "bench"


# --- the server side (runs in the child process) ------------------------------------------

def _payload(seq: int) -> bytes:
    head = f"B|cost|{seq}|{time.time_ns()}|".encode()
    return head + b"x" * (PAYLOAD_SIZE - len(head))


class _Meter:
    """Counts the Python calls of the measured call (``--meter calls``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0

    def run(self, work: Any) -> None:
        import itertools

        if self.kind != "calls":
            list(itertools.starmap(work, [()]))
            return

        from collections import Counter

        seen: Counter[str] = Counter()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                code = frame.f_code
                seen[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
            elif event == "c_call":
                seen[f"(C) {getattr(arg, '__qualname__', arg)}"] += 1

        sys.setprofile(profile)
        try:
            work()
        finally:
            sys.setprofile(None)
        self.calls = sum(seen.values())
        # The server's log (kept with --keep) says which calls they were.
        for name, count in seen.most_common(25):
            print(f"calls: {count:9d} {name}", file=sys.stderr)


def _control(port_line: str) -> Any:
    """Say the port; return a function that reads a control line when one is there."""
    print(port_line, flush=True)
    os.set_blocking(sys.stdin.fileno(), False)
    buffered = b""

    def line() -> Optional[str]:
        nonlocal buffered
        try:
            chunk = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            chunk = b""
        buffered += chunk
        if b"\n" in buffered:
            first, buffered = buffered.split(b"\n", 1)
            return first.decode()
        return None

    return line


def serve_ws4tx(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from ws4tx.server import tap
    from ws4tx.server.service import PushService

    port = _free_port()
    options = tap.Options()
    options.parseOptions([
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096", "--redis", args.redis,
        "--ping-interval", "0", "--max-connections-per-ip", "0", "--log-level", "warn",
        *args.server_args.split()])
    top: Any = tap.makeService(options, reactor)

    def find(svc: Any) -> Optional[PushService]:
        if isinstance(svc, PushService):
            return svc
        for child in getattr(svc, "services", ()):
            found = find(child)
            if found is not None:
                return found
        return None

    push = find(top)
    assert push is not None, "no PushService in twistd ws4tx's service"
    router = push.node.router
    top.startService()
    reactor.startRunning(installSignalHandlers=False)  # type: ignore[attr-defined]
    line = _control(f"port {port}")
    meter = _Meter(args.meter)
    while True:
        reactor.iterate(0.02)  # type: ignore[attr-defined]
        command = line()
        if command is None:
            continue
        if command == "members":
            print(f"members {router.memberCount()}", flush=True)
        elif command == "go":
            _go_ws4tx(router, reactor, args, meter)
        elif command == "quit":
            top.stopService()
            return


def _go_ws4tx(router: Any, reactor: Any, args: argparse.Namespace, meter: _Meter) -> None:
    channels = list(router.hub.channels())
    assert len(channels) == 1, channels
    channel = channels[0]
    rounds = [[_payload(r * args.batch + i) for i in range(args.batch)]
              for r in range(args.messages // args.batch)]
    deliver = router.messageReceived
    started, ended = router.readStarted, router.readEnded
    iterate = reactor.iterate

    def work() -> None:
        for messages in rounds:
            # One read of the broker's subscriber connection (see redis_broker._Reads).
            started()
            for payload in messages:
                deliver(channel, payload)
            ended()
            # The turn after the broker's read, and those the router's backlog takes
            # (past FRAMES_PER_TURN frames in one turn).
            iterate(0)
            while router.backlog:
                iterate(0)

    before = router.stats["frames"]
    meter.run(work)
    print(f"done {meter.calls} {router.stats['frames'] - before}", flush=True)


def serve_floor(args: argparse.Namespace) -> None:
    import asyncio

    sys.path.insert(0, os.path.join(BENCH, "servers"))
    import floor_picows  # type: ignore[import-not-found]
    import uvloop
    from picows import ws_create_server

    port = _free_port()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ws_create_server(
        lambda request: floor_picows.Client(request.path.decode()), "127.0.0.1", port,
        backlog=4096))
    line = _control(f"port {port}")
    meter = _Meter(args.meter)
    trigger = floor_picows.Trigger()
    path = f"/{FACILITY}"

    while True:
        loop.run_until_complete(asyncio.sleep(0.02))
        command = line()
        if command is None:
            continue
        if command == "members":
            print(f"members {len(floor_picows.CHANNELS.get(path, ()))}", flush=True)
        elif command == "go":
            _go_floor(floor_picows, trigger, loop, path, args, meter)
        elif command == "quit":
            return


async def _tick() -> None:
    pass


def _go_floor(floor: Any, trigger: Any, loop: Any, path: str, args: argparse.Namespace,
              meter: _Meter) -> None:
    rounds = [b"".join(path.encode() + b" " + _payload(r * args.batch + i) + b"\n"
                       for i in range(args.batch))
              for r in range(args.messages // args.batch)]
    received = trigger.data_received
    run = loop.run_until_complete

    def work() -> None:
        for data in rounds:
            received(data)
            run(_tick())

    meter.run(work)
    frames = len(floor.CHANNELS.get(path, ())) * args.messages
    print(f"done {meter.calls} {frames}", flush=True)


# --- the client side (this process) -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Clients:
    """``n`` WebSocket clients on raw sockets that count the bytes they read (``sse``:
    Server-Sent Events streams of the same URL)."""

    def __init__(self, port: int, path: str, n: int, timeout: float, sse: bool = False) -> None:
        self.answer = b"HTTP/1.1 200" if sse else b"HTTP/1.1 101"
        self.socks: list[socket.socket] = []
        self.got: dict[int, int] = {}
        self.selector = selectors.DefaultSelector()
        deadline = time.monotonic() + timeout
        pending: dict[socket.socket, bytes] = {}
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            key = base64.b64encode(os.urandom(16)).decode()
            head = ("Accept: text/event-stream\r\n" if sse else
                    f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode())
            s.setblocking(False)
            self.socks.append(s)
            pending[s] = b""
            self.selector.register(s, selectors.EVENT_READ)
            # At most 50 handshakes at a time: a server under callgrind is slow enough for
            # more to outlast its opening handshake timeout.
            if i % 50 == 49:
                self._handshakes(pending, deadline, all_done=True)
        self._handshakes(pending, deadline, all_done=True)

    def _handshakes(self, pending: dict[socket.socket, bytes], deadline: float,
                    all_done: bool) -> None:
        while pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"fanout_cost: {len(pending)} handshakes unanswered")
            events = self.selector.select(0.05 if all_done else 0)
            if not events and not all_done:
                return
            for key, _ in events:
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s not in pending:
                    self._read(s)
                    continue
                data = pending[s] + s.recv(65536)
                if b"\r\n\r\n" in data:
                    head, rest = data.split(b"\r\n\r\n", 1)
                    if not head.startswith(self.answer):
                        raise SystemExit(f"fanout_cost: handshake refused: {head[:200]!r}")
                    del pending[s]
                    self.got[s.fileno()] = len(rest)
                else:
                    pending[s] = data

    def _read(self, s: socket.socket) -> None:
        try:
            data = s.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise SystemExit("fanout_cost: the server closed a client")
        self.got[s.fileno()] += len(data)

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in self.selector.select(0.01):
                self._read(key.fileobj)  # type: ignore[arg-type]

    def reset(self) -> None:
        for fd in self.got:
            self.got[fd] = 0

    def wait_for(self, each: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(v >= each for v in self.got.values()):
                self.drain(0.2)  # anything more is a mistake, seen below
                return True
            for key, _ in self.selector.select(0.05):
                self._read(key.fileobj)  # type: ignore[arg-type]
        return False

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.selector.close()


def _frame_size(payload_size: int, sse: bool = False) -> int:
    if sse:
        # One chunk of "data: <payload>\n\n" (the payload has no line break).
        event = 6 + payload_size + 2
        return len(b"%x" % event) + 2 + event + 2
    return payload_size + (2 if payload_size <= 125 else 4)


def measure(system: str, batch: int, args: argparse.Namespace, redis_url: str,
            out_dir: str) -> dict[str, Any]:
    sse = system == "ws4tx-sse"
    served = "ws4tx" if sse else system
    python = sys.executable if served == "ws4tx" else LOADGEN_PYTHON
    child = [python, os.path.abspath(__file__), "--serve", served, "--redis", redis_url,
             "--messages", str(args.messages), "--batch", str(batch),
             "--meter", args.meter, f"--server-args={args.server_args}"]
    out_file = os.path.join(out_dir, f"callgrind.{system}.{batch}")
    if args.meter == "callgrind":
        child = ["valgrind", "--tool=callgrind", f"--toggle-collect={TOGGLE}",
                 "--collect-systime=no", f"--callgrind-out-file={out_file}",
                 "--trace-children=no", *child]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=REPO)
    log = open(os.path.join(out_dir, f"{system}.{batch}.log"), "w+b")  # noqa: SIM115
    proc = subprocess.Popen(child, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            env=env, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    slow = 60.0 if args.meter == "callgrind" else 1.0

    def ask(command: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(command.encode() + b"\n")
        proc.stdin.flush()
        return proc.stdout.readline().decode().strip()

    try:
        first = proc.stdout.readline().decode().split()
        if not first or first[0] != "port":
            log.seek(0)
            raise SystemExit(f"fanout_cost: {system} did not start:\n{log.read().decode()[-2000:]}")
        port = int(first[1])
        path = f"/ws/{FACILITY}?subscribe-broadcast" if served == "ws4tx" else f"/{FACILITY}"
        clients = _Clients(port, path, args.clients, timeout=30.0 * slow, sse=sse)
        deadline = time.monotonic() + 10.0 * slow
        while ask("members") != f"members {args.clients}":
            if time.monotonic() > deadline:
                raise SystemExit(f"fanout_cost: {system}: not all clients joined")
            clients.drain(0.1)
        clients.drain(0.5)
        clients.reset()
        done = ask("go").split()
        calls, frames = int(done[1]), int(done[2])
        each = args.messages * _frame_size(PAYLOAD_SIZE, sse)
        if not clients.wait_for(each, timeout=10.0 * slow):
            short = sum(1 for v in clients.got.values() if v < each)
            raise SystemExit(f"fanout_cost: {system}: {short} clients short of their frames")
        extra = sum(v - each for v in clients.got.values())
        if extra or frames != args.clients * args.messages:
            raise SystemExit(f"fanout_cost: {system}: {extra} bytes too many, {frames} frames")
        ask("quit")
        proc.stdin.close()
        proc.wait(timeout=60 * slow)
        clients.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    result: dict[str, Any] = {"system": system, "batch": batch, "clients": args.clients,
                              "messages": args.messages, "frames": frames}
    if args.meter == "callgrind":
        result["instructions"] = _callgrind_total(out_file)
        result["per_frame"] = result["instructions"] / frames
    else:
        result["calls"] = calls
        result["per_frame"] = calls / frames
    return result


def _callgrind_total(path: str) -> int:
    """The events of a callgrind output file (its ``totals:`` or ``summary:`` line)."""
    total = None
    with open(path) as f:
        for row in f:
            if row.startswith(("totals:", "summary:")):
                total = int(row.split()[1])
    if total is None:
        raise SystemExit(f"fanout_cost: no total in {path}")
    return total


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--batch", default="1,10",
                   help="messages per round, comma-separated (default 1,10)")
    p.add_argument("--systems", default="ws4tx,floor-picows",
                   help="of ws4tx, ws4tx-sse (ws4tx's Server-Sent Events clients), "
                        "floor-picows [default: ws4tx,floor-picows]")
    p.add_argument("--meter", choices=("callgrind", "calls"), default=None)
    p.add_argument("--server-args", default="",
                   help="more options for twistd ws4tx (e.g. --compression)")
    p.add_argument("--json", help="also write the results to this file, one per line")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the callgrind outputs and server logs in DIR (for "
                        "callgrind_annotate) instead of a temporary directory")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--redis", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        args.batch = int(args.batch)
        (serve_ws4tx if args.serve == "ws4tx" else serve_floor)(args)
        return 0
    if args.meter is None:
        args.meter = "callgrind" if shutil.which("valgrind") else "calls"
    systems = args.systems.split(",")
    if "floor-picows" in systems and not os.path.exists(LOADGEN_PYTHON):
        print("fanout_cost: no bench/.venvs/loadgen (python3 bench/run.py makes it): "
              "floor-picows left out", file=sys.stderr)
        systems.remove("floor-picows")
    batches = [int(b) for b in args.batch.split(",")]
    for b in batches:
        if args.messages % b:
            raise SystemExit("--messages must be a multiple of every --batch")

    from ws4tx.server.embedded import EmbeddedRedis

    redis = EmbeddedRedis()
    redis.start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="fanout-cost-") as temp:
            out_dir = args.keep or temp
            os.makedirs(out_dir, exist_ok=True)
            for batch in batches:
                for system in systems:
                    started = time.monotonic()
                    r = measure(system, batch, args, redis.url, out_dir)
                    r["meter"], r["server_args"] = args.meter, args.server_args
                    print(f"fanout_cost: {system} batch {batch}: {r['per_frame']:.0f} per frame "
                          f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
                    results.append(r)
    finally:
        redis.stop()
    unit = "instructions" if args.meter == "callgrind" else "Python calls"
    print(f"\n{args.clients} clients, {args.messages} messages of {PAYLOAD_SIZE} bytes; "
          f"{unit} per delivered frame" + (f"; ws4tx {args.server_args}" if args.server_args
                                           else ""))
    print("\n| messages per round | system | per frame | ratio to floor-picows |")
    print("|---|---|---|---|")
    for r in results:
        floor = next((f for f in results if f["system"] == "floor-picows"
                      and f["batch"] == r["batch"]), None)
        # The floor's calls are into uvloop's compiled methods, which Python's profiler
        # does not see: only instructions compare.
        ratio = f"{r['per_frame'] / floor['per_frame']:.2f}×" \
            if floor and args.meter == "callgrind" else "—"
        print(f"| {r['batch']} | {r['system']} | {r['per_frame']:,.1f} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
