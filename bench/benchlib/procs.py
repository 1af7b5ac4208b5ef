"""Child processes of the suite: started pinned to a core, with the open-files limit raised
to the hard limit, ended when the suite ends (however it ends), and measured from /proc."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")
TASKSET = shutil.which("taskset")


class BenchError(RuntimeError):
    """Something the suite needs did not happen (a server did not start, a client
    process did not answer); the run is recorded as an error."""


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-files limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _child_setup() -> None:  # pragma: no cover - runs in the child before exec
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if sys.platform.startswith("linux"):
        # End the child with the suite, even if the suite is killed.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tree(pid: int) -> list[int]:
    """A process and its descendants (a supervisor's workers), from /proc/PID/task/*/children."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            tids = os.listdir(f"/proc/{pids[i]}/task")
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the threads of a process have waited for a CPU while runnable (from
    /proc/PID/task/*/schedstat): the time other processes took from it."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Registry:
    """Every process the suite started, so that all are stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.lock = threading.Lock()

    def add(self, proc: Proc) -> None:
        with self.lock:
            self.procs.append(proc)

    def discard(self, proc: Proc) -> None:
        with self.lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            proc.stop()


REGISTRY = Registry()


class Proc:
    """A child process; its stdout and stderr go to ``log_path`` unless it talks JSON."""

    def __init__(self, name: str, argv: list[str], *, cpu: Optional[int | str], pin: bool,
                 log_path: str, env: Optional[dict[str, str]] = None,
                 cwd: Optional[str] = None, json_io: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self.argv = list(argv)
        if pin and cpu is not None:
            if TASKSET is None:
                raise BenchError("taskset is not installed (util-linux); use --no-pin")
            self.argv = [TASKSET, "-c", str(cpu)] + self.argv
        self.cpu = cpu if pin else None
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log_path, "ab")  # noqa: SIM115 - the process's log, closed in stop()
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv, cwd=cwd, env=full_env,
            stdin=subprocess.PIPE if json_io else subprocess.DEVNULL,
            stdout=subprocess.PIPE if json_io else self._log,
            stderr=self._log, preexec_fn=_child_setup, start_new_session=True,
        )
        self.pid = self.popen.pid
        REGISTRY.add(self)
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        if json_io:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a JSON command, wait (bounded) for its JSON answer."""
        if not self.alive():
            raise BenchError(f"{self.name} has exited ({self.popen.returncode}); see {self.log_path}")
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write((json.dumps(command) + "\n").encode())
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError(f"{self.name}: cannot send {command.get('cmd')}: {e}") from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} did not answer {command.get('cmd')!r} in {timeout:.0f} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"{self.name} exited during {command.get('cmd')!r}; see {self.log_path}")
            line = line.strip()
            if not line.startswith("{"):
                continue
            answer = json.loads(line)
            if "error" in answer:
                raise BenchError(f"{self.name}: {command.get('cmd')}: {answer['error']}")
            return answer

    # Measured over the process and its children (the workers of ws4tx --workers N).

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in tree(self.pid))

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in tree(self.pid))

    def runqueue_wait_seconds(self) -> float:
        return sum(runqueue_wait_seconds(pid) for pid in tree(self.pid))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only this process (its own id)."""
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        REGISTRY.discard(self)
        try:
            self._log.close()
        except OSError:
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    """Wait (bounded) until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited at start ({proc.popen.returncode}); "
                             f"see {proc.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on {port} within {timeout:.0f} s; "
                     f"see {proc.log_path}")


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    """The status of a plain HTTP GET on 127.0.0.1:``port`` (0 when it fails)."""
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def http_json(port: int, path: str, timeout: float = 2.0) -> Optional[dict]:
    """The JSON body of a plain HTTP GET on 127.0.0.1:``port`` (None when it fails)."""
    import http.client
    import json

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        return json.loads(body)
    except (OSError, ValueError):
        return None


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_commands(port: int, timeout: float = 5.0) -> Optional[dict[str, int]]:
    """How many times the Redis on ``port`` has run each command so far (``INFO
    commandstats``), by name, or None when it does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"INFO commandstats\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
                head, _, body = data.partition(b"\r\n")
                if head.startswith(b"$") and len(body) >= int(head[1:]):
                    break
    except (OSError, ValueError):
        return None
    counts: dict[str, int] = {}
    for line in body.decode("ascii", "replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            fields = dict(kv.split("=", 1) for kv in rest.split(","))
            counts[name] = int(fields.get("calls", 0))
    return counts


def redis_command_calls(port: int, timeout: float = 5.0) -> Optional[int]:
    """How many commands the Redis on ``port`` has run (the INFO calls themselves left
    out), or None when it does not answer."""
    counts = redis_commands(port, timeout)
    if counts is None:
        return None
    return sum(calls for name, calls in counts.items() if name != "info")

