"""Slow consumers: a client that stops reading is dropped; the others are not delayed.

The server runs as ``twistd ws4tx`` in a child process, so that its memory is measured
alone (the test process holds the normal client's messages and the publisher)."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer, task
from twisted.trial import unittest

from ws4tx.server.config import ServerConfig
from ws4tx.server.embedded import free_port

from test._process import Twistd, started_redis
from test._wsclient import (
    connect,
    handshake_request,
    never_reading,
    raw_request,
    status_of,
)

#: The server's defaults, which the child runs with.
DEFAULTS = ServerConfig()



def memory_kib(pid: int) -> dict[str, int]:
    """The resident set of process ``pid`` now (VmRSS) and at its peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    """Make process ``pid``'s peak resident set (VmHWM) its current one (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@pytest.mark.system
class SlowConsumerTests(unittest.TestCase):
    """Bounded send queues, with the server's default bounds."""

    async def test_clientThatNeverReadsIsDropped(self):
        """At 100 messages of 20 KB a second, a client that never reads is dropped for
        being slow once 1 MiB waits for it (not after 1,000 messages, 20 MB, nor after
        10 s); the server's resident memory grows by less than 10 MiB meanwhile; a normal
        client on the channel gets every message in order."""
        store_server, store = started_redis(self)
        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--redis", store_server.url, "--ping-interval", "0")
        self.addCleanup(child.stop, "KILL")
        await child.waitFor("Redis subscriber connected")
        await child.waitFor(f"Site starting on {port}")
        pid = child.transport.pid

        normal = await connect(port, "/ws/foobar?subscribe-broadcast")
        self.addCleanup(normal.close)
        # it joined the channel
        await never_reading(self, port, handshake_request("/ws/foobar?subscribe-broadcast"))
        # The channel is subscribed in Redis once a message published now arrives.
        for _ in range(50):
            store.publish("ws4tx:broadcast:foobar", "ready?")
            try:
                await normal.next(0.2)
                break
            except defer.TimeoutError:
                pass

        reset_peak(pid)
        before = memory_kib(pid)
        self.assertEqual(before["VmHWM"], before["VmRSS"])
        sent = [0]
        filler = "x" * 20_000

        def publish() -> None:  # one every 10 ms: 100 msg/s of ~20 KB
            store.publish("ws4tx:broadcast:foobar", json.dumps({"n": sent[0], "f": filler}))
            sent[0] += 1

        loop = task.LoopingCall(publish)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        dropped = await child.waitFor(r"dropping slow client .*: (\d+) bytes in (\d+) messages",
                                      timeout=DEFAULTS.slow_timeout + 10)
        loop.stop()
        last = sent[0] - 1

        received = -1
        while received < last:
            payload, _ = await normal.next()
            if payload == b"ready?":  # a late one from above
                continue
            message = json.loads(payload)
            self.assertEqual(message["n"], received + 1)  # nothing lost, in order
            received = message["n"]
        grown_kib = memory_kib(pid)["VmHWM"] - before["VmRSS"]
        self.assertLess(grown_kib, 10 * 1024)

        health = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, text = status_of(await raw_request(port, health))
        self.assertEqual(status, 200)
        counters = json.loads(text.split("\r\n\r\n", 1)[1])["counters"]
        self.assertEqual(counters["slow_consumers"], 1)
        self.assertEqual(counters["lagged"], 0)
        # Dropped by the byte bound, not by the message count or the slow timeout.
        self.assertGreater(int(dropped.group(1)), DEFAULTS.max_queue_bytes)
        self.assertLess(int(dropped.group(2)), DEFAULTS.max_queue_messages)
