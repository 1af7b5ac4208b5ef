"""A real ws4tx server for the npm package's tests (js/test/server.test.mjs).

``python js/test/ws4tx_server.py`` starts a Redis of its own (``EmbeddedRedis``, on a free
port) and ``twistd ws4tx`` on a free port of 127.0.0.1, with history on the facilities
``chat*`` and the event handlers :class:`Echo` on ``echo`` and :class:`Notes` on
``notes``. It then speaks JSON lines:

- it prints ``{"url": "ws://127.0.0.1:PORT/ws/", "redis": "redis://…"}`` once the server
  listens and is subscribed to Redis;
- for each command it reads on stdin it prints ``{"ok": result}`` or ``{"error": text}``:

  ``{"do": "publish", "facility": F, "message": M}``  ``ws4tx.api.publish`` to broadcast
  (``"message64"``: the bytes of a base64 text instead)
  ``{"do": "publish", "facility": F, "messages": [M, ...]}``  each of them, in order
  ``{"do": "emit", "facility": F, "event": E, "data": D}``  ``ws4tx.api.emit`` to broadcast
  ``{"do": "position", "facility": F}``  ``ws4tx.api.position`` of broadcast, as
  ``{% ws4tx_position %}`` renders it (``{channel: {"epoch", "offset"}}``)
  ``{"do": "stop"}``   SIGTERM to the server (its clients are closed with 1001), waited for
  ``{"do": "start"}``  the server again, on the same port and Redis, once it is ready

- at the end of stdin it stops the server and Redis, and exits.

twistd's output goes to stderr. Twistd imports this module for ``--handlers``: nothing runs
at import time but the class definition.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Optional

from ws4tx.server import EventHandler, EventRefused

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
#: The history of the test facilities: 100 messages for 10 minutes.
HISTORY = {"chat*": {"size": 100, "ttl": 600}}
TIMEOUT = 30.0


class Echo(EventHandler):
    """The facility ``echo``: ``echo`` answers with its data, ``refuse`` refuses, ``shout``
    emits its data to every client of the facility as ``shouted``."""

    facility = "echo"

    def on_echo(self, client: Any, data: Any) -> Any:
        return data

    def on_refuse(self, client: Any, data: Any) -> Any:
        raise EventRefused(f"refused: {data}")

    async def on_shout(self, client: Any, data: Any) -> Any:
        await self.server.emit("shouted", data, facility=self.facility, broadcast=True)
        return {"shouted": True}


class Notes(EventHandler):
    """The facility ``notes``: ``echo`` answers ``{"notes": data}``, ``shout`` emits its
    data to every client of the facility as ``shouted`` (what tells it from ``echo``)."""

    facility = "notes"

    def on_echo(self, client: Any, data: Any) -> Any:
        return {"notes": data, "facility": client.facility}

    async def on_shout(self, client: Any, data: Any) -> Any:
        await self.server.emit("shouted", {"notes": data}, facility=self.facility,
                               broadcast=True)
        return {"shouted": True}


class Twistd:
    """``twistd -n ws4tx`` in a child process; its output copied to stderr and kept."""

    def __init__(self, port: int, redis_url: str) -> None:
        self.port = port
        self.redis_url = redis_url
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.output = ""
        self.changed = threading.Condition()

    def start(self) -> None:
        """Start the server and wait (bounded) until it listens and Redis is subscribed."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "ws4tx",
                "--redis", self.redis_url,
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--history", ",".join(f"{glob}={rule['size']}:{rule['ttl']}"
                                      for glob, rule in HISTORY.items()),
                "--handlers", "ws4tx_server.Echo", "--handlers", "ws4tx_server.Notes",
                "--anonymous-publish", "--heartbeat", "--heartbeat--"]
        with self.changed:
            start = len(self.output)
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._copy, args=(self.process.stdout,), daemon=True).start()
        self._wait(rf"(?s)(?=.*Site starting on {self.port}\b)(?=.*Redis subscriber connected)",
                   start)

    def _copy(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            with self.changed:
                self.output += text
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _wait(self, pattern: str, start: int) -> None:
        compiled = re.compile(pattern)
        with self.changed:
            ready = self.changed.wait_for(
                lambda: compiled.search(self.output, start) is not None
                or (self.process is not None and self.process.poll() is not None),
                TIMEOUT)
            if not ready or compiled.search(self.output, start) is None:
                raise RuntimeError(f"twistd ws4tx did not start:\n{self.output[start:]}")

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(TIMEOUT)


def serve(commands: IO[str], answers: IO[str]) -> None:
    """Run Redis and the server, answer the commands until the end of ``commands``."""
    import django
    from django.conf import settings

    from ws4tx import api
    from ws4tx.server.embedded import EmbeddedRedis, free_port

    redis = EmbeddedRedis()
    redis.start()
    try:
        # The Django half publishes as a site would: same Redis, same history setting.
        settings.configure(WS4TX_HISTORY=HISTORY)
        django.setup()
        os.environ["WS4TX_REDIS_URL"] = redis.url
        server = Twistd(free_port(), redis.url)
        server.start()
        try:
            say(answers, {"url": f"ws://127.0.0.1:{server.port}/ws/", "redis": redis.url})
            for line in commands:
                if line.strip():
                    say(answers, answer(json.loads(line), server, api))
        finally:
            server.stop()
    finally:
        redis.stop()


def answer(command: dict[str, Any], server: Twistd, api: Any) -> dict[str, Any]:
    """What a command does, as its answer."""
    try:
        what = command["do"]
        if what == "publish" and "messages" in command:
            return {"ok": [api.publish(command["facility"], m, broadcast=True)
                           for m in command["messages"]]}
        if what == "position":
            return {"ok": {channel: {"epoch": p.epoch, "offset": p.offset} for channel, p
                           in api.position(command["facility"], broadcast=True).items()}}
        if what == "publish":
            message = (base64.b64decode(command["message64"]) if "message64" in command
                       else command["message"])
            return {"ok": api.publish(command["facility"], message, broadcast=True)}
        if what == "emit":
            return {"ok": api.emit(command["facility"], command["event"], command.get("data"),
                                   broadcast=True)}
        if what == "stop":
            return {"ok": server.stop()}
        if what == "start":
            server.start()
            return {"ok": None}
        return {"error": f"unknown command {what!r}"}
    except Exception as e:  # noqa: BLE001 - every failure is the test's to see
        return {"error": f"{type(e).__name__}: {e}"}


def say(answers: IO[str], obj: dict[str, Any]) -> None:
    answers.write(json.dumps(obj) + "\n")
    answers.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
