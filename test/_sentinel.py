"""A real Redis Sentinel setup for tests: a master, a replica and three Sentinels, each a
child process on a free loopback port.

Every wait is on an event with a bound: the replica's sync by ``WAIT``, the Sentinels'
discoveries and failovers by their own event channels (``+sentinel``, ``+slave``,
``+switch-master``), each followed by a check of the state they announce.
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional

import redis

from ws4tx.redis_address import RedisAddress
from ws4tx.server.embedded import EmbeddedRedis

from test._cluster import NO_SYNC_DELAY

#: The name the Sentinels monitor the master under.
MASTER_NAME = "ws4tx-main"
#: Sentinel timing used by the tests (milliseconds).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
#: Bound on any wait for the setup (never reached when things work).
SETUP_TIMEOUT = 30.0


class SentinelGroup:
    """``master``, ``replica`` and ``sentinels`` (EmbeddedRedis each); :meth:`address` is
    the ``redis+sentinel://`` address of the group."""

    def __init__(self, password: Optional[str] = None,
                 sentinel_password: Optional[str] = None, quorum: int = 2) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum
        auth = ["--masterauth", password] if password else []
        auth += NO_SYNC_DELAY  # either may be the master (after a failover)
        self.master = EmbeddedRedis(password=password, extra_args=auth)
        self.replica = EmbeddedRedis(password=password, extra_args=auth + [
            "--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinels: list[EmbeddedRedis] = []
        self._servers: list[EmbeddedRedis] = []
        self._events: list[redis.client.PubSub] = []
        self._clients: list[redis.Redis] = []

    def _sentinel_config(self) -> list[str]:
        lines = [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        return lines

    def address(self, **changes: object) -> RedisAddress:
        """The group's ``redis+sentinel://`` address."""
        address = RedisAddress(
            password=self.password,
            sentinels=tuple((s.host, s.port) for s in self.sentinels),
            master_name=MASTER_NAME,
            sentinel_password=self.sentinel_password,
        )
        from dataclasses import replace

        return replace(address, **changes)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start everything and return once the replica is in sync and every Sentinel
        knows the master, the replica and the other Sentinels."""
        try:
            self._start(self.master)
            self._start(self.replica)
            master = self.client(self.master)
            master.set("ws4tx-test:sync", "1")
            if master.wait(1, int(SETUP_TIMEOUT * 1000)) < 1:
                raise AssertionError("the replica did not sync in time")
            for _ in range(3):
                sentinel = EmbeddedRedis(password=None, config=self._sentinel_config(),
                                         sentinel=True)
                self._start(sentinel)
                self.sentinels.append(sentinel)
                self._events.append(self._subscribe(sentinel))
            self._until(self._everyoneKnown, "the Sentinels did not discover each other "
                        "and the replica")
        except BaseException:
            self.stop()
            raise

    def _start(self, server: EmbeddedRedis) -> None:
        server.start()
        self._servers.append(server)

    def client(self, server: EmbeddedRedis) -> redis.Redis:
        """A redis-py client of one of the servers (closed by :meth:`stop`)."""
        password = self.sentinel_password if server.sentinel else self.password
        client = redis.Redis(host=server.host, port=server.port, password=password,
                             socket_timeout=5, decode_responses=True)
        self._clients.append(client)
        return client

    def _subscribe(self, sentinel: EmbeddedRedis) -> redis.client.PubSub:
        pubsub = self.client(sentinel).pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("*")
        return pubsub

    def _everyoneKnown(self) -> bool:
        for sentinel in self.sentinels:
            client = self.client(sentinel)
            others = client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
            self._clients.remove(client)
            client.close()
            if len(others) < len(self.sentinels) - 1:
                return False
            if not any("s_down" not in _flags(r) and "disconnected" not in _flags(r)
                       for r in replicas):
                return False
        return True

    def _until(self, condition: Callable[[], bool], what: str,
               timeout: float = SETUP_TIMEOUT) -> None:
        """Return once ``condition()`` holds, checking it again after each Sentinel
        event; AssertionError(``what``) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what} within {timeout} s")
            for events in self._events:
                events.get_message(timeout=min(left, 0.2) / len(self._events))

    def master_address(self) -> tuple[str, int]:
        """Where the first Sentinel says the master is now."""
        host, port = self.client(self.sentinels[0]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return host, int(port)

    def crash_master(self) -> None:
        """SIGKILL the master (the replica is to take over)."""
        self.master.stop(signal.SIGKILL)

    def wait_switch(self, new: EmbeddedRedis, timeout: float = SETUP_TIMEOUT) -> None:
        """Return once every Sentinel names ``new`` as the master."""
        def switched() -> bool:
            for sentinel in self.sentinels:
                client = self.client(sentinel)
                found = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                               MASTER_NAME)
                self._clients.remove(client)
                client.close()
                if not found or int(found[1]) != new.port:
                    return False
            return True

        self._until(switched, "the Sentinels did not switch to the new master", timeout)

    def stop(self) -> None:
        """Stop every server and close every client."""
        for events in self._events:
            events.close()
        for client in self._clients:
            client.close()
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()


def _flags(info: object) -> str:
    """The ``flags`` of a SENTINEL REPLICAS entry (a flat name/value list in RESP2, a
    dict in RESP3)."""
    if isinstance(info, dict):
        return str(info.get("flags", ""))
    items = list(info)  # type: ignore[call-overload]
    pairs = dict(zip(items[::2], items[1::2], strict=True))
    return str(pairs.get("flags", ""))
