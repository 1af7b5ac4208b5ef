"""Fan-out CPU per delivered frame with five subscriptions per connection against one, in
one invocation.

One ws4tx server (``twistd ws4tx``, its own Redis on a free port), ``--clients`` event
clients (``ws4tx.v1``) on ``/ws/``, each subscribing the broadcast channel of ``fan`` by a
``subscribe`` frame. Three phases on the same connections, each publishing ``--messages``
messages of ``--size`` bytes on that channel at ``--rate`` per second (redis-py
``PUBLISH``, as an application does):

1. ``one``: each connection has that one subscription;
2. ``five``: each has subscribed four more (a broadcast channel of its own in each of four
   facilities, quiet): the frame reaches the connection through one of its five;
3. ``one again``: the four unsubscribed: what the machine's drift between phases is.

Per phase: frames delivered (counted in the clients' byte streams: every frame of a phase
has the same length), the server's CPU per delivered frame, the time it waited for a core
(the machine's other load), the generator's CPU, and the limit; then the ratio of ``five``
to the mean of the two ``one`` phases (issue 22's target: within 1.1).

The clients are one Twisted process that speaks just enough WebSocket (a handshake, masked
text frames out, frame parsing only until the subscribes are answered; then bytes are
counted, not parsed): its cost per delivered frame is a fraction of the server's.

    python3 bench/subscription_fanout.py --clients 2000 --messages 200        # 20 msg/s
    python3 bench/subscription_fanout.py --clients 10000 --messages 60        # 4 msg/s
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import subprocess
import time
from typing import Any, Optional

from twisted.internet import defer, endpoints, protocol, reactor, task

from ws4tx.server.embedded import EmbeddedRedis

from benchlib import oneserver
from benchlib.limits import limit_of
from benchlib.procs import cpu_seconds, free_port, runqueue_wait_seconds

FAN = "ws4tx:broadcast:fan"
#: Frames a second the default rate offers the server: about half of one core here at
#: ~13 us a frame. (At 20 messages a second to 10,000 clients, 200,000 frames a second,
#: the server fell behind, clients were dropped as slow and no phase was complete.)
OFFERED = 40_000
QUIET = ("q1", "q2", "q3", "q4")


def _masked(payload: bytes) -> bytes:
    """A client's text frame (masked with a zero key: the XOR is the identity)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


class _Client(protocol.Protocol):
    """A WebSocket client that parses frames until told to count bytes."""

    def __init__(self, port: int, index: int) -> None:
        self.port = port
        self.index = index
        self.buffer = b""
        self.handshaken = False
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.answers: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.counting = False
        self.received = 0

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(  # type: ignore[union-attr]
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ws4tx.v1\r\n\r\n"
            .encode())

    def dataReceived(self, data: bytes) -> None:
        if self.counting:
            self.received += len(data)
            return
        self.buffer += data
        if not self.handshaken:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.opened.errback(RuntimeError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.handshaken, self.buffer = True, rest
            self.opened.callback(None)
        while True:
            frame = self._frame()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 1:
                decoded = json.loads(payload)
                if decoded.get("ws4tx") in ("subscribed", "unsubscribed", "refused"):
                    self.answers.put(decoded)

    def _frame(self) -> Optional[tuple[int, bytes]]:
        buf = self.buffer
        if len(buf) < 2:
            return None
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            return None
        self.buffer = buf[at + n:]
        return buf[0] & 0x0F, buf[at:at + n]

    async def ask(self, frame: dict[str, Any], answer: str) -> None:
        self.transport.write(_masked(json.dumps(frame).encode()))  # type: ignore[union-attr]
        got = await self.answers.get().addTimeout(60, reactor)
        if got.get("ws4tx") != answer:
            raise RuntimeError(f"{frame} answered {got}")

    def count(self) -> None:
        """From now on count the bytes that come (after what is buffered)."""
        if self.buffer:
            raise RuntimeError(f"client {self.index} has unread bytes: {self.buffer[:80]!r}")
        self.counting, self.received = True, 0


async def _connect(port: int, index: int) -> _Client:
    client = _Client(port, index)
    await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=30), client)
    await client.opened.addTimeout(30, reactor)
    return client


async def _in_batches(calls: list[Any], size: int = 200) -> None:
    for start in range(0, len(calls), size):
        await defer.gatherResults([defer.ensureDeferred(c()) for c in calls[start:start + size]])


async def _phase(name: str, options: argparse.Namespace, clients: list[_Client],
                 publisher: Any, server_pid: int) -> dict[str, Any]:
    payload = b"m" * options.size
    frame_length = 2 + (2 if options.size >= 126 else 0) + options.size
    for client in clients:
        client.count()
    cpu0, own0 = cpu_seconds(server_pid), oneserver.own_cpu()
    wait0, own_wait0 = runqueue_wait_seconds(server_pid), runqueue_wait_seconds(os.getpid())
    started = time.monotonic()
    published = 0

    def publish() -> None:
        nonlocal published
        due = min(options.messages, int((time.monotonic() - started) * options.rate) + 1)
        while published < due:
            publisher.publish(FAN, payload)
            published += 1
        if published == options.messages and loop.running:
            loop.stop()

    loop = task.LoopingCall(publish)
    await loop.start(0.01, now=True)
    expected = options.messages * len(clients) * frame_length
    deadline = time.monotonic() + 60 + options.messages / options.rate
    while sum(c.received for c in clients) < expected and time.monotonic() < deadline:
        await task.deferLater(reactor, 0.1, lambda: None)
    took = time.monotonic() - started
    cpu1, own1 = cpu_seconds(server_pid), oneserver.own_cpu()
    wait1, own_wait1 = runqueue_wait_seconds(server_pid), runqueue_wait_seconds(os.getpid())
    received = sum(c.received for c in clients)
    for client in clients:
        client.counting = False
        client.buffer = b""
    frames = received // frame_length
    server_cpu, generator_cpu = (cpu1 - cpu0) / took, (own1 - own0) / took
    server_wait, generator_wait = (wait1 - wait0) / took, (own_wait1 - own_wait0) / took
    return {
        "phase": name, "frames_expected": options.messages * len(clients),
        "frames_delivered": frames, "bytes_off": received - expected,
        # Short when clients were dropped as slow (a generator that could not read) or
        # the phase ran out of time: then its CPU per frame measures something else.
        "complete": received == expected,
        "seconds": round(took, 2),
        "server_cpu_us_per_frame": round((cpu1 - cpu0) / max(frames, 1) * 1e6, 3),
        "server_cpu": round(server_cpu, 3), "server_runqueue_wait": round(server_wait, 3),
        "generator_cpu": round(generator_cpu, 3),
        "generator_runqueue_wait": round(generator_wait, 3),
        "limit": limit_of(server_cpu, generator_cpu, server_wait=server_wait,
                          generator_wait=generator_wait),
    }


async def _measure(options: argparse.Namespace, port: int, server_pid: int,
                   publisher: Any) -> dict[str, Any]:
    clients: list[_Client] = []
    for start in range(0, options.clients, 100):
        clients += await defer.gatherResults([
            defer.ensureDeferred(_connect(port, i))
            for i in range(start, min(start + 100, options.clients))])

    def subscribe(client: _Client, id: int, facility: str) -> Any:
        return lambda: client.ask({"ws4tx": "subscribe", "id": id, "facility": facility,
                                   "audiences": {"broadcast": True}}, "subscribed")

    await _in_batches([subscribe(c, 1, "fan") for c in clients])
    phases = [await _phase("one", options, clients, publisher, server_pid)]
    # Four more per connection, each a channel of its own.
    await _in_batches([subscribe(c, 2 + k, f"{q}c{c.index}")
                       for c in clients for k, q in enumerate(QUIET)])
    phases.append(await _phase("five", options, clients, publisher, server_pid))
    await _in_batches([
        (lambda c=c, k=k, q=q: c.ask({"ws4tx": "unsubscribe", "id": 10 + k,
                                      "facility": f"{q}c{c.index}",
                                      "audiences": {"broadcast": True}}, "unsubscribed"))
        for c in clients for k, q in enumerate(QUIET)])
    phases.append(await _phase("one again", options, clients, publisher, server_pid))
    for client in clients:
        client.transport.loseConnection()  # type: ignore[union-attr]
    one = (phases[0]["server_cpu_us_per_frame"] + phases[2]["server_cpu_us_per_frame"]) / 2
    return {
        "clients": options.clients, "messages": options.messages, "rate": options.rate,
        "size": options.size, "phases": phases,
        "ratio_five_to_one": round(phases[1]["server_cpu_us_per_frame"] / one, 3)
        if one else None,
        "valid": all(p["complete"] for p in phases),
        "target_ratio": 1.1,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=200, help="per phase")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"messages per second [default: {OFFERED:,} frames a second "
                             "over the clients: 20 to 2,000 clients, 4 to 10,000]")
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    options = parser.parse_args()
    if options.rate is None:
        options.rate = OFFERED / options.clients
    import redis as redis_py

    redis = EmbeddedRedis()
    redis.start()
    port = free_port()
    server = subprocess.Popen(
        [oneserver.TWISTD, "-n", "--pidfile=", *oneserver.ws4tx_args(port, redis.url)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    publisher = redis_py.Redis.from_url(redis.url)
    try:
        oneserver.wait_started(server, lambda: oneserver.accepts(port))
        oneserver.measure_and_print(lambda: _measure(options, port, server.pid, publisher))
    finally:
        publisher.close()
        oneserver.stop(server)
        redis.stop()


if __name__ == "__main__":
    main()
