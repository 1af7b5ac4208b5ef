"""A three-primary Redis Cluster on free loopback ports, for the Cluster tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Callable

import redis

from ws4tx.server.embedded import EmbeddedRedis, free_port

#: Bound on the cluster's setup (never reached when things work).
SETUP_TIMEOUT = 30.0
#: A replica's first sync starts at once (Redis waits 5 s by default for more
#: replicas to share a diskless transfer).
NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


def _cluster_port(host: str = "127.0.0.1") -> int:
    """A free port whose cluster bus port (10000 higher, at most 65535) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Three Redis servers with ``cluster-enabled``, joined by ``redis-cli --cluster
    create`` (no replicas): each serves a third of the slots."""

    def __init__(self, replica: bool = False) -> None:
        self.servers = [self._server() for _ in range(3)]
        #: With ``replica``: a replica of the first primary (``servers[0]``).
        self.replica = self._server() if replica else None

    @staticmethod
    def _server() -> EmbeddedRedis:
        return EmbeddedRedis(pick_port=_cluster_port,
                             extra_args=["--cluster-enabled", "yes",
                                         "--cluster-node-timeout", "2000",
                                         *NO_SYNC_DELAY])

    @property
    def url(self) -> str:
        """The cluster's ``redis+cluster://`` address (every primary a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        """Start the servers and join them; stop what was started if that fails."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli is needed to create a cluster")
        for server in self.servers:
            server.start()
        subprocess.run([cli, "--cluster", "create",
                        *[f"127.0.0.1:{s.port}" for s in self.servers], "--cluster-yes"],
                       check=True, capture_output=True, timeout=SETUP_TIMEOUT)
        self._until(lambda: all(self._ok(s) for s in self.servers), "the cluster is ok")
        if self.replica is not None:
            self.replica.start()
            first = self.servers[0]
            subprocess.run([cli, "--cluster", "add-node", f"127.0.0.1:{self.replica.port}",
                            f"127.0.0.1:{first.port}", "--cluster-slave",
                            "--cluster-master-id", self.node_id(first)],
                           check=True, capture_output=True, timeout=SETUP_TIMEOUT)
            self._until(lambda: self._replicating(self.replica), "the replica is in sync")

    @staticmethod
    def _until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETUP_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in time: {what}")
            time.sleep(0.05)

    def _replicating(self, server: EmbeddedRedis) -> bool:
        with redis.Redis(port=server.port) as client:
            info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up" \
            and self._ok(server)

    @staticmethod
    def _ok(server: EmbeddedRedis) -> bool:
        with redis.Redis(port=server.port) as client:
            return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")

    def client(self, server: EmbeddedRedis) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(port=server.port, socket_timeout=5)

    def cluster_client(self) -> redis.RedisCluster:
        """redis-py's cluster client (what the Django side would use)."""
        return redis.RedisCluster(host="127.0.0.1", port=self.servers[0].port,
                                  socket_timeout=5)

    def node_id(self, server: EmbeddedRedis) -> str:
        with self.client(server) as client:
            value = client.execute_command("CLUSTER", "MYID")
        return value.decode() if isinstance(value, bytes) else str(value)

    def move_slot(self, slot: int, to: EmbeddedRedis) -> None:
        """Give an empty ``slot`` to ``to`` as a migration does (``redis-cli --cluster
        reshard``): ``to`` imports it, its owner migrates it, then ``CLUSTER SETSLOT …
        NODE`` on every node, the new owner first.

        The new owner must import the slot first: taking an imported slot bumps its
        config epoch above every other node's. Without that, a node with a lower epoch
        than the old owner gives the slot back to it when a heartbeat the old owner sent
        before its own SETSLOT arrives late, while the old owner and the others say the
        new owner has it: every command on the slot is MOVED back and forth for good."""
        target = self.node_id(to)
        owner = self._owner(slot)
        if owner is not to:
            source = self.node_id(owner)
            with self.client(to) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source)
            with self.client(owner) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target)
        for server in [to] + [s for s in self.servers if s is not to]:
            with self.client(server) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)

    def _owner(self, slot: int) -> EmbeddedRedis:
        """The primary that says it serves ``slot``."""
        by_port = {s.port: s for s in self.servers}
        for server in self.servers:
            with self.client(server) as client:
                for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(first) <= slot <= int(last) and int(master[1]) == server.port:
                        return by_port[server.port]
        raise AssertionError(f"no primary says it serves slot {slot}")

    def stop(self) -> None:
        for server in [*self.servers, *([self.replica] if self.replica else [])]:
            server.stop()
