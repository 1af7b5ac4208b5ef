#!/usr/bin/env python3
"""The ws4tx benchmark suite: ws4tx side by side with Django Channels, python-socketio and
a bare-Autobahn ceiling, on loopback, each system with its own Redis.

    python bench/run.py                  # everything, 3 runs (about 40 minutes)
    python bench/run.py --smoke          # seconds: ws4tx and the ceiling, tiny, one run
    python bench/run.py --scenarios fanout,idle --systems ws4tx,ceiling --runs 1

It sets up its virtualenvs under bench/.venvs/ (pinned in bench/requirements/; ws4tx
editable from this checkout), pins every server to CPU 0 and the load generator, the
publisher and Redis to CPU 1 (taskset), writes one JSON line per run to
bench/results/<stamp>.jsonl and the tables to bench/results/<stamp>.md. Exit status 0
only when no run failed. See docs/performance.md for the latest numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchlib import report, systems as S, venvs as V  # noqa: E402
from benchlib.procs import REGISTRY, BenchError, raise_nofile  # noqa: E402
from benchlib.suite import SCENARIOS, Suite, run_scenario  # noqa: E402

FULL_SCENARIOS = ["fanout", "maxrate", "idle", "channels", "replay", "history", "recovery",
                  "cookies", "cookie-kill", "shards", "sse", "profile"]
SMOKE_SCENARIOS = ["fanout", "maxrate", "idle", "channels", "replay"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="seconds, not minutes: ws4tx and the ceiling, 50 clients, 2 s, one run, "
                        "this interpreter (no virtualenvs); for CI")
    p.add_argument("--scenarios", type=_names, default=None,
                   help=f"comma-separated, from {','.join(SCENARIOS)} [default: all]")
    p.add_argument("--systems", type=_names, default=None,
                   help=f"comma-separated, from {','.join(S.ORDER)} [default: all]")
    p.add_argument("--runs", type=int, default=None, help="runs of everything [default: 3]")
    p.add_argument("--baseline", metavar="DIR", default=None,
                   help="also run ws4tx from DIR (an export of an earlier commit, e.g. "
                        "`git archive REV | tar -x -C DIR`) as system ws4tx-baseline, just "
                        "before ws4tx in each scenario: before/after in one invocation")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of publishing per fan-out / many-channels phase [default: 10]")
    p.add_argument("--fanout-clients", type=_ints, default=None, help="[default: 100,1000,5000]")
    p.add_argument("--fanout-rates", type=_ints, default=None, help="msg/s [default: 10,100,1000]")
    p.add_argument("--maxrate-clients", type=int, default=None, help="[default: 1000]")
    p.add_argument("--maxrate-rates", type=_ints, default=None,
                   help="the bounded set bisected [default: 1,2,5,10,20,30,50,70,100,150,200,300,500,700,1000]")
    p.add_argument("--probe-duration", type=float, default=None,
                   help="seconds per max-rate probe [default: 5]")
    p.add_argument("--idle-counts", type=_ints, default=None, help="[default: 1000,5000,10000]")
    p.add_argument("--users", type=int, default=None,
                   help="clients of the many-channels scenario [default: 1000]")
    p.add_argument("--users-rate", type=float, default=None,
                   help="messages per second to EACH user channel [default: 1]")
    p.add_argument("--shards-rate", type=float, default=None,
                   help="rounds per second (one message to each user channel) the shards "
                        "scenario pushes the publisher to, against one Redis and three "
                        "[default: 20]")
    p.add_argument("--replay-clients", type=int, default=None, help="[default: 1000]")
    p.add_argument("--recovery-clients", type=int, default=None,
                   help="clients that reconnect at once in the recovery scenario [default: 1000]")
    p.add_argument("--recovery-missed", type=int, default=None,
                   help="messages each of them missed [default: 100]")
    p.add_argument("--storm-clients", type=int, default=None,
                   help="logged-in clients of the cookie storm, each with a session of its "
                        "own [default: 1000]")
    p.add_argument("--kill-rate", type=float, default=None,
                   help="cookie-kill: messages per second published on the clients' broadcast "
                        "channel from node A's kill [default: 2]")
    p.add_argument("--kill-publish", type=float, default=None,
                   help="cookie-kill: for this many seconds [default: 5]")
    p.add_argument("--sse-clients", type=int, default=None,
                   help="idle clients of each transport whose memory the sse scenario "
                        "compares [default: 1000]")
    p.add_argument("--sse-rates", type=_ints, default=None,
                   help="the set the sse scenario bisects for each transport, finer than "
                        "--maxrate-rates where the two meet [default: 50,100,150,200,250,300,"
                        "350,400,450,500,550,600,700,850,1000]")
    p.add_argument("--profile-clients", type=int, default=1000)
    p.add_argument("--profile-rate", type=float, default=100)
    p.add_argument("--settle", type=float, default=None,
                   help="seconds to let a server settle before and after connecting idle "
                        "clients [default: 1]")
    p.add_argument("--message-size", type=int, default=100,
                   help="bytes per benchmark message: past 100 the padding is JSON-like text "
                        "(compressible as application events are) [default: 100]")
    p.add_argument("--concurrency", type=int, default=200,
                   help="handshakes in flight at once [default: 200]")
    p.add_argument("--venvs", choices=("managed", "current"), default=None,
                   help="managed: bench/.venvs (default); current: this interpreter for ws4tx, "
                        "the ceiling and the load generator (default of --smoke)")
    p.add_argument("--generator", choices=("stream", "picows", "asyncio"), default=None,
                   help="the load generator's client: stream (frames counted in each "
                        "socket's byte stream, latency sampled; little CPU per frame), picows "
                        "(one Python call per frame; needs the managed venvs), asyncio (one "
                        "Python call per frame, no dependency) [default: stream; asyncio with "
                        "--venvs current]")
    p.add_argument("--sample-every", type=int, default=10,
                   help="stream generator: latency of 1 frame in N, by sequence number, "
                        "every client a different residue [default: 10]")
    p.add_argument("--refresh", action="store_true", help="rebuild the virtualenvs")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--render", metavar="JSONL",
                   help="only print the tables again from a results file (and its header)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="where the .jsonl, .md and logs go [default: bench/results]")
    a = p.parse_args(argv)
    if a.baseline is not None:
        root = os.path.abspath(a.baseline)
        if not os.path.isfile(os.path.join(root, "ws4tx", "server", "tap.py")):
            p.error(f"--baseline {a.baseline}: no ws4tx checkout there (ws4tx/server/tap.py)")
        S.add_baseline(root)
    smoke = a.smoke
    defaults = {
        "scenarios": SMOKE_SCENARIOS if smoke else FULL_SCENARIOS,
        "systems": ["ceiling", "ws4tx"] if smoke else list(S.ORDER),
        "runs": 1 if smoke else 3,
        "duration": 1.5 if smoke else 10.0,
        "fanout_clients": [50] if smoke else [100, 1000, 5000],
        "fanout_rates": [20] if smoke else [10, 100, 1000],
        "maxrate_clients": 50 if smoke else 1000,
        "maxrate_rates": [20] if smoke else [1, 2, 5, 10, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000],
        "probe_duration": 1.0 if smoke else 5.0,
        "idle_counts": [50] if smoke else [1000, 5000, 10000],
        "users": 50 if smoke else 1000,
        "users_rate": 2.0 if smoke else 1.0,
        "replay_clients": 50 if smoke else 1000,
        "recovery_clients": 50 if smoke else 1000,
        "recovery_missed": 10 if smoke else 100,
        "storm_clients": 50 if smoke else 1000,
        "kill_rate": 5.0 if smoke else 2.0,
        "kill_publish": 1.0 if smoke else 5.0,
        "sse_clients": 50 if smoke else 1000,
        "sse_rates": [20] if smoke else [50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550,
                                         600, 700, 850, 1000],
        "shards_rate": 10.0 if smoke else 20.0,
        "venvs": "current" if smoke else "managed",
        "settle": 0.3 if smoke else 1.0,
    }
    a.systems_defaulted = a.systems is None
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.baseline is not None and S.Ws4txBaseline.name not in a.systems:
        a.systems.append(S.Ws4txBaseline.name)
    if a.generator is None:
        a.generator = "asyncio" if a.venvs == "current" else "stream"
    if a.generator == "picows" and a.venvs == "current":
        p.error("--generator picows needs the managed virtualenvs (not --venvs current or --smoke)")
    if a.sample_every < 1:
        p.error("--sample-every must be at least 1")
    unknown = [s for s in a.systems if s not in S.ALL]
    if unknown:
        p.error(f"unknown system(s) {unknown}; choose from {S.ORDER}")
    unknown = [s for s in a.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if a.runs < 1 or a.runs > 20:
        p.error("--runs must be 1..20")
    return a


def machine() -> dict[str, str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version()}


def busiest_others(limit: int = 5) -> str:
    """The busiest processes that are not the suite's, to tell what else ran."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"],
                             capture_output=True, text=True, timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return "?"
    mine = {os.getpid()}
    rows = []
    for line in out:
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) in mine or parts[2] == "ps":
            continue
        if float(parts[1]) < 1.0:
            break
        rows.append(f"{parts[2]} {parts[1]} %")
        if len(rows) >= limit:
            break
    return ", ".join(rows) or "none above 1 % CPU"


def ws4tx_revision() -> str:
    """The checkout's commit (read-only git), and whether ws4tx's code differs from it."""
    try:
        head = subprocess.run(["git", "-C", V.REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", V.REPO, "status", "--porcelain", "--", "ws4tx",
                                "setup.py"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" with uncommitted changes to ws4tx" if dirty else "")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def render_only(path: str) -> int:
    """Tables again from ``<stamp>.jsonl`` (and the ``<stamp>-header.md`` beside it)."""
    import json

    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    header_path = path[:-len(".jsonl")] + "-header.md"
    header: list[str] = []
    if os.path.exists(header_path):
        with open(header_path) as f:
            header = f.read().rstrip("\n").split("\n")
    print(report.render(records, header), end="")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args.render)
    say = lambda text: print(text, flush=True)  # noqa: E731
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    os.makedirs(args.out, exist_ok=True)
    soft, hard = raise_nofile()
    started = time.monotonic()
    command = "python bench/run.py " + " ".join(shlex.quote(x) for x in argv)
    say(f"bench: {command.strip()}")
    mach = machine()
    revision = ws4tx_revision()
    before = f"{load()}; busiest other processes: {busiest_others()}"
    say(f"bench: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']}; {before}")
    if args.no_pin:
        say("bench: NOT pinned (--no-pin)")
    else:
        say(f"bench: pinned with taskset: servers on CPU {S.SERVER_CPU}; load generator, "
            f"publisher and Redis on CPU {S.LOAD_CPU}")
    say(f"bench: open-files limit {soft} (hard {hard})")

    if "floor-node" in args.systems and args.systems_defaulted and not V.node_available():
        # Asked for by name it is an error (below); by default it is left out, and said so.
        args.systems.remove("floor-node")
        say("bench: no node/npm on PATH: the floor-node system is left out")
    needed = {S.ALL[s].venv for s in args.systems} | {"ws4tx", "loadgen"}
    venvs: dict[str, V.Venv] = {}
    for name in sorted(needed):
        if name == "node":
            venvs[name] = V.ensure_node(args.refresh, say)
        elif args.venvs == "current" and name in ("ws4tx", "loadgen"):
            venvs[name] = V.current(name)
        else:
            venvs[name] = V.ensure(name, args.refresh, say)
    suite = Suite(args, venvs, args.out, stamp, say)
    failures = 0
    interrupted = False
    try:
        for run in range(args.runs):
            say(f"bench: run {run + 1} of {args.runs}")
            for scenario in args.scenarios:
                if scenario == "profile":
                    continue
                for name in S.ORDER:
                    system = S.ALL[name]
                    if name in args.systems and (system.scenarios is None
                                                 or scenario in system.scenarios):
                        run_scenario(suite, scenario, system, run)
        if "profile" in args.scenarios and "ws4tx" in args.systems:
            say("bench: profiling the ws4tx server (not part of the medians)")
            run_scenario(suite, "profile", S.ALL["ws4tx"], 0)
    except KeyboardInterrupt:
        interrupted = True
        say("bench: interrupted; stopping every process it started")
    finally:
        REGISTRY.stop_all()

    after = f"{load()}; busiest other processes: {busiest_others()}"
    versions = {name: {k: v for k, v in venv.freeze().items()
                       if k in ("ws4tx", "twisted", "autobahn", "txredisapi", "redis", "hiredis",
                                "django", "channels", "channels-redis", "channels_redis",
                                "daphne", "python-socketio", "python-engineio", "aiohttp",
                                "picows", "uvloop", "py-spy", "websockets", "node", "ws")}
                for name, venv in venvs.items()}
    redis_version = subprocess.run([suite.redis_bin, "--version"], capture_output=True,
                                   text=True, timeout=30).stdout.strip()
    minutes = (time.monotonic() - started) / 60
    header = [
        f"Made by `{command.strip()}` on {datetime.date.today().isoformat()} "
        f"({minutes:.1f} minutes).",
        "",
        f"- Machine: {mach['nproc']} CPUs, {mach['cpu']}, {mach['memory']} memory, "
        f"Linux {mach['kernel']}, Python {mach['python']}.",
        f"- Before: {before}. After: {after}.",
        ("- Pinned with taskset: each server on CPU 0; the load generator, the publisher and "
         "Redis on CPU 1." if suite.pin else "- Not pinned (--no-pin)."),
        f"- Load generator: {suite.generator}; clients connect {args.concurrency} at a time.",
        f"- ws4tx: this checkout at {revision}.",
        f"- Runs: {args.runs} (tables show medians); {args.duration:g} s of publishing per "
        f"fan-out phase; {args.message_size}-byte messages.",
        f"- Redis: {redis_version.split(' sha=')[0]} (one private server per system and session).",
        "- Versions: " + "; ".join(
            f"{name} venv: " + ", ".join(f"{k} {v}" for k, v in sorted(vs.items()))
            for name, vs in sorted(versions.items())),
        "- Systems:",
        *report.labels(),
    ]
    with open(os.path.join(args.out, f"{stamp}-header.md"), "w") as f:
        f.write("\n".join(header) + "\n")
    text = report.render(suite.records, header)
    md_path = os.path.join(args.out, f"{stamp}.md")
    with open(md_path, "w") as f:
        f.write(text)
    say("")
    say(text)
    ok = sum(1 for r in suite.records if r["status"] == "ok")
    failures = sum(1 for r in suite.records if r["status"] == "error")
    skipped = sum(1 for r in suite.records if r["status"] == "skipped")
    if args.smoke and "fanout" in args.scenarios:
        for name in args.systems:
            if not any(r["system"] == name and r["scenario"] == "fanout" and r["status"] == "ok"
                       and (r["metrics"].get("received") or 0) > 0 for r in suite.records):
                say(f"bench: smoke: no fan-out message reached the clients of {name}")
                failures += 1
    say(f"bench: results in {os.path.relpath(suite.jsonl_path)} and {os.path.relpath(md_path)}; "
        f"logs in {os.path.relpath(suite.logdir)}")
    if interrupted:
        failures += 1
    say(f"{'smoke' if args.smoke else 'bench'}: {ok} passed, {failures} failed, {skipped} skipped")
    return 1 if failures else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        REGISTRY.stop_all()
        print(f"bench: error: {e}", file=sys.stderr)
        print("bench: 0 passed, 1 failed")
        sys.exit(1)
    finally:
        REGISTRY.stop_all()
