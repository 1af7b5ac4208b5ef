"""The compatibility matrix, measured: run the demo under ``twistd ws4tx`` and check every
row of the acceptance matrix as users do it (log in, open WebSockets, send), then write
the result as JSON; ``--report`` turns the JSON of several environments into
docs/compatibility.md.

    python -m chatserver.compat --json out/py312-django60.json
    python -m chatserver.compat --report out/ docs/compatibility.md

``tox -m compat`` runs it on every supported Python x Django pair and writes the report.
"""

from __future__ import annotations

import argparse
import datetime
import html
import http.cookiejar
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

USERS = ("admin", "john", "mary")
GROUP_MEMBERS = {"john", "mary"}
WAIT = 10.0  # seconds any single expected event may take


class MatrixError(AssertionError):
    """A row of the matrix did not hold."""


@contextmanager
def demo_server() -> Iterator[int]:
    """A fresh demo (own SQLite file, embedded Redis) on a free port."""
    from ws4tx.server.embedded import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CHATSERVER_DB=os.path.join(tmp, "db.sqlite3"))
        process = subprocess.Popen(
            [sys.executable, "-m", "chatserver", "--port", str(port), "--redis-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            _wait_for(process, [f"Site starting on {port}", "Redis subscriber connected"])
            yield port
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(process: subprocess.Popen[str], needles: list[str]) -> None:
    """Read the server's output until every needle has appeared (bounded)."""
    assert process.stdout is not None
    seen, deadline, missing = "", time.monotonic() + 60, list(needles)
    os.set_blocking(process.stdout.fileno(), True)
    while missing:
        if time.monotonic() > deadline or process.poll() is not None:
            raise MatrixError(f"the demo did not start: {seen[-3000:]}")
        line = process.stdout.readline()
        seen += line
        missing = [n for n in missing if n not in seen]
    # Keep draining the output so that the server never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()


class Browser:
    """One user's cookie jar against the demo: log in, post forms, open WebSockets."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self, path: str) -> str:
        page = self.opener.open(self.base + path, timeout=WAIT).read().decode()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if not match:
            raise MatrixError(f"no CSRF token on {path}")
        return html.unescape(match.group(1))

    def post(self, path: str, **fields: str) -> int:
        fields["csrfmiddlewaretoken"] = self._csrf(path)
        request = urllib.request.Request(
            self.base + path, data=urllib.parse.urlencode(fields).encode(),
            headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=WAIT) as response:
            return int(response.status)

    def login(self, name: str) -> None:
        self.post("/accounts/login/", username=name, password="secret")
        if not any(c.name == "sessionid" for c in self.jar):
            raise MatrixError(f"{name} could not log in")

    def websocket(self, flags: str) -> Any:
        from websockets.sync.client import connect

        cookies = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        uri = self.base.replace("http", "ws", 1) + "/ws/foobar?" + flags
        return connect(uri, additional_headers={"Cookie": cookies, "Origin": self.base},
                       open_timeout=WAIT)


def _received(sockets: dict[str, Any], marker: str) -> dict[str, list[str]]:
    """What each socket got up to ``marker`` (a message every socket gets afterwards,
    so that 'nothing else arrived' is checked without waiting for a timeout)."""
    got: dict[str, list[str]] = {}
    for name, ws in sockets.items():
        got[name] = []
        while True:
            message = ws.recv(timeout=WAIT)
            if message == marker or message.endswith(": " + marker):
                break
            got[name].append(message)
    return got


def _text(message: str) -> str:
    """The text a chat message carries: the demo's user and group chats publish JSON
    (``{"user": …, "text": …}``); a broadcast over the WebSocket arrives as it was sent."""
    if message.startswith("{"):
        try:
            decoded = json.loads(message)
        except ValueError:
            return message
        if isinstance(decoded, dict) and isinstance(decoded.get("text"), str):
            return decoded["text"]
    return message


def run_matrix(port: int) -> list[dict[str, Any]]:
    """Every row of the acceptance matrix, as the demo's users do it."""
    browsers = {name: Browser(port) for name in USERS}
    for name, browser in browsers.items():
        browser.login(name)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        sockets = {
            audience: {name: stack.enter_context(b.websocket(flags))
                       for name, b in browsers.items()}
            for audience, flags in (
                ("broadcast", "subscribe-broadcast&publish-broadcast&echo"),
                ("user", "subscribe-user&subscribe-broadcast"),
                ("group", "subscribe-group&subscribe-broadcast"))
        }
        marker_sender = sockets["broadcast"]["admin"]

        def check(channel: str, sender: str, target: str, send: Any,
                  expected: set[str], audience: str, own_copy: bool = False) -> None:
            """Send one message; exactly ``expected`` get it, each once. With
            ``own_copy`` the sender also gets one copy (the demo's user chat sends it
            back to its sender, so that the sender's page shows it): not a recipient of
            the row, but checked all the same."""
            text = f"{channel} from {sender} to {target} {time.monotonic_ns()}"
            send(text)
            marker = f"marker {time.monotonic_ns()}"
            marker_sender.send(marker)
            got = _received(sockets[audience], marker)
            copies = {n: sum(_text(m).endswith(text) for m in messages)
                      for n, messages in got.items()}
            wanted = dict.fromkeys(expected, 1)
            if own_copy:
                wanted[sender] = 1
            recipients = {n for n, count in copies.items() if count}
            if own_copy and sender not in expected:
                recipients.discard(sender)
            rows.append({"channel": channel, "from": sender, "to": target,
                         "recipients": sorted(recipients), "expected": sorted(expected),
                         "ok": {n: c for n, c in copies.items() if c} == wanted})
            if audience != "broadcast":  # the marker went there too: drain it
                _received(sockets["broadcast"], marker)

        for sender in USERS:
            check("broadcast", sender, "everybody", sockets["broadcast"][sender].send,
                  set(USERS), "broadcast")
        for sender in USERS:
            for target in USERS:
                check("user chat", sender, target,
                      lambda t, target=target, s=sender: browsers[s].post(
                          "/userchat/", user=target, message=t),
                      {target}, "user", own_copy=True)
        for sender in USERS:
            check("group chat", sender, "chatusers",
                  lambda t, s=sender: browsers[s].post(
                      "/groupchat/", group="chatusers", message=t),
                  GROUP_MEMBERS, "group")
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": platform.python_version(),
            **{name: version(name) for name in ("Django", "Twisted", "autobahn",
                                                 "txredisapi", "redis")}}


def measure(out: Path) -> int:
    """Run the matrix against a fresh demo and write the JSON result."""
    result: dict[str, Any] = {"versions": versions(), "date": datetime.date.today().isoformat()}
    try:
        with demo_server() as port:
            result["server"] = True
            result["rows"] = run_matrix(port)
    except Exception as e:  # noqa: BLE001 - reported, not hidden: the table says what failed
        result.setdefault("server", False)
        result["error"] = f"{type(e).__name__}: {e}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    ok = result.get("server") and not result.get("error") and all(
        r["ok"] for r in result.get("rows", []))
    print(f"compat {result['versions']['python']} Django {result['versions']['Django']}: "
          f"{'works' if ok else 'FAILS'}")
    return 0 if ok else 1


def _mark(ok: bool) -> str:
    return "✓ Yes" if ok else "✗ No"


def report(directory: Path, target: Path) -> None:
    """docs/compatibility.md from the JSON results in ``directory``."""
    results = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    results.sort(key=lambda r: (tuple(map(int, r["versions"]["python"].split(".")[:2])),
                                r["versions"]["Django"]))
    lines = [
        "# Compatibility",
        "",
        "Generated by `tox -m compat` from real runs: for each pair, the demo chat runs under",
        "`twistd ws4tx` (embedded Redis), admin, john and mary log in, and every row of the",
        "acceptance matrix is sent as a user does it (broadcast over the WebSocket, user and",
        "group chat through the forms); exactly the listed recipients must get each message,",
        "once (the sender of a user chat message also gets its own copy, once, as its page",
        "shows it; a message to yourself lands once).",
        "The pairs are Python 3.11-3.13 (those present on the machine) x Django 5.2, 6.0 and",
        "6.1 where Django supports that Python (Django 6 needs Python 3.12 or newer).",
        "",
        "| Python | Django | Web server works? | Channels work? | Does it work? |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rows = r.get("rows", [])
        channels = bool(rows) and all(row["ok"] for row in rows)
        works = bool(r.get("server")) and channels and not r.get("error")
        lines.append(f"| {r['versions']['python']} | {r['versions']['Django']} | "
                     f"{_mark(bool(r.get('server')))} | {_mark(channels)} | "
                     f"**{_mark(works)}** |")
    lines += ["", "## Details", ""]
    for r in results:
        v = r["versions"]
        lines.append(f"### Python {v['python']}, Django {v['Django']} ({r['date']})")
        lines.append("")
        lines.append(f"Twisted {v['Twisted']}, autobahn {v['autobahn']}, txredisapi "
                     f"{v['txredisapi']}, redis-py {v['redis']}.")
        lines.append("")
        if r.get("error"):
            lines += [f"Error: `{r['error']}`", ""]
        if r.get("rows"):
            lines += ["| channel | from | to | recipients | good behaviour? |",
                      "|---|---|---|---|---|"]
            for row in r["rows"]:
                lines.append(f"| {row['channel']} | {row['from']} | {row['to']} | "
                             f"{', '.join(row['recipients']) or 'nobody'} | "
                             f"{_mark(row['ok'])} |")
            lines.append("")
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target} ({len(results)} environments)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatserver.compat", description=__doc__)
    parser.add_argument("--json", type=Path, help="run the matrix; write the result here")
    parser.add_argument("--report", nargs=2, type=Path, metavar=("DIR", "MARKDOWN"),
                        help="write the report of the JSON results in DIR")
    args = parser.parse_args(argv)
    if args.report:
        report(*args.report)
        return 0
    if args.json:
        return measure(args.json)
    parser.error("give --json FILE or --report DIR FILE")
    return 2


if __name__ == "__main__":
    sys.exit(main())
