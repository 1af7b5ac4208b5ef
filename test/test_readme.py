"""The README's Quick start snippets, run exactly as printed against a running demo.

The snippets are taken from README.md: each fenced block after a ``<!-- test: NAME``
comment. They run as a reader runs them: in a shell, in a directory that has the
``.venv/bin/python`` they name (here a script that runs this test's Python), with the
demo's package importable and no Django settings. Real WebSocket clients of the demo must
get what they publish. Also: the demo prints the same publish line, and falls back loudly
to another port when its Redis port is taken.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from chatserver.__main__ import (
    DEFAULT_REDIS_PORT,
    SHELL_MESSAGE,
    port_is_free,
    publish_line,
    redis_url,
)
from test._demo import (
    CHAT_FACILITY,
    EVENT_FACILITY,
    TIMEOUT,
    BrowserSession,
    DemoServer,
    broadcast,
    child_environment,
    event,
    group_channel,
    user_channel,
)
from test._process import ROOT
from test.test_demo import Client, read_until, settle

README = Path(ROOT) / "README.md"
#: Bound on each wait in a browser page, in milliseconds.
WAIT_MS = int(TIMEOUT * 1000)
_SNIPPET = re.compile(r"<!-- test: ([\w-]+).*?-->\n```\w*\n(.*?)\n```", re.S)


def readme_snippets() -> dict[str, str]:
    """The README's tested snippets, by name."""
    return dict(_SNIPPET.findall(README.read_text(encoding="utf-8")))


class ReaderShell:
    """A directory with a ``.venv/bin/python`` (this Python, the repository importable)
    where shell lines run as a reader's, without the test's Django or Redis settings."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ws4tx-reader-")
        python = os.path.join(self.directory, ".venv", "bin", "python")
        os.makedirs(os.path.dirname(python))
        with open(python, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        os.chmod(python, 0o755)

    def run(self, line: str, **env: str) -> None:
        done = subprocess.run(line, shell=True, cwd=self.directory,
                              env=child_environment(**env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"{line!r} failed ({done.returncode}):\n{done.stderr}")

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text + "\n")
        return path

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def next_event(ws: Any, name: str) -> Any:
    """The data of the next ``name`` event an event client gets (bounded), read as
    ws4tx.js reads it: on a facility with history the event comes in a publication
    envelope (``{"ws4tx": "pub", …, "data": "<the event>"}``)."""
    while True:
        frame = ws.recv(timeout=TIMEOUT)
        if frame.startswith("{"):
            envelope = json.loads(frame)
            if envelope.get("ws4tx") == "pub" and isinstance(envelope.get("data"), str):
                envelope = json.loads(envelope["data"])
            if envelope.get("event") == name:
                return envelope.get("data")


@pytest.mark.system
class ReadmeAgainstTheDemoTests(SynchronousTestCase):
    """``python -m chatserver`` as ``./demo`` runs it: its Redis on the default port, which
    the README's lines name."""

    server: DemoServer
    shell: ReaderShell

    @classmethod
    def setUpClass(cls) -> None:
        if not port_is_free(DEFAULT_REDIS_PORT):
            if os.environ.get("CI"):  # CI must run them: a taken port is a failure there
                raise RuntimeError(f"port {DEFAULT_REDIS_PORT} is in use under CI")
            raise SkipTest(f"port {DEFAULT_REDIS_PORT}, which the README's lines name, is in "
                           f"use on this machine (a demo running?)")
        cls.server = DemoServer(launcher_args=[], redis_port=None)
        cls.shell = ReaderShell()
        try:
            cls.server.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()
        cls.shell.close()

    def setUp(self) -> None:
        """No stored message to replay: what a client gets after settling is new."""
        import redis

        store = redis.Redis.from_url(self.server.redis_url)
        try:
            store.delete(broadcast(), user_channel("john"), group_channel("chatusers"))
        finally:
            store.close()

    def test_demoRedisIsWhereTheReadmeSays(self) -> None:
        self.assertEqual(self.server.redis_url, redis_url(DEFAULT_REDIS_PORT))
        self.assertIn(f"`{redis_url(DEFAULT_REDIS_PORT)}`", README.read_text())

    def test_shellLineLandsInTheBroadcastChat(self) -> None:
        """The paste-able line of the Quick start, exactly as printed, reaches a client of
        the broadcast chat (/chat/'s WebSocket)."""
        line = readme_snippets()["demo-shell"]
        self.assertEqual(line, publish_line(redis_url(DEFAULT_REDIS_PORT)))
        with Client(self.server).websocket(CHAT_FACILITY, "subscribe-broadcast") as page:
            settle(page)
            self.shell.run(line)
            self.assertEqual(page.recv(timeout=TIMEOUT), SHELL_MESSAGE)

    def test_demoPrintsAPublishLineThatWorks(self) -> None:
        printed = self.server.wait_for(r"paste this in a second shell:\n +(.+)\n").group(1)
        self.assertEqual(printed, publish_line(self.server.redis_url, sys.executable))
        with Client(self.server).websocket(CHAT_FACILITY, "subscribe-broadcast") as page:
            settle(page)
            self.shell.run(printed)
            self.assertEqual(page.recv(timeout=TIMEOUT), SHELL_MESSAGE)

    def test_pythonSnippetLandsInEachPage(self) -> None:
        """The Quick start's Python snippet, saved as a file and run as the README says:
        the broadcast, john's user chat, the group chat (mary) and the event chat each get
        their line, in a shape their page shows (a text line; a ``message`` event with
        ``user`` and ``text``)."""
        snippet = readme_snippets()["demo-python"]
        run_line = f"WS4TX_REDIS_URL={redis_url(DEFAULT_REDIS_PORT)} .venv/bin/python hello.py"
        self.assertIn(f"`{run_line}`", README.read_text())
        self.shell.write("hello.py", snippet)
        john, mary = Client(self.server).log_in("john"), Client(self.server).log_in("mary")
        with Client(self.server).websocket(CHAT_FACILITY, "subscribe-broadcast") as everybody, \
                john.websocket(CHAT_FACILITY, "subscribe-user") as john_page, \
                mary.websocket(CHAT_FACILITY, "subscribe-group") as mary_group, \
                Client(self.server).websocket(EVENT_FACILITY, "subscribe-broadcast",
                                              events=True) as event_page:
            for ws in (everybody, john_page, mary_group, event_page):
                settle(ws)
            self.shell.run(run_line)
            self.assertEqual(everybody.recv(timeout=TIMEOUT), "Hello, everybody")
            self.assertEqual(john_page.recv(timeout=TIMEOUT), "Hello, John")
            self.assertEqual(mary_group.recv(timeout=TIMEOUT), "Hello, chat users")
            self.assertEqual(next_event(event_page, "message"), {"user": "django", "text": "hi"})


    def test_snippetsShowAsTextInThePages(self) -> None:
        """In Chromium: the shell line shows in /chat/, the emit shows in /eventchat/ as
        django's line (not as raw JSON), the group publish in mary's /groupchat/."""
        session = BrowserSession()
        session.start()
        self.addCleanup(session.stop)
        marker = f"ready {uuid.uuid4()}"
        # Stored messages are replayed once a page is subscribed: seeing them says so.
        self.server.seed([(broadcast(), marker), (group_channel("chatusers"), marker),
                          (broadcast(EVENT_FACILITY), event("message",
                                                            {"user": "seed", "text": marker}))])
        anonymous = session.new_context(self.server.url)
        mary = session.new_context(self.server.url)
        session.log_in(mary, "mary")
        pages = {"chat": anonymous.new_page(), "eventchat": anonymous.new_page(),
                 "groupchat": mary.new_page()}
        for path, page in pages.items():
            page.goto(f"/{path}/")
            # "connected" once the server answered the page's recover=: subscribed.
            page.wait_for_function(
                "() => document.getElementById('ws-state').dataset.state === 'connected'",
                polling=50, timeout=WAIT_MS)
        self.shell.run(readme_snippets()["demo-shell"])
        self.shell.write("hello.py", readme_snippets()["demo-python"])
        self.shell.run(f"WS4TX_REDIS_URL={redis_url(DEFAULT_REDIS_PORT)} "
                       f".venv/bin/python hello.py")
        for path, text in (("chat", SHELL_MESSAGE), ("chat", "Hello, everybody"),
                           ("eventchat", "django: hi"), ("groupchat", "Hello, chat users")):
            pages[path].bring_to_front()
            pages[path].wait_for_function("t => document.body.innerText.includes(t)",
                                          arg=text, polling=50, timeout=WAIT_MS)
        self.assertNotIn('"ws4tx"', pages["eventchat"].locator("body").inner_text())


@pytest.mark.system
class RedisPortTakenTests(SynchronousTestCase):
    """``--redis-port`` on a port something else listens on: a free port, a warning, and a
    printed publish line that reaches the demo all the same."""

    def test_takenPortFallsBackLoudly(self) -> None:
        shell = ReaderShell()
        self.addCleanup(shell.close)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            server = DemoServer(launcher_args=["--redis-port", str(taken)], redis_port=None)
            self.addCleanup(server.close)
            server.start()
            self.assertIn(f"WARNING: port {taken} is in use, so the demo's Redis listens on",
                          server.output)
            self.assertNotEqual(server.redis_url, redis_url(taken))
            printed = server.wait_for(r"paste this in a second shell:\n +(.+)\n").group(1)
            self.assertIn(server.redis_url, printed)
            marker = f"{uuid.uuid4()}"
            line = printed.replace(SHELL_MESSAGE, marker)
            with Client(server).websocket(CHAT_FACILITY, "subscribe-broadcast") as page:
                settle(page)
                shell.run(line)
                read_until(page, marker)
