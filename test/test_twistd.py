"""``twistd ws4tx`` end to end, in a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile

import pytest
import redis
from twisted.internet import defer, reactor
from twisted.trial import unittest

from ws4tx.server.embedded import EmbeddedRedis, free_port

from test._process import Twistd, started_redis, twistd_path
from test._wsclient import connect

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    stat = f.read()
            except OSError:
                continue  # ended meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def command_line(pid: int) -> bytes:
    """What every local user reads as a process's command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


class PluginTests(unittest.SynchronousTestCase):
    """The installed package exposes the plugin."""

    def test_twistdListsTheInstalledPlugin(self):
        """`twistd --help`, run away from the source tree, lists ws4tx."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with tempfile.TemporaryDirectory() as elsewhere:
            out = subprocess.run([twistd_path(), "--help"], cwd=elsewhere, env=env,
                                 capture_output=True, text=True, timeout=60).stdout
        self.assertRegex(out, r"\n\s+ws4tx\s+WebSocket push server")


class TwistdTests(unittest.TestCase):
    """The plugin runs, serves, publishes from Django reach clients, SIGTERM drains."""

    async def _serve(self, *args: str) -> tuple[Twistd, int]:
        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1", *args)
        self.addCleanup(child.stop, "KILL")
        await child.waitFor("Redis subscriber connected")
        await child.waitFor(f"Site starting on {port}")
        return child, port

    async def test_publishFromDjangoReachesClientAndSigtermCloses1001(self):
        """A RedisPublisher message reaches a client; SIGTERM closes it with 1001, exit 0."""
        server, store = started_redis(self)
        # The stored message comes back once the subscription is in place.
        store.set("ws4tx:broadcast:foobar", "stored", ex=60)
        child, port = await self._serve("--redis", server.url)
        client = await connect(port, "/ws/foobar?subscribe-broadcast")
        self.assertEqual(await client.text(), "stored")

        from ws4tx import _sync_redis
        from ws4tx.publisher import RedisPublisher

        from test._django import setup_django

        setup_django()
        _sync_redis.use_url(server.url)
        self.addCleanup(_sync_redis.reset)
        RedisPublisher(facility="foobar", broadcast=True).publish_message("from django")
        self.assertEqual(await client.text(), "from django")

        exit_code = await child.stop("TERM")
        code, _ = await client.closed
        self.assertEqual(code, 1001)
        self.assertEqual(exit_code, 0)

    async def test_embeddedRedisStartsAndStopsWithTheServer(self):
        """--redis embedded prints the URL of a private Redis that ends with the server."""
        child, port = await self._serve("--redis", "embedded", "--anonymous-publish")
        url = (await child.waitFor(r"embedded Redis \(.*\) at (redis://\S+)")).group(1)
        store = redis.Redis.from_url(url)
        self.addCleanup(store.close)
        client = await connect(port, "/ws/foobar?subscribe-broadcast&publish-broadcast&echo")
        client.send("through the embedded redis")
        self.assertEqual(await client.text(), "through the embedded redis")
        self.assertEqual(store.get("ws4tx:broadcast:foobar"), b"through the embedded redis")
        store.close()
        self.assertEqual(await child.stop("TERM"), 0, child.output)
        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", redis_port), timeout=5)

    async def test_badListenFailsNamingTheOption(self):
        """A bad --listen description stops twistd with a message naming --listen."""
        child = Twistd().start("--listen", "bogus:1234")
        self.addCleanup(child.stop, "KILL")
        self.assertNotEqual(await child.ended, 0)
        self.assertIn("--listen", child.output)

    async def test_wrongRedisPasswordIsReportedClearly(self):
        """A wrong Redis password is logged as such, and the server stays up."""
        server = EmbeddedRedis(password="right")
        server.start()
        self.addCleanup(server.stop)
        wrong = server.url.replace("right", "wrong")
        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", wrong)
        self.addCleanup(child.stop, "KILL")
        line = (await child.waitFor(r"\[ws4tx\S*#warn\] cannot reach Redis subscriber .*"
                                    )).group(0)
        self.assertRegex(line, r"could not auth: WRONGPASS .*\(check the password, user "
                               r"and database\); retrying in \d+\.\d s$")
        self.assertNotIn("wrong", line.split("WRONGPASS")[0])
        self.assertNotIn(":wrong@", child.output)


class DrainTests(unittest.TestCase):
    """Graceful drain of a loaded server."""

    async def test_sigtermClosesFiveHundredClientsWith1001(self):
        """SIGTERM with 500 clients: every one gets 1001 and twistd exits 0 in time."""
        port = free_port()
        child = Twistd().start("--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                               "--redis", "embedded", "--drain-timeout", "10",
                               "--max-connections-per-ip", "0")  # 500 from one address
        self.addCleanup(child.stop, "KILL")
        await child.waitFor("Redis subscriber connected")
        await child.waitFor(f"Site starting on {port}")
        clients = []
        for _ in range(5):
            clients += await defer.gatherResults([
                defer.ensureDeferred(connect(port, "/ws/foobar?subscribe-broadcast"))
                for _ in range(100)])
        started = reactor.seconds()
        self.assertEqual(await child.stop("TERM"), 0, child.output[-2000:])
        self.assertLess(reactor.seconds() - started, 10)
        codes = await defer.gatherResults([c.closed for c in clients])
        self.assertEqual({code for code, _ in codes}, {1001})


class WorkerTests(unittest.TestCase):
    """--workers N: processes sharing one port, each with its own subscriber."""

    async def test_twoWorkersShareThePortAndDrain(self):
        """Two workers serve one port; each has its own Redis subscriber; a publish
        reaches clients of both; SIGTERM drains both (1001) and exits 0."""
        server, store = started_redis(self)
        port = free_port()
        child = Twistd().start("--workers", "2", "--listen",
                               f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                               "--redis", server.url)
        self.addCleanup(child.stop, "KILL")
        for _ in range(2):
            await child.waitFor(f"Site starting on {port}")
        # each worker logs its own line; wait until both subscribers are there
        await child.waitFor(r"(?s)Redis subscriber connected.*Redis subscriber connected")
        subscribers = [c for c in store.client_list() if int(c["sub"])]
        self.assertEqual(len(subscribers), 2)
        store.set("ws4tx:broadcast:foobar", "stored", ex=60)
        clients = []
        for _ in range(20):
            client = await connect(port, "/ws/foobar?subscribe-broadcast")
            self.assertEqual(await client.text(), "stored")  # replayed: subscribed
            clients.append(client)
        self.assertEqual(store.publish("ws4tx:broadcast:foobar", "to all"), 2)
        for client in clients:
            self.assertEqual(await client.text(), "to all")
        self.assertEqual(await child.stop("TERM"), 0, child.output[-3000:])
        codes = await defer.gatherResults([c.closed for c in clients])
        self.assertEqual({code for code, _ in codes}, {1001})

    async def test_redisPasswordIsNotOnTheWorkersCommandLines(self):
        """--redis with a password: the workers get it through their environment, not
        their command lines (world-readable in /proc), and work: a client of each
        receives what is published; the password is not in the output either."""
        server = EmbeddedRedis(password="s3cret")
        server.start()
        self.addCleanup(server.stop)
        store = redis.Redis.from_url(server.url)
        self.addCleanup(store.close)
        self.assertIn(":s3cret@", server.url)
        port = free_port()
        child = Twistd().start("--workers", "2", "--listen",
                               f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                               "--redis", server.url)
        self.addCleanup(child.stop, "KILL")
        await child.waitFor(r"(?s)Redis subscriber connected.*Redis subscriber connected")
        workers = children(child.transport.pid)
        self.assertEqual(len(workers), 2, child.output)
        for pid in workers:
            self.assertIn(b"ws4tx", command_line(pid))
            self.assertNotIn(b"s3cret", command_line(pid))
        self.assertEqual(len([c for c in store.client_list() if int(c["sub"])]), 2)
        store.set("ws4tx:broadcast:foobar", "stored", ex=60)
        clients = []
        for _ in range(8):  # the kernel spreads them over both workers
            client = await connect(port, "/ws/foobar?subscribe-broadcast")
            self.assertEqual(await client.text(), "stored")  # replayed: subscribed
            clients.append(client)
        self.assertEqual(store.publish("ws4tx:broadcast:foobar", "secretly"), 2)
        for client in clients:
            self.assertEqual(await client.text(), "secretly")
        # A worker killed is logged once and restarted, again without the password.
        os.kill(workers[0], signal.SIGKILL)
        await child.waitFor(rf"worker \d \(pid {workers[0]}\) killed by signal 9 after "
                            r"[\d.]+ s; restarting it in 1 s")
        await child.waitFor(r"(?s)(Redis subscriber connected.*){3}")
        (restarted,) = set(children(child.transport.pid)) - set(workers)
        self.assertNotIn(b"s3cret", command_line(restarted))
        self.assertEqual(await child.stop("TERM"), 0, child.output[-3000:])
        self.assertNotIn("s3cret", child.output)
        self.assertEqual(child.output.count("restarting it in"), 1, child.output[-3000:])
