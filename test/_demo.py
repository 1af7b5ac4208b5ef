"""The demo chat (``chatserver``) as the browser tests run it: a real ``twistd ws4tx``
child process, started with the demo's own command line, on a free port, with a fresh copy
of the demo database and its own Redis.

The test process never configures Django for the demo (other tests configure it with
``test.settings``): the database is prepared in a child process, and the tests talk to the
demo only over HTTP, WebSockets (through the browser) and, to seed replayed messages, Redis.
Everything that waits waits on an event (a line of output, a process exit) with a bound.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Optional

from ws4tx import envelope
from ws4tx.naming import DEFAULT_PREFIX, broadcast_channel, channel
from ws4tx.server.embedded import free_port

from chatserver.__main__ import HEARTBEAT, twistd_argv
from test._process import ROOT

#: Bound on every wait for the server (start, stop).
TIMEOUT = 30.0
#: The demo's users; all have this password.
USERS = ("admin", "john", "mary")
PASSWORD = "secret"
#: The facilities of the ws4redis-style chats and of the event chat.
CHAT_FACILITY = "foobar"
EVENT_FACILITY = "eventchat"
#: Seconds a seeded message stays in Redis for replay.
SEED_EXPIRE = 600

_template_lock = threading.Lock()
_template_db: Optional[str] = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """End the child when the test process dies, however it dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a demo child process: this one's, less what would point it at
    another Django project or another Redis, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "WS4TX_REDIS_URL")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def template_database() -> str:
    """The path of a migrated demo database with the fixtures loaded, made once per test
    run (by ``chatserver.__main__.prepare_database``, in a child process)."""
    global _template_db
    with _template_lock:
        if _template_db is None:
            directory = tempfile.mkdtemp(prefix="ws4tx-demo-db-")
            atexit.register(shutil.rmtree, directory, True)
            path = os.path.join(directory, "template.sqlite3")
            subprocess.run(
                [sys.executable, "-c",
                 "from chatserver.__main__ import prepare_database; prepare_database()"],
                env=child_environment(CHATSERVER_DB=path), cwd=ROOT, check=True,
                timeout=120, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            _template_db = path
        return _template_db


class OutputChild:
    """A child process that ends with the test process, whose output (stdout and stderr)
    is kept in ``output`` by a thread of its own and waited on (:meth:`wait_for`)."""

    #: What the child is, in failure messages.
    name = "the child process"

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.output = ""
        self._changed = threading.Condition()
        self._reader: Optional[threading.Thread] = None

    def spawn(self, argv: list[str], env: Optional[dict[str, str]] = None,
              cwd: Optional[str] = None) -> int:
        """Start ``argv``; the offset of ``output`` from which to wait for what it says."""
        with self._changed:
            start = len(self.output)
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read, args=(self.process,),
                                        name=f"{os.path.basename(argv[0])}-output",
                                        daemon=True)
        self._reader.start()
        return start

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            with self._changed:
                self.output += line.decode("utf-8", "replace")
                self._changed.notify_all()
        process.stdout.close()
        with self._changed:
            self._changed.notify_all()

    def running(self) -> bool:
        """Whether the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def wait_for(self, pattern: str, timeout: float = TIMEOUT,
                 since: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the output (from its character ``since``:
        ``len(child.output)`` before an action waits for what the action causes);
        AssertionError if the child ends or ``timeout`` seconds pass first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = compiled.search(self.output, since)
                if match:
                    return match
                if not self.running() and self._reader is not None \
                        and not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.name} ended before printing {pattern!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {pattern!r} within {timeout} s in:\n{self.output}")
                self._changed.wait(left)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> Optional[int]:
        """Send ``sig`` and wait for the exit status (None if it was never started); kill
        the child if it does not end within ``timeout`` seconds."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
                raise AssertionError(
                    f"{self.name} did not end within {timeout} s of signal {sig}:\n"
                    f"{self.output}") from None
        if self._reader is not None:
            self._reader.join(timeout)
        return process.returncode


class DemoServer(OutputChild):
    """A ``twistd ws4tx`` child serving the demo chat on ``url``.

    Every instance has its own copy of the database and port; :meth:`start` can be called
    again after :meth:`stop` (same port, same database: a server restart). With
    ``launcher_args`` (a list, maybe empty) it starts as a person does, with
    ``python -m chatserver --port PORT *launcher_args`` (which execs the same twistd).
    """

    name = "the demo server"

    def __init__(self, launcher_args: Optional[list[str]] = None,
                 redis_port: Optional[int] = 0, twistd_args: Iterable[str] = ()) -> None:
        super().__init__()
        self.launcher_args = launcher_args
        #: More options of ``twistd ws4tx`` (a site's settings: ``--rate-limit``...).
        self.twistd_args = list(twistd_args)
        #: The launcher's ``--redis-port`` (0: a free port, so that demos of parallel tests
        #: do not meet on the default one; None: the launcher's default).
        self.redis_port = redis_port
        self.directory = tempfile.mkdtemp(prefix="ws4tx-demo-")
        self.database = os.path.join(self.directory, "db.sqlite3")
        shutil.copyfile(template_database(), self.database)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = ""

    # Running

    def start(self, redis_url: Optional[str] = None) -> DemoServer:
        """Start the server with ``--redis embedded`` (or ``redis_url``) and return once it
        serves HTTP and its Redis subscriber is connected."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is running already")
        if self.launcher_args is not None:
            if redis_url is not None:
                raise ValueError("the launcher always runs an embedded Redis")
            argv = [sys.executable, "-m", "chatserver", "--port", str(self.port),
                    *self.launcher_args]
            if self.redis_port is not None:
                argv += ["--redis-port", str(self.redis_port)]
        else:
            argv = twistd_argv(self.port) + self.twistd_args
        if redis_url is not None:
            argv[argv.index("embedded")] = redis_url
        with self._changed:
            self.output = ""
        self.spawn(argv, env=child_environment(CHATSERVER_DB=self.database), cwd=ROOT)
        self.wait_for(f"Site starting on {self.port}")
        self.wait_for("Redis subscriber connected")
        if redis_url is None:
            self.redis_url = self.wait_for(r"embedded Redis \(.*?\) at (redis://\S+?);").group(1)
        else:
            self.redis_url = redis_url
        return self

    def close(self) -> None:
        """Stop the server (if it runs) and remove its files."""
        try:
            self.stop(signal.SIGKILL)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # Redis (for seeding only: the tests send as users do, through the pages)

    def seed(self, messages: Iterable[tuple[str, str]], redis_url: Optional[str] = None) -> None:
        """Store ``(channel, message)`` pairs for replay: a page gets the one of each of its
        channels right after its subscription is in place, which tells the test that the
        page is ready to receive."""
        import redis

        store = redis.Redis.from_url(redis_url or self.redis_url)
        try:
            for name, message in messages:
                store.set(name, message, ex=SEED_EXPIRE)
        finally:
            store.close()


# Browsers


def heartbeat_counter(heartbeat: str) -> str:
    """An init script that counts, in ``window.__heartbeats``, the heartbeats the page's
    WebSocket sent and the answers it got (both from 0 on every new connection), so that a
    test can wait for the answer to a heartbeat it made the page send."""
    # %-formatted (UP031): an f-string would need every brace of the script doubled.
    return """
(() => {
  const HEARTBEAT = %s;
  const Native = window.WebSocket;
  const beats = window.__heartbeats = {sent: 0, answered: 0};
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('open', () => { beats.sent = 0; beats.answered = 0; });
      this.addEventListener('message', (event) => {
        if (event.data === HEARTBEAT) beats.answered++;
      });
    }
    send(data) {
      if (data === HEARTBEAT) beats.sent++;
      return super.send(data);
    }
  };
})();
""" % json.dumps(heartbeat)  # noqa: UP031


class BrowserSession:
    """Headless Chromium (through ``test._browser``) for one test class: contexts on the
    demo's URL, and logging in as a person does."""

    def __init__(self) -> None:
        self._browser: Any = None
        self._handle: Any = None

    def start(self) -> None:
        """Launch the browser (or skip the test class when there is none, outside CI)."""
        from test import _browser

        self._handle = _browser.launch()
        self._browser = self._handle.browser

    @property
    def browser(self) -> Any:
        """The Playwright ``Browser``."""
        return self._browser

    def new_context(self, base_url: str) -> Any:
        """A fresh context (its own cookies: its own user) whose relative URLs go to
        ``base_url``."""
        context = self._browser.new_context(base_url=base_url)
        context.set_default_timeout(TIMEOUT * 1000)
        return context

    def log_in(self, context: Any, user: str, password: str = PASSWORD) -> None:
        """Log ``context`` in as ``user`` with the login form."""
        page = context.new_page()
        try:
            page.goto("/accounts/login/")
            page.locator("#id_username").fill(user)
            page.locator("#id_password").fill(password)
            page.locator("#login-form button[type=submit]").click()
            page.wait_for_url("**/chat/")
            account = page.locator("#username")
            if account.inner_text() != user:
                raise AssertionError(f"logging in as {user} failed: {page.url}")
        finally:
            page.close()

    def stop(self) -> None:
        """Close the browser and Playwright (every context with them)."""
        handle, self._handle, self._browser = self._handle, None, None
        if handle is not None:
            handle.close()


# Channel names and messages of the demo (ws4tx's default prefix: the demo sets none)


def broadcast(facility: str = CHAT_FACILITY) -> str:
    """The broadcast channel of ``facility``."""
    return broadcast_channel(DEFAULT_PREFIX, facility)


def user_channel(user: str, facility: str = CHAT_FACILITY) -> str:
    """The channel of ``user`` in ``facility``."""
    return channel(DEFAULT_PREFIX, "user", facility, user)


def group_channel(group: str, facility: str = CHAT_FACILITY) -> str:
    """The channel of ``group`` in ``facility``."""
    return channel(DEFAULT_PREFIX, "group", facility, group)


def event(name: str, data: Any) -> str:
    """A ws4tx event envelope as the server sends it."""
    return envelope.encode_event(name, data)


__all__ = [
    "CHAT_FACILITY",
    "EVENT_FACILITY",
    "HEARTBEAT",
    "PASSWORD",
    "TIMEOUT",
    "USERS",
    "BrowserSession",
    "DemoServer",
    "broadcast",
    "child_environment",
    "event",
    "group_channel",
    "heartbeat_counter",
    "template_database",
    "user_channel",
]
