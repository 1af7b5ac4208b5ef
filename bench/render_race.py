"""The render race of the page-to-live handoff (issue 24), measured with the real ws4tx.js.

One ws4tx server (``twistd ws4tx``, history on the facilities ``race*`` and ``trim*``), its
own Redis on a free port, a publisher in this process (``ws4tx.api.publish``, the Django
side) sending ``--rate`` messages a second, each its sequence number, to the broadcast
channel of a facility of its own per phase (so a message's sequence number is its offset).
``--pages`` pages are rendered one after the other over ``--render-span`` seconds: each
takes ``ws4tx.api.position`` (what ``{% ws4tx_position %}`` renders) at its render, and
opens ``new WS4TX(url, {positions, getState})`` a random delay later (uniform in
``--delay``); its getState asks this process for the state (``api.position`` again, what a
view of the page's state would return with it) and settles it ``--state-latency`` seconds
later. The pages are one node process (``render_race.mjs``: ws4tx.js from its source, the
``ws`` of js/node_modules, ``npm ci`` in js/ first). The publisher goes on until the last
page has been open a second, then the pages wait (bounded) for the last message.

Two phases:

1. ``render``: a history of ``--history`` messages, more than the longest delay misses:
   every message after a page's rendered position applied exactly once, no getState;
2. ``trimmed``: a history of ``--trim-history`` messages, fewer than the shortest delay
   of ``--trim-delay`` misses: every page is told ``recovered: false`` (``trimmed``),
   calls getState exactly once, applies no message before its state is in place, then
   every message after the state's position exactly once.

Per phase: pages, messages after the rendered positions (summed over the pages), the
messages a page had to apply (after its rendered position, or after its state's when it
fetched one), applied exactly once (and the share), duplicates, gaps, messages at or
before that position applied, verdicts, getState calls (per page), messages applied
before a state was in place, the publish rate reached. The machine is shared: the load
average is printed; say how busy it was with any number.

    python3 bench/render_race.py --pages 100 --rate 200
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import subprocess
import tempfile
import threading
import time
from typing import IO, Any

from ws4tx.server.embedded import EmbeddedRedis, free_port

from benchlib import oneserver

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGES = os.path.join(HERE, "render_race.mjs")
TTL = 600


class _Pages:
    """The node process of the pages: commands in, getState calls answered from a thread
    of their own (``api.position``, as a view would), phase results handed over."""

    def __init__(self, node: str, api: Any) -> None:
        self.api = api
        self.process = subprocess.Popen([node, PAGES], cwd=HERE, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.results: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.facilities: dict[str, str] = {}
        self.state_latency = 0.0
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        with self.lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            answer = json.loads(line)
            if "state" in answer:
                phase, page = answer["state"]["phase"], answer["state"]["page"]
                self.send({"do": "state", "phase": phase, "page": page,
                           "positions": _positions(self.api, self.facilities[phase])})
            elif "result" in answer:
                self.results.put(answer["result"])
        self.results.put(None)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _positions(api: Any, facility: str) -> dict[str, dict[str, Any]]:
    """``api.position`` of the broadcast channel, as ``{% ws4tx_position %}`` renders it."""
    return {channel: {"epoch": p.epoch, "offset": p.offset}
            for channel, p in api.position(facility, broadcast=True).items()}


def _phase(name: str, facility: str, pages: _Pages, api: Any, url: str,
           options: argparse.Namespace, delays: tuple[float, float],
           rng: random.Random) -> dict[str, Any]:
    """Publish at ``options.rate`` while the pages render and connect; their figures."""
    pages.facilities[name] = facility
    warmup = 0.5           # messages before the first render: the rendered offset is > 0
    renders = [warmup + options.render_span * i / max(options.pages - 1, 1)
               for i in range(options.pages)]
    stop_at = renders[-1] + delays[1] + 1.0
    seq = 0
    rendered = 0
    late = 0.0             # the most the publisher fell behind its schedule, in seconds
    mismatched = 0         # publishes whose offset was not their sequence number
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= stop_at:
            break
        due = int(elapsed * options.rate)
        if due > seq:
            late = max(late, elapsed - (seq + 1) / options.rate)
        while seq < due:
            seq += 1
            sent = api.publish(facility, str(seq), broadcast=True)
            offsets = [p.offset for p in (sent.positions or {}).values()]
            mismatched += offsets != [seq]
        while rendered < len(renders) and renders[rendered] <= elapsed:
            pages.send({"do": "page", "phase": name, "page": rendered,
                        "url": f"{url}{facility}?subscribe-broadcast",
                        "positions": _positions(api, facility),
                        "delay": rng.uniform(*delays), "stateLatency": options.state_latency})
            rendered += 1
        time.sleep(0.002)
    publishing = time.monotonic() - started
    pages.send({"do": "end", "phase": name, "last": seq, "timeout": 15})
    result = pages.results.get(timeout=60)
    if result is None:
        raise SystemExit("render_race.mjs ended")
    result.update({
        "published": seq, "publish_rate": round(seq / publishing, 1),
        "publisher_late_max_ms": round(late * 1000, 1),
        "offset_not_sequence": mismatched, "delay_s": list(delays),
    })
    return result


def _wait_subscribed(server: subprocess.Popen[Any], log: str, timeout: float = 60) -> None:
    """Wait (bounded) until the server says its Redis subscriber is connected."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, encoding="utf-8", errors="replace") as f:
            if "Redis subscriber connected" in f.read():
                return
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--render-span", type=float, default=1.0,
                        help="seconds over which the pages are rendered")
    parser.add_argument("--delay", type=float, nargs=2, default=(0.0, 5.0),
                        metavar=("MIN", "MAX"), help="render-to-connect delay, seconds")
    parser.add_argument("--trim-delay", type=float, nargs=2, default=(1.0, 5.0),
                        metavar=("MIN", "MAX"), help="the same in the trimmed phase")
    parser.add_argument("--history", type=int, default=0,
                        help="history of the render phase (default: 2 × rate × longest delay)")
    parser.add_argument("--trim-history", type=int, default=0,
                        help="history of the trimmed phase (default: rate × shortest delay / 4)")
    parser.add_argument("--max-recovery", type=int, default=-1,
                        help="the server's --max-recovery (default: the render phase's history, "
                             "so that the history is what limits a recovery; 0: the server's "
                             "own default, 1000, which 5 s at 200 msg/s reaches)")
    parser.add_argument("--state-latency", type=float, default=0.1,
                        help="seconds from the state's read to its settling in the page")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--phases", default="render,trimmed")
    options = parser.parse_args()
    history = options.history or max(100, int(2 * options.rate * options.delay[1]))
    trim_history = options.trim_history or max(1, int(options.rate * options.trim_delay[0] / 4))
    if history <= 1.2 * options.rate * options.delay[1]:
        parser.error("--history must hold more than the longest delay misses")
    if trim_history >= options.rate * options.trim_delay[0]:
        parser.error("--trim-history must hold less than the shortest --trim-delay misses")
    max_recovery = history if options.max_recovery < 0 else options.max_recovery
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    if not os.path.isdir(os.path.join(ROOT, "js", "node_modules", "ws")):
        raise SystemExit("js/node_modules has no ws: run `npm ci` in js/")

    rules = {"race*": {"size": history, "ttl": TTL}, "trim*": {"size": trim_history, "ttl": TTL}}
    import django
    from django.conf import settings

    settings.configure(WS4TX_HISTORY=rules)
    django.setup()
    from ws4tx import api

    redis = EmbeddedRedis()
    redis.start()
    os.environ["WS4TX_REDIS_URL"] = redis.url
    port = free_port()
    log = os.path.join(tempfile.mkdtemp(prefix="ws4tx-render-race-"), "twistd.log")
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [oneserver.TWISTD, "-n", "--pidfile=", *oneserver.ws4tx_args(port, redis.url),
             *(("--max-recovery", str(max_recovery)) if max_recovery else ()),
             *(a for glob, r in rules.items()
               for a in ("--history", f"{glob}={r['size']}:{r['ttl']}"))],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [ROOT, os.environ.get("PYTHONPATH", "")])},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    pages = None
    try:
        _wait_subscribed(server, log)
        pages = _Pages(node, api)
        rng = random.Random(options.seed)
        url = f"ws://127.0.0.1:{port}/ws/"
        run = f"{os.getpid()}-{int(time.time())}"
        result: dict[str, Any] = {"pages": options.pages, "rate": options.rate,
                                  "history": {"render": history, "trimmed": trim_history},
                                  "state_latency_s": options.state_latency,
                                  "max_recovery": max_recovery or "server default"}
        chosen = options.phases.split(",")
        if "render" in chosen:
            result["render"] = _phase("render", f"race-{run}", pages, api, url, options,
                                      tuple(options.delay), rng)
        if "trimmed" in chosen:
            result["trimmed"] = _phase("trimmed", f"trim-{run}", pages, api, url, options,
                                       tuple(options.trim_delay), rng)
        result["target"] = _target(result)
        result["load_average"] = os.getloadavg()
        result["cpus"] = os.cpu_count()
        print(json.dumps(result, indent=1))
    finally:
        if pages is not None:
            pages.close()
        oneserver.stop(server)
        redis.stop()


def _target(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 24's render race: every message after the rendered position applied exactly
    once; past the history, getState exactly once and nothing applied before its state."""
    met = True
    render = result.get("render")
    if render is not None:
        met = met and (render["pages_that_applied_the_last"] == render["pages"]
                       and render["applied_exactly_once_share"] == 1.0
                       and render["duplicates"] == render["gaps"] == 0
                       and render["applied_at_or_before_base"] == 0
                       and render["recovered_true"] == render["pages"]
                       and render["getstate_calls"] == 0)
    trimmed = result.get("trimmed")
    if trimmed is not None:
        met = met and (trimmed["pages_that_applied_the_last"] == trimmed["pages"]
                       and trimmed["reasons"] == {"trimmed": trimmed["pages"]}
                       and trimmed["pages_by_getstate_calls"] == {"1": trimmed["pages"]}
                       and trimmed["applied_before_state"] == 0
                       and trimmed["applied_exactly_once_share"] == 1.0
                       and trimmed["duplicates"] == trimmed["gaps"] == 0
                       and trimmed["applied_at_or_before_base"] == 0)
    return {"rate": 200, "delay_s": [0, 5],
            "render": "every message after the rendered position applied exactly once, "
                      "no getState",
            "trimmed": "getState exactly once per page, no message applied before its "
                       "state, every message after the state's position exactly once",
            "met": bool(met)}


if __name__ == "__main__":
    main()
