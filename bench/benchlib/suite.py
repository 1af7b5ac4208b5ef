"""Sessions (one system with its own Redis, its publisher and the load generator) and the
scenarios run on them. Every wait is bounded; every process is stopped on the way out."""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import string
import subprocess
import threading
import time
import traceback
from typing import Any, Callable, Optional
from urllib.parse import quote

from benchlib import systems as S
from benchlib.limits import limit_of
from benchlib.procs import (
    BenchError,
    Proc,
    free_port,
    http_json,
    redis_command_calls,
    redis_commands,
    wait_port,
)
from benchlib.venvs import BENCH, Venv

LOADGEN = os.path.join(BENCH, "loadgen.py")
PUBLISHER = os.path.join(BENCH, "publisher.py")

#: Max-rate criteria (the issue's): delivered share and p99.
MAXRATE_DELIVERED = 0.999
MAXRATE_P99_MS = 100.0
#: The history the history and recovery scenarios give the facility (server option and the
#: publisher's setting): the last 1000 messages per channel, for 10 minutes.
HISTORY_OPTION = "bench*=1000:600"
HISTORY_SETTING = '{"bench*": {"size": 1000, "ttl": 600}}'
#: The event clients' subprotocol (ws4tx.js's): they get messages with their positions.
EVENTS = ["ws4tx.v1"]
#: The recovery scenario's targets: all reconnecting clients recovered within this time.
RECOVERY_TARGET_S = 1.5
#: The cookie storm's target (issue 24): the authenticated connect rate at least this
#: share of the anonymous one.
COOKIE_TARGET = 0.8
COOKIE_SITE = "cookie_site"
#: The two-node cookie storm's target (issue 24): 99 % of the killed node's clients back
#: and recovered within this time of the kill.
KILL_TARGET_S = 5.0

#: The history scenario's target: max rate with history at least this share of without.
HISTORY_TARGET = 0.8
#: Issue 23: an idle SSE client costs at most 1.2x a WebSocket client's memory; fan-out to
#: SSE clients reaches at least 0.8x the WebSocket max rate.
SSE_MEMORY_TARGET = 1.2
SSE_RATE_TARGET = 0.8

#: Longest wait for the last messages after publishing stopped: longer than ws4tx's
#: default --max-lag (10 s), so that what a server delivers late is counted as delivered
#: (its latency shows it) and what it drops is missing.
DRAIN_MAX = 15.0


def new_tag() -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(4))


class Suite:
    """What a whole invocation shares: options, venvs, the results file."""

    def __init__(self, args: Any, venvs: dict[str, Venv], out_dir: str, stamp: str,
                 log: Callable[[str], None]) -> None:
        self.args = args
        self.venvs = venvs
        self.out_dir = out_dir
        self.stamp = stamp
        self.log = log
        self.pin = not args.no_pin
        self.logdir = os.path.join(out_dir, f"{stamp}-logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.jsonl_path = os.path.join(out_dir, f"{stamp}.jsonl")
        self.records: list[dict[str, Any]] = []
        self.redis_bin = S.redis_binary(venvs["ws4tx"])
        self.generator = "?"
        self.versions: dict[str, Any] = {}
        self._counter = 0

    def log_path(self, name: str) -> str:
        self._counter += 1
        return os.path.join(self.logdir, f"{self._counter:04d}-{name}.log")

    def record(self, run: int, system: str, scenario: str, params: dict[str, Any],
               status: str, metrics: Optional[dict[str, Any]] = None,
               reason: str = "") -> dict[str, Any]:
        rec = {
            "suite": "ws4tx-bench", "schema": 1, "invocation": self.stamp,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "smoke": bool(self.args.smoke), "run": run, "system": system,
            "scenario": scenario, "params": params, "status": status,
            "pinned": self.pin, "generator": self.generator,
            "metrics": metrics or {},
        }
        if reason:
            rec["reason"] = reason
        self.records.append(rec)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        short = ""
        m = rec["metrics"]
        if status == "ok" and scenario in ("fanout", "channels", "maxrate-probe",
                                           "history-probe", "sse-probe"):
            short = (f"delivered {m.get('delivered_per_s')}/s loss {m.get('loss')} "
                     f"p50 {m.get('p50_ms')} p99 {m.get('p99_ms')} ms "
                     f"server CPU {m.get('server_cpu')} gen CPU {m.get('generator_cpu')}")
        elif status == "ok" and scenario == "idle":
            short = (f"{m.get('rss_per_conn_kb')} KB/conn, {m.get('connect_rate')} connects/s, "
                     f"server CPU {m.get('server_cpu')}, gen CPU {m.get('generator_cpu')}")
        elif status == "ok" and scenario == "replay":
            short = f"{m.get('with_message')}/{m.get('clients')} in {m.get('seconds_to_all')} s"
        elif status == "ok" and scenario == "shards":
            short = (f"published {m.get('published_per_s')}/s delivered "
                     f"{m.get('delivered_per_s')}/s loss {m.get('loss')} p99 {m.get('p99_ms')} ms "
                     f"Redis CPU {m.get('redis_cpu_each')} commands/msg "
                     f"{m.get('redis_commands_per_message')}")
        elif status == "ok" and scenario == "shards-ratio":
            short = " ".join(f"{k} ×{v}" for k, v in m.items())
        elif status == "ok" and scenario == "maxrate":
            short = f"max rate {m.get('max_rate')} msg/s"
        elif status == "ok" and scenario == "sse-idle":
            short = (f"{m.get('transport')}: {m.get('rss_per_conn_kb')} KB/client, "
                     f"{m.get('connect_rate')} connects/s, server CPU {m.get('server_cpu')}, "
                     f"gen CPU {m.get('generator_cpu')} (limit: {m.get('limit')})")
        elif status == "ok" and scenario == "sse":
            short = (f"memory SSE/WebSocket {m.get('kb_per_client_sse')}/"
                     f"{m.get('kb_per_client_websocket')} KB = {m.get('memory_ratio')}×; max "
                     f"rate {m.get('max_rate_sse')}/{m.get('max_rate_websocket')} msg/s = "
                     f"{m.get('rate_ratio')}×; server CPU per event/frame at "
                     f"{m.get('cpu_per_frame_rate')} msg/s {m.get('cpu_per_frame_ratio')}×")
        elif status == "ok" and scenario == "history":
            short = (f"max rate {m.get('max_rate_off')} msg/s without history, "
                     f"{m.get('max_rate_on')} with: {m.get('ratio')}×")
        elif scenario == "recovery" and m:
            short = (f"{m.get('complete_clients')}/{m.get('clients')} got all "
                     f"{m.get('missed')} missed, told true {m.get('recovered_true')}, in "
                     f"{m.get('seconds_to_all_recovered')} s; "
                     f"{m.get('redis_commands_sent_per_client')} Redis commands sent per "
                     f"client")
        elif scenario in ("cookies-phase", "cookie-kill-phase") and m:
            short = (f"{m.get('connected')}/{m.get('clients')} at {m.get('connects_per_s')}/s, "
                     f"p99 {m.get('p99_ms')} ms, {m.get('refused_503')} 503s, "
                     f"{m.get('db_queries')} SQL, server CPU {m.get('server_cpu')} "
                     f"gen CPU {m.get('generator_cpu')} (limit: {m.get('limit')})")
        elif status == "ok" and scenario == "cookies":
            short = (f"resume/cookies connects ×{m.get('resume_vs_cookies_connects')} p99 "
                     f"×{m.get('resume_vs_cookies_p99')}; cookies/anonymous "
                     f"×{m.get('cookies_vs_anonymous_connects')}; SQL {m.get('db_queries')}")
        elif scenario == "cookie-kill" and m:
            short = (f"{m.get('back_and_recovered_share')} of A's clients back and recovered "
                     f"within {m.get('target_s')} s (p50 {m.get('p50_back_ms')}, p99 "
                     f"{m.get('p99_back_ms')} ms); {m.get('complete_clients')}/"
                     f"{m.get('clients')} got every message; {m.get('db_queries')} SQL on B; "
                     f"×{m.get('vs_anonymous_connects')} the anonymous connect rate "
                     f"(limit: {m.get('limit')})")
        elif status == "ok" and scenario.startswith("profile"):
            short = f"{m.get('samples')} samples"
        self.log(f"  [{system} run {run + 1}] {scenario} {params} {status} {reason} {short}".rstrip())
        return rec


class Session:
    """One running system: its Redis, its server (core 0), its publisher and a load
    generator (core 1)."""

    def __init__(self, suite: Suite, system: S.System, users: bool = False,
                 history: bool = False, protocols: tuple[str, ...] = (),
                 redis_count: int = 1, cluster: bool = False,
                 server_extra: tuple[str, ...] = (),
                 server_env: Optional[dict[str, str]] = None,
                 kind: Optional[str] = None) -> None:
        self.suite = suite
        #: The clients' transport, when not the system's own (ws4tx: "sse").
        self.kind = kind or system.kind
        #: More options and environment for the server (ws4tx: a Django site of its own).
        self.server_extra = server_extra
        self.server_env = server_env or {}
        self.system = system
        self.users = users
        #: ws4tx only: the facility keeps a history (server and publisher).
        self.history = history
        #: Subprotocols the clients ask for (ws4tx.v1: event clients).
        self.protocols = protocols
        #: Redis servers to start (more than one: ws4tx shards its channels over them).
        self.redis_count = redis_count
        #: Whether the servers form one Redis Cluster (ws4tx: redis+cluster://).
        self.cluster = cluster
        self.redis_procs: list[Proc] = []
        self.redis_ports: list[int] = []
        self.facility = "bench" + new_tag()
        self.procs: list[Proc] = []
        self.redis: Optional[Proc] = None
        self.server: Optional[Proc] = None
        self.pub: Optional[Proc] = None
        self.lg: Optional[Proc] = None
        self.clients = 0

    def __enter__(self) -> Session:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        suite, system = self.suite, self.system
        urls = []
        if system.needs_redis:
            for i in range(self.redis_count):
                name = system.name + "-redis" + (f"{i + 1}" if self.redis_count > 1 else "")
                proc, rport = S.start_redis(suite.redis_bin, suite.pin, suite.log_path(name),
                                            cluster=self.cluster)
                self.procs.append(proc)
                self.redis_procs.append(proc)
                self.redis_ports.append(rport)
                urls.append(f"redis://127.0.0.1:{rport}/0")
            self.redis = self.redis_procs[0]
            if self.cluster:
                S.create_cluster(suite.redis_bin, self.redis_ports)
                urls = ["redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.redis_ports)]
        # several: separated by spaces, as --redis (repeated) and WS4TX_REDIS_URL take them
        redis_url = self.redis_url = " ".join(urls)
        self.port, aux = free_port(), free_port()
        venv = suite.venvs[system.venv]
        argv, env, cwd = self._server_argv(self.port, aux)
        self.rport = rport if system.needs_redis else 0
        self.server_command = system.describe_command(argv)
        self.server = self._start_server(argv, env, cwd)
        system.ready(self.server, self.port)
        if not system.needs_redis:
            wait_port(aux, self.server)
        self.pub = Proc("publisher", [venv.python, PUBLISHER]
                        + system.publisher_args(redis_url, aux, self.facility)
                        + ["--size", str(suite.args.message_size)],
                        cpu=S.LOAD_CPU, pin=suite.pin,
                        log_path=suite.log_path(system.name + "-publisher"),
                        env={"PYTHONPATH": S.SERVERS, "BENCH_REDIS_URL": redis_url,
                             "BENCH_HISTORY": HISTORY_SETTING if self.history else "",
                             **system.env},
                        cwd=S.SERVERS, json_io=True)
        self.procs.append(self.pub)
        hello = self.pub.request({"cmd": "hello"}, 120)
        suite.versions.setdefault(system.name, hello.get("versions", {}))
        self.lg = Proc("loadgen", [suite.venvs["loadgen"].python, LOADGEN,
                                   "--client", suite.args.generator,
                                   "--sample-every", str(suite.args.sample_every)],
                       cpu=S.LOAD_CPU, pin=suite.pin,
                       log_path=suite.log_path(system.name + "-loadgen"), json_io=True)
        self.procs.append(self.lg)
        suite.generator = self.lg.request({"cmd": "hello"}, 60)["client"]

    def _start_server(self, argv: list[str], env: dict[str, str], cwd: Optional[str]) -> Proc:
        system = self.system
        proc = Proc(system.name, argv, cpu=system.server_cpus, pin=self.suite.pin,
                    log_path=self.suite.log_path(system.name + "-server"), env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def _server_argv(self, port: int, aux: int) -> tuple[list[str], dict[str, str], Optional[str]]:
        system = self.system
        argv, env, cwd = system.server_argv(self.suite.venvs[system.venv], port,
                                            self.redis_url, self.users, aux)
        argv += list(self.server_extra)
        if self.history:
            argv += ["--history", HISTORY_OPTION]
        return argv, {**system.env, **env, **self.server_env}, cwd

    def add_server(self) -> tuple[Proc, int]:
        """One more server of the system (ws4tx: a second node) on the session's Redis,
        with the same options and environment: its process and port."""
        port = free_port()
        proc = self._start_server(*self._server_argv(port, free_port()))
        self.system.ready(proc, port)
        return proc, port

    def stop(self) -> None:
        if self.lg is not None and self.lg.alive() and self.clients:
            try:
                self.lg.request({"cmd": "close", "timeout": 5}, 30)
            except BenchError:
                pass
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []

    # clients

    def connect(self, urls: list[str]) -> dict[str, Any]:
        args = self.suite.args
        deadline = 60 + len(urls) / 50
        answer = self.lg.request({"cmd": "connect", "urls": urls, "kind": self.kind,
                                  "deflate": self.system.deflate,
                                  "protocols": list(self.protocols),
                                  "concurrency": args.concurrency, "timeout": 30,
                                  "deadline": deadline}, deadline + 60)
        self.clients += answer["connected"]
        return answer

    def broadcast_urls(self, n: int) -> list[str]:
        return [self.system.broadcast_url(self.port, self.facility)] * n

    def broadcast_targets(self) -> list[str]:
        return [self.system.broadcast_target(self.facility)]

    # measuring

    def snapshot(self) -> dict[str, float]:
        snap = {"t": time.monotonic(), "server": self.server.cpu_seconds(),
                "server_wait": self.server.runqueue_wait_seconds(),
                "loadgen_wait": self.lg.runqueue_wait_seconds(),
                "loadgen": self.lg.cpu_seconds(), "publisher": self.pub.cpu_seconds(),
                "redis": sum(p.cpu_seconds() for p in self.redis_procs)}
        for i, proc in enumerate(self.redis_procs):
            snap[f"redis{i}"] = proc.cpu_seconds()
        return snap

    def redis_calls(self) -> Optional[int]:
        """Commands run by all the session's Redis servers so far."""
        calls = [redis_command_calls(port) for port in self.redis_ports]
        return None if not calls or None in calls else sum(c or 0 for c in calls)

    def counters(self) -> Optional[dict[str, int]]:
        """The server's own counters, if it has any (ws4tx)."""
        return self.system.counters(self.port)

    def warm(self, targets: list[str], timeout: float = 15.0) -> dict[str, Any]:
        """Publish probes until every client got one (bounded), so that the measured phase
        starts with every subscription in place."""
        tag = new_tag()
        phase = self.lg.request({"cmd": "phase", "tag": tag}, 30)
        clients = phase["clients"]
        start = time.monotonic()
        seq = 0
        with_any = 0
        while time.monotonic() - start < timeout:
            self.pub.request({"cmd": "once", "tag": tag, "seq": seq, "targets": targets}, 120)
            seq += 1
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                with_any = self.lg.request({"cmd": "progress"}, 30)["with_any"]
                if with_any >= clients:
                    return {"warm": True, "warm_seconds": round(time.monotonic() - start, 3)}
                time.sleep(0.05)
        return {"warm": False, "warm_clients": with_any, "warm_seconds": round(timeout, 3)}

    def measure(self, rate: float, duration: float, targets: list[str],
                drain_max: float = DRAIN_MAX) -> dict[str, Any]:
        tag = new_tag()
        clients = self.lg.request({"cmd": "phase", "tag": tag}, 30)["clients"]
        c0 = self.counters()
        r0 = self.redis_calls()
        s0 = self.snapshot()
        pub = self.pub.request({"cmd": "run", "tag": tag, "rate": rate, "duration": duration,
                                "targets": targets}, duration * 3 + 60)
        expected_total = pub["rounds"] * clients
        t_end = time.monotonic()
        last, last_change = -1, t_end
        while True:
            received = self.lg.request({"cmd": "progress"}, 30)["received"]
            now = time.monotonic()
            if received >= expected_total:
                break
            if received != last:
                last, last_change = received, now
            elif now - last_change >= 1.0 and not self._serverBehind():
                break
            if now - t_end >= drain_max:
                break
            time.sleep(0.1)
        s1 = self.snapshot()
        r1 = self.redis_calls()
        rss = self.server.rss_kb()
        stats = self.lg.request({"cmd": "stats", "expected": pub["rounds"]}, 180)
        c1 = self.counters()
        wall = s1["t"] - s0["t"]
        received = stats["received"]
        m: dict[str, Any] = {
            "clients": clients,
            "publish_rate": pub["rate"], "published_rounds": pub["rounds"],
            "published_messages": pub["messages"], "publish_seconds": pub["seconds"],
            "publisher_max_lag_ms": pub["max_lag_ms"],
            "offered_per_s": round(pub["rounds"] * clients / pub["seconds"], 1),
            "delivered_per_s": round(received / pub["seconds"], 1),
            "window_s": round(wall, 3),
            "server_cpu": round((s1["server"] - s0["server"]) / wall, 3),
            "server_cpu_us_per_frame": round((s1["server"] - s0["server"]) / received * 1e6, 2)
            if received else None,
            "server_rss_mb": round(rss / 1024, 1),
            # Share of the window the server was runnable but waited for its CPU (other
            # processes on its core): high values mean a disturbed measurement.
            "server_cpu_wait": round((s1["server_wait"] - s0["server_wait"]) / wall, 3),
            "generator_cpu_wait": round((s1["loadgen_wait"] - s0["loadgen_wait"]) / wall, 3),
            "generator_cpu": round((s1["loadgen"] - s0["loadgen"]) / wall, 3),
            "generator_cpu_us_per_frame": round((s1["loadgen"] - s0["loadgen"]) / received
                                                * 1e6, 2) if received else None,
            "publisher_cpu": round((s1["publisher"] - s0["publisher"]) / wall, 3),
            "redis_cpu": round((s1["redis"] - s0["redis"]) / wall, 3),
            # What shares the generator's core when pinned: it, the publisher, Redis.
            "load_core_cpu": round((s1["loadgen"] - s0["loadgen"] + s1["publisher"]
                                    - s0["publisher"] + s1["redis"] - s0["redis"]) / wall, 3)
            if self.suite.pin else None,
            "redis_cpu_each": [round((s1[f"redis{i}"] - s0[f"redis{i}"]) / wall, 3)
                               for i in range(len(self.redis_procs))],
            # every command of every Redis (the servers' subscribers' included), per
            # message the publisher sent
            "redis_commands_per_message": round((r1 - r0) / pub["messages"], 2)
            if r0 is not None and r1 is not None and pub["messages"] else None,
        }
        for key in ("received", "expected_total", "lost", "loss", "lost_open", "lost_closed",
                    "complete_clients", "duplicates", "out_of_order", "closed_by_server",
                    "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "latency_samples",
                    "latency_capped", "open", "wire_bytes"):
            m[key] = stats.get(key)
        if c0 is not None and c1 is not None:
            # What the server says it dropped: frames of messages it fell too far behind
            # on, and clients it closed as too slow.
            m["server_lagged_frames"] = c1.get("lagged_frames", 0) - c0.get("lagged_frames", 0)
            m["server_slow_drops"] = c1.get("slow_consumers", 0) - c0.get("slow_consumers", 0)
        m["silent_loss"] = (stats.get("lost_open") or 0) > (m.get("server_lagged_frames") or 0)
        m["latency_sampled_every"] = stats.get("latency_sampled_every", 1)
        m["limit"] = limit_of(m["server_cpu"], m["generator_cpu"], m["load_core_cpu"],
                              S.cores(self.system.server_cpus), m["server_cpu_wait"],
                              m["generator_cpu_wait"])
        return m

    def _serverBehind(self) -> bool:
        """Whether the server says messages still wait in its fan-out backlog."""
        counters = self.counters()
        return bool(counters and counters.get("backlog"))


def healthy(m: dict[str, Any]) -> bool:
    """No backlog left behind: (almost) everything arrived, and in time."""
    return (m.get("loss") or 0) < 0.01 and (m.get("p99_ms") or 0) < 1000


def maxrate_pass(m: dict[str, Any], rate: float) -> tuple[bool, str]:
    delivered = 1 - (m.get("loss") or 0)
    p99 = m.get("p99_ms")
    if m.get("publish_rate", 0) < 0.97 * rate:
        return False, f"publisher reached only {m.get('publish_rate')} msg/s"
    if delivered < MAXRATE_DELIVERED:
        return False, f"delivered {delivered:.4%}"
    if p99 is None or p99 >= MAXRATE_P99_MS:
        return False, f"p99 {p99} ms"
    return True, f"delivered {delivered:.4%}, p99 {p99} ms"


# scenarios ------------------------------------------------------------------------------

def scenario_fanout(suite: Suite, system: S.System, run: int) -> None:
    a = suite.args
    saturated_at: Optional[tuple[int, int]] = None
    for n in sorted(a.fanout_clients):
        rates = sorted(a.fanout_rates)
        if saturated_at is not None and saturated_at[1] == rates[0]:
            # Already saturated at the lowest rate with fewer clients: more cannot be better.
            for r in rates:
                suite.record(run, system.name, "fanout",
                             {"clients": n, "rate": r, "duration": a.duration}, "skipped",
                             reason=f"saturated with {saturated_at[0]:,} clients at {rates[0]} msg/s")
            continue
        i = 0
        while i < len(rates):
            with Session(suite, system) as s:
                conn = s.connect(s.broadcast_urls(n))
                if conn["connected"] < n:
                    suite.log(f"  [{system.name}] only {conn['connected']}/{n} connected: "
                              f"{conn['errors']}")
                if not conn["connected"]:
                    for r in rates[i:]:
                        suite.record(run, system.name, "fanout", {"clients": n, "rate": r},
                                     "error", reason=f"no client connected: {conn['errors']}")
                    break
                while i < len(rates):
                    r = rates[i]
                    params = {"clients": n, "rate": r, "duration": a.duration}
                    warm = s.warm(s.broadcast_targets())
                    m = s.measure(r, a.duration, s.broadcast_targets())
                    m.update(warm)
                    m["connected"] = conn["connected"]
                    suite.record(run, system.name, "fanout", params, "ok", m)
                    i += 1
                    if not healthy(m):
                        saturated_at = (n, r)
                        # Higher rates can only be worse: skip them (and their backlog).
                        for r2 in rates[i:]:
                            suite.record(run, system.name, "fanout",
                                         {"clients": n, "rate": r2, "duration": a.duration},
                                         "skipped",
                                         reason=f"saturated at {r} msg/s ({m.get('loss'):.1%} "
                                                f"lost, p99 {m.get('p99_ms')} ms)")
                        i = len(rates)
                        break


def scenario_maxrate(suite: Suite, system: S.System, run: int) -> None:
    a = suite.args
    rates = sorted(a.maxrate_rates)
    n = a.maxrate_clients
    best, probes = _bisect(suite, system, run, rates, n)
    lo = rates.index(best) if best is not None else -1
    suite.record(run, system.name, "maxrate", {"clients": n}, "ok", {
        "max_rate": best,
        "max_frames_per_s": best * n if best else None,
        "below_lowest": lo < 0, "lowest_tried": rates[0], "probes": probes,
        "generator_cpu_max": max((p["generator_cpu"] or 0) for p in probes) if probes else None,
    })


def _bisect(suite: Suite, system: S.System, run: int, rates: list[int], n: int,
            **session: Any) -> tuple[Optional[int], list[dict[str, Any]]]:
    """The highest of ``rates`` that passes (:func:`maxrate_pass`) with ``n`` clients, by
    bisection, on sessions made with ``session`` (their probes recorded); and the probes."""
    a = suite.args
    extra = {k: v for k, v in session.items() if k in ("history", "kind")}
    scenario = ("history-probe" if "history" in extra
                else "sse-probe" if "kind" in extra else "maxrate-probe")
    lo, hi = -1, len(rates)
    probes: list[dict[str, Any]] = []
    live: Optional[Session] = None
    try:
        for _ in range(len(rates)):  # bounded: bisection needs log2(len) probes
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            rate = rates[mid]
            if live is None:
                live = Session(suite, system, **session).__enter__()
                conn = live.connect(live.broadcast_urls(n))
                if conn["connected"] < n:
                    raise BenchError(f"only {conn['connected']}/{n} clients connected: "
                                     f"{conn['errors']}")
            duration = max(a.probe_duration, 10.0 / rate)
            live.warm(live.broadcast_targets())
            m = live.measure(rate, duration, live.broadcast_targets())
            ok, why = maxrate_pass(m, rate)
            m["pass"] = ok
            m["why"] = why
            suite.record(run, system.name, scenario,
                         {"clients": n, "rate": rate, "duration": duration, **extra}, "ok", m)
            probes.append({"rate": rate, "pass": ok, "why": why,
                           "p99_ms": m.get("p99_ms"), "loss": m.get("loss"),
                           "server_cpu": m.get("server_cpu"),
                           "server_cpu_us_per_frame": m.get("server_cpu_us_per_frame"),
                           "server_cpu_wait": m.get("server_cpu_wait"),
                           "generator_cpu": m.get("generator_cpu"),
                           "load_core_cpu": m.get("load_core_cpu"),
                           "limit": m.get("limit")})
            if ok:
                lo = mid
            else:
                hi = mid
                live.stop()  # a fresh server after a failed (possibly backlogged) probe
                live = None
    finally:
        if live is not None:
            live.stop()
    return (rates[lo] if lo >= 0 else None), probes


def scenario_history(suite: Suite, system: S.System, run: int) -> None:
    """The cost of history: the max rate (as in ``maxrate``) to event clients (ws4tx.v1,
    which get each message with its position when there is a history) without and with
    ``--history`` on the facility, in one invocation, and their ratio."""
    a = suite.args
    if system.name != "ws4tx":
        suite.record(run, system.name, "history", {}, "skipped", reason="ws4tx only")
        return
    rates = sorted(a.maxrate_rates)
    n = a.maxrate_clients
    off, probes_off = _bisect(suite, system, run, rates, n, history=False,
                              protocols=tuple(EVENTS))
    on, probes_on = _bisect(suite, system, run, rates, n, history=True,
                            protocols=tuple(EVENTS))
    ratio = round(on / off, 3) if on and off else None
    suite.record(run, system.name, "history", {"clients": n}, "ok", {
        "max_rate_off": off, "max_rate_on": on, "ratio": ratio,
        "target": HISTORY_TARGET, "pass": ratio is not None and ratio >= HISTORY_TARGET,
        "probes_off": probes_off, "probes_on": probes_on,
    })


def scenario_recovery(suite: Suite, system: S.System, run: int) -> None:
    """N event clients of a facility with history go away, ``--recovery-missed`` messages
    are published, and they all come back at once with their position (``recover=``, as
    ws4tx.js sends it): the time from the first reconnect until every client got every
    missed message and ``ws4tx.recovered`` true, and the Redis commands per client."""
    a = suite.args
    n = a.recovery_clients
    missed = a.recovery_missed
    if system.name != "ws4tx":
        suite.record(run, system.name, "recovery", {}, "skipped", reason="ws4tx only")
        return
    with Session(suite, system, history=True, protocols=tuple(EVENTS)) as s:
        conn = s.connect(s.broadcast_urls(n))
        if conn["connected"] < n:
            raise BenchError(f"only {conn['connected']}/{n} clients connected: {conn['errors']}")
        warm = s.warm(s.broadcast_targets())
        position = s.pub.request({"cmd": "position"}, 60)
        s.lg.request({"cmd": "close", "timeout": 10}, 60)
        s.clients = 0
        tag = new_tag()
        s.lg.request({"cmd": "phase", "tag": tag}, 30)
        for seq in range(missed):
            s.pub.request({"cmd": "once", "tag": tag, "seq": seq,
                           "targets": s.broadcast_targets()}, 60)
        channel = f"ws4tx:broadcast:{s.facility}"
        recover = quote(f"{channel}:{position['epoch']}:{position['offset']}", safe="")
        url = s.system.broadcast_url(s.port, s.facility) + f"&recover={recover}"
        commands_before = redis_commands(s.rport) or {}
        back = s.connect([url] * n)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = s.lg.request({"cmd": "stats", "expected": missed, "recount": True}, 60)
            if stats["recovered_told"] >= back["connected"]:
                break
            time.sleep(0.05)
        commands = {k: v - commands_before.get(k, 0)
                    for k, v in (redis_commands(s.rport) or {}).items()
                    if v - commands_before.get(k, 0)}
        seconds = stats["recovered_after_connect_start_s"]
        complete = stats["complete_clients"]
        ok = (complete == n and stats["recovered_true"] == n and not stats["duplicates"]
              and not stats["out_of_order"])
        m = {"clients": n, "missed": missed, "reconnected": back["connected"],
             "connect_seconds": back["seconds"], "seconds_to_all_recovered": seconds,
             "complete_clients": complete, "recovered_true": stats["recovered_true"],
             "duplicates": stats["duplicates"], "out_of_order": stats["out_of_order"],
             # Run by Redis, the scripts' own commands included (INFO counts those too);
             # sent: what the server wrote, a client's together (one round trip).
             "redis_commands": commands,
             "redis_commands_sent_per_client": round(sum(
                 commands.get(c, 0) for c in ("evalsha", "eval", "get", "mget")) / n, 2),
             "target_s": RECOVERY_TARGET_S,
             "pass": ok and seconds is not None and seconds <= RECOVERY_TARGET_S,
             "concurrency": a.concurrency, **warm}
        suite.record(run, system.name, "recovery", {"clients": n, "missed": missed},
                     "ok" if ok else "error", m,
                     reason="" if ok else f"{n - complete} clients incomplete, "
                                          f"{n - stats['recovered_true']} not told true")


def _cookie_site(suite: Suite, n: int, run: int) -> tuple[list[str], dict[str, str],
                                                           tuple[str, ...]]:
    """A fresh database of ``servers/cookie_site.py`` with ``n`` logged-in users: their
    session keys, and the server environment and options that serve that site."""
    db = os.path.join(suite.logdir, f"cookie-site-{run}.sqlite3")
    env = {"PYTHONPATH": S.SERVERS, "BENCH_COOKIE_DB": db,
           "DJANGO_SETTINGS_MODULE": COOKIE_SITE}
    with open(suite.log_path("cookie-site-prepare"), "ab") as log:
        done = subprocess.run([suite.venvs["ws4tx"].python,
                               os.path.join(S.SERVERS, COOKIE_SITE + ".py"), "prepare", str(n)],
                              cwd=S.SERVERS, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=log, timeout=600, check=False)
    if done.returncode:
        raise BenchError(f"{COOKIE_SITE}.py prepare failed; see {log.name}")
    return (json.loads(done.stdout), env,
            ("--django-settings", COOKIE_SITE, "--wsgi", COOKIE_SITE + ".app"))


def _storm(s: Session, clients: list[dict[str, Any]], session: bool,
           start: Optional[Callable[[], dict[str, Any]]] = None,
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The load generator's ``storm`` of ``clients`` on the session's server (``s.server``,
    ``s.port``), right after ``start`` (which gives more of the command's options): its
    answer, and the phase's figures: connects/s, connect times, 503s, the SQL statements
    and database connections that server ran (its ``/count``), its CPU and the
    generator's, and the limit."""
    a = s.suite.args
    n = len(clients)
    q0, s0 = http_json(s.port, "/count", timeout=10.0), s.snapshot()
    extra = start() if start is not None else {}
    got = s.lg.request({"cmd": "storm", "clients": clients, "session": session,
                        "protocols": EVENTS, "concurrency": a.concurrency,
                        "timeout": 30, "deadline": 60 + n / 20, **extra}, 120 + n / 10)
    q1, s1 = http_json(s.port, "/count", timeout=10.0), s.snapshot()
    dt = max(s1["t"] - s0["t"], 1e-6)
    server_cpu = (s1["server"] - s0["server"]) / dt
    gen_cpu = (s1["loadgen"] - s0["loadgen"]) / dt
    load_core = (s1["loadgen"] + s1["redis"] + s1["publisher"] - s0["loadgen"]
                 - s0["redis"] - s0["publisher"]) / dt
    queries = (q1["queries"] - q0["queries"]) if q0 and q1 else None
    m = {k: got[k] for k in ("connected", "failed", "seconds", "connects_per_s",
                             "refused_503", "p50_ms", "p99_ms", "max_ms", "errors")}
    m.update({
        "clients": n, "db_queries": queries,
        "db_queries_per_client": round(queries / n, 2) if queries is not None else None,
        "db_connections": (q1["connections"] - q0["connections"]) if q0 and q1 else None,
        "server_cpu": round(server_cpu, 3), "generator_cpu": round(gen_cpu, 3),
        "load_core_cpu": round(load_core, 3),
        # what a connect cost the server, whatever else the machine ran
        "server_cpu_ms_per_connect": round((s1["server"] - s0["server"]) * 1000 / n, 3)
        if n else None,
        "server_cpu_wait": round((s1["server_wait"] - s0["server_wait"]) / dt, 3),
        "generator_cpu_wait": round((s1["loadgen_wait"] - s0["loadgen_wait"]) / dt, 3),
        "concurrency": a.concurrency})
    m["limit"] = limit_of(server_cpu, gen_cpu, load_core, server_wait=m["server_cpu_wait"],
                          generator_wait=m["generator_cpu_wait"])
    return got, m


def _record_phase(suite: Suite, system: S.System, run: int, name: str,
                  m: dict[str, Any], scenario: str = "cookies-phase") -> None:
    n, ok = m["clients"], m["connected"] == m["clients"]
    suite.record(run, system.name, scenario, {"phase": name, "clients": n},
                 "ok" if ok else "error", m,
                 reason="" if ok else f"{n - m['connected']} clients failed: {m['errors']}")


def scenario_cookies(suite: Suite, system: S.System, run: int) -> None:
    """A reconnect storm of logged-in users: ``--storm-clients`` event clients connect at
    once (``--concurrency`` handshakes in flight, a 503 tried again after its Retry-After)
    three times on one server with a Django site of its own (``servers/cookie_site.py``:
    sessions and users in SQLite): anonymous, then each with its session cookie (which asks
    for a resume token), then each with its resume token. Per phase: connects/s, p50/p99
    connect time, 503s, the SQL statements and database connections the server ran, its
    CPU and the load generator's, and which was the limit; then the ratios."""
    n = suite.args.storm_clients
    if system.name != "ws4tx":
        suite.record(run, system.name, "cookies", {}, "skipped", reason="ws4tx only")
        return
    keys, env, extra = _cookie_site(suite, n, run)
    with Session(suite, system, protocols=tuple(EVENTS), server_env=env,
                 server_extra=extra) as s:
        url = (f"ws://127.0.0.1:{s.port}/ws/{s.facility}?subscribe-broadcast"
               "&subscribe-user&subscribe-group&resume=")
        cookie = "sessionid="
        anonymous = [{"url": url} for _ in keys]
        cookies = [{"url": url, "headers": {"Cookie": cookie + k}} for k in keys]
        phases: dict[str, dict[str, Any]] = {}

        def storm(name: str, clients: list[dict[str, Any]], session: bool) -> dict[str, Any]:
            got, phases[name] = _storm(s, clients, session)
            s.lg.request({"cmd": "close", "timeout": 10}, 60)
            _record_phase(suite, system, run, name, phases[name])
            return got

        storm("anonymous", anonymous, False)
        tokens = storm("cookies", cookies, True)["tokens"] or []
        resumed = [{"url": url + quote(t, safe=""), "headers": {"Cookie": cookie + k}}
                   for t, k in zip(tokens, keys, strict=True) if t]
        if len(resumed) < n:
            raise BenchError(f"only {len(resumed)}/{n} clients got a resume token")
        storm("resume", resumed, False)

    def ratio(key: str, top: str, bottom: str) -> Optional[float]:
        x, y = phases[top].get(key), phases[bottom].get(key)
        return round(x / y, 3) if x is not None and y else None

    rate_ratio = ratio("connects_per_s", "cookies", "anonymous")
    suite.record(run, system.name, "cookies", {"clients": n}, "ok", {
        "clients": n,
        "resume_vs_cookies_connects": ratio("connects_per_s", "resume", "cookies"),
        "resume_vs_cookies_p99": ratio("p99_ms", "resume", "cookies"),
        "cookies_vs_anonymous_connects": rate_ratio,
        "resume_vs_anonymous_connects": ratio("connects_per_s", "resume", "anonymous"),
        "db_queries": {k: v["db_queries"] for k, v in phases.items()},
        "limits": {k: v["limit"] for k, v in phases.items()},
        "resume_db_queries_share": round((phases["resume"]["db_queries"] or 0) / n, 4),
        "target": COOKIE_TARGET,
        "pass": bool(rate_ratio is not None and rate_ratio >= COOKIE_TARGET
                     and phases["resume"]["db_queries"] == 0),
    })


def scenario_cookie_kill(suite: Suite, system: S.System, run: int) -> None:
    """Issue 24's storm: ``--storm-clients`` users log in with their session cookies on two
    ws4tx nodes (A and B: one Redis, the Django site of ``servers/cookie_site.py``, one
    SECRET_KEY), half on each, each asking for a resume token; node A is SIGKILLed and
    its clients come back at once to B with their cookie, resume token and the position
    of the broadcast channel (a facility with history) they had (``recover=``), as ws4tx.js
    would, while the publisher publishes ``--kill-rate`` messages per second on that
    channel for ``--kill-publish`` seconds from the kill. Measured on B: its SQL
    statements during the storm, the share back (101) and told recovered within
    ``KILL_TARGET_S`` of the kill, whether every client of either node got every message
    of the storm once and in order, p50/p99 time from the kill to back, connects/s, the
    limit; and, before the logins, an anonymous storm of as many clients to B (the
    same URL and ``recover=``, no cookie), whose connect rate the reconnect's is a ratio
    of (target ≥ 0.8)."""
    a = suite.args
    n = a.storm_clients
    if system.name != "ws4tx":
        suite.record(run, system.name, "cookie-kill", {}, "skipped", reason="ws4tx only")
        return
    keys, env, extra = _cookie_site(suite, n, run)
    with Session(suite, system, history=True, protocols=tuple(EVENTS), server_env=env,
                 server_extra=extra) as s:
        node_a, port_a = s.add_server()  # s.server, s.port: node B, the one that lives
        query = "?subscribe-broadcast&subscribe-user&subscribe-group&resume="
        path = f"/ws/{s.facility}{query}"
        url_a, url_b = f"ws://127.0.0.1:{port_a}{path}", f"ws://127.0.0.1:{s.port}{path}"
        cookie = "sessionid="
        targets = s.broadcast_targets()
        channel = f"ws4tx:broadcast:{s.facility}"

        def recover() -> str:
            p = s.pub.request({"cmd": "position"}, 60)
            return "&recover=" + quote(f"{channel}:{p['epoch']}:{p['offset']}", safe="")

        half = n // 2  # A's clients: the first half
        s.pub.request({"cmd": "once", "tag": new_tag(), "seq": 0, "targets": targets}, 60)
        _, anonymous = _storm(s, [{"url": url_b + recover()}] * half, False)
        s.lg.request({"cmd": "close", "timeout": 10}, 60)
        _record_phase(suite, system, run, "anonymous", anonymous, "cookie-kill-phase")
        logins = [{"url": url_a if i < half else url_b, "headers": {"Cookie": cookie + k}}
                  for i, k in enumerate(keys)]
        got, login = _storm(s, logins, True)
        # B's figures: its SQL and CPU are for its half of the logins
        login.update({"b_clients": n - half, "db_queries_per_client": round(
            login["db_queries"] / (n - half), 2) if login["db_queries"] is not None else None,
                      "server_cpu_ms_per_connect": round(
                          login["server_cpu_ms_per_connect"] * n / (n - half), 3)})
        _record_phase(suite, system, run, "login", login, "cookie-kill-phase")
        tokens = got["tokens"] or []
        if sum(1 for t in tokens if t) < n:
            raise BenchError(f"only {sum(1 for t in tokens if t)}/{n} clients logged in "
                             f"with a resume token: {got['errors']}")
        warm = s.warm(targets, timeout=30)
        position = recover()  # where every client stands: nothing is published until A dies
        back = [{"url": url_b + quote(t, safe="") + position, "headers": {"Cookie": cookie + k}}
                for t, k in zip(tokens[:half], keys[:half], strict=True)]
        tag = new_tag()
        s.lg.request({"cmd": "phase", "tag": tag}, 30)
        published: dict[str, Any] = {}

        def publish() -> None:
            published.update(s.pub.request({"cmd": "run", "tag": tag, "rate": a.kill_rate,
                                            "duration": a.kill_publish, "targets": targets},
                                           a.kill_publish * 3 + 60))

        publisher = threading.Thread(target=publish, daemon=True)
        killed_ns = 0

        def kill() -> dict[str, Any]:
            nonlocal killed_ns
            killed_ns = time.time_ns()
            os.kill(node_a.pid, signal.SIGKILL)  # the node this scenario started
            publisher.start()
            return {"since_ns": killed_ns, "within_ms": KILL_TARGET_S * 1000}

        got, storm = _storm(s, back, False, kill)
        publisher.join(a.kill_publish * 3 + 70)
        rounds = published.get("rounds", 0)
        deadline = time.monotonic() + DRAIN_MAX
        while time.monotonic() < deadline:  # every client of B has every message, or 15 s
            if s.lg.request({"cmd": "progress"}, 30)["received"] >= rounds * n:
                break
            time.sleep(0.1)
        stats = s.lg.request({"cmd": "stats", "expected": rounds, "recount": True,
                              "recovered_by_ns": killed_ns + int(KILL_TARGET_S * 1e9)}, 120)
    storm.update({
        "back_within_target": got["within"],
        "recovered_within_target": stats["recovered_true_by"],
        "recovered_true": stats["recovered_true"],
        # every client of either node, with every message of the storm, none twice
        "complete_clients": stats["complete_clients"], "of_clients": n,
        "duplicates": stats["duplicates"], "out_of_order": stats["out_of_order"],
        "messages": rounds, "publish_rate": published.get("rate"), **warm})
    _record_phase(suite, system, run, "kill", storm, "cookie-kill-phase")
    within = min(got["within"] or 0, stats["recovered_true_by"] or 0)
    rate_ratio = (round(storm["connects_per_s"] / anonymous["connects_per_s"], 3)
                  if storm["connects_per_s"] and anonymous["connects_per_s"] else None)
    sql = storm["db_queries"]
    ok = (stats["complete_clients"] == n and not stats["duplicates"]
          and not stats["out_of_order"])
    suite.record(run, system.name, "cookie-kill", {"clients": n}, "ok" if ok else "error", {
        "clients": n, "reconnecting": half, "db_queries": sql,
        "db_queries_share": round(sql / n, 4) if sql is not None else None,
        "back_and_recovered_share": round(within / half, 4) if half else None,
        "target_s": KILL_TARGET_S, "complete_clients": stats["complete_clients"],
        "duplicates": stats["duplicates"], "out_of_order": stats["out_of_order"],
        "p50_back_ms": storm["p50_ms"], "p99_back_ms": storm["p99_ms"],
        "connects_per_s": storm["connects_per_s"],
        "anonymous_connects_per_s": anonymous["connects_per_s"],
        "server_cpu_ms_per_connect": storm["server_cpu_ms_per_connect"],
        "anonymous_server_cpu_ms_per_connect": anonymous["server_cpu_ms_per_connect"],
        "vs_anonymous_connects": rate_ratio, "limit": storm["limit"],
        "pass": bool(ok and sql is not None and sql <= 0.01 * n and half
                     and within >= 0.99 * half and rate_ratio is not None
                     and rate_ratio >= COOKIE_TARGET),
    }, reason="" if ok else f"{n - stats['complete_clients']} clients incomplete, "
                            f"{stats['duplicates']} duplicates")


def _settled_rss_kb(s: Session, settle: float) -> int:
    """The server's resident size once it stops moving: ``settle`` seconds, then a reading
    every 0.5 s until two are within 64 KiB (at most 5 s from the call)."""
    after, deadline = s.server.rss_kb(), time.monotonic() + 5
    time.sleep(settle)
    while time.monotonic() < deadline:
        now = s.server.rss_kb()
        if abs(now - after) < 64:
            break
        after = now
        time.sleep(0.5)
    return s.server.rss_kb()


def scenario_idle(suite: Suite, system: S.System, run: int) -> None:
    """Idle subscribed connections, added in steps on one server (1000, then up to 5000,
    then up to 10000): RSS per connection = (RSS at N - RSS before the first) / N; the
    connect rate of a step = its new connections / the time they took."""
    a = suite.args
    counts = sorted(a.idle_counts)
    with Session(suite, system) as s:
        time.sleep(a.settle)
        before = s.server.rss_kb()
        have = 0
        for n in counts:
            c0, w0 = s.lg.cpu_seconds(), s.server.cpu_seconds()
            conn = s.connect(s.broadcast_urls(n - have))
            gen_cpu = (s.lg.cpu_seconds() - c0) / max(conn["seconds"], 1e-6)
            server_cpu = (s.server.cpu_seconds() - w0) / max(conn["seconds"], 1e-6)
            have += conn["connected"]
            after = _settled_rss_kb(s, a.settle)
            m = {
                "clients": n, "connected": have, "step": n - (have - conn["connected"]),
                "step_connected": conn["connected"], "failed": conn["failed"],
                "errors": conn["errors"], "connect_seconds": conn["seconds"],
                "connect_rate": round(conn["connected"] / conn["seconds"], 1)
                if conn["seconds"] else None,
                "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                "rss_per_conn_kb": round((after - before) / have, 2) if have else None,
                "generator_cpu": round(gen_cpu, 3), "server_cpu": round(server_cpu, 3),
                "concurrency": a.concurrency,
            }
            ok = have == n
            suite.record(run, system.name, "idle", {"clients": n}, "ok" if ok else "error", m,
                         reason="" if ok else f"{n - have} clients failed to connect")
            if not ok:
                break


def _idle_memory(suite: Suite, system: S.System, n: int, kind: Optional[str]) -> dict[str, Any]:
    """``n`` idle clients of one broadcast channel on a fresh server (``kind``: "sse" for
    event streams, None for the system's WebSocket clients): the server's RSS per client,
    the connect rate, and the CPU of the server and of the generator while connecting."""
    a = suite.args
    with Session(suite, system, kind=kind) as s:
        time.sleep(a.settle)
        before = s.server.rss_kb()
        c0, w0 = s.lg.cpu_seconds(), s.server.cpu_seconds()
        q0, g0 = s.server.runqueue_wait_seconds(), s.lg.runqueue_wait_seconds()
        conn = s.connect(s.broadcast_urls(n))
        took = max(conn["seconds"], 1e-6)
        gen_cpu = (s.lg.cpu_seconds() - c0) / took
        server_cpu = (s.server.cpu_seconds() - w0) / took
        server_wait = (s.server.runqueue_wait_seconds() - q0) / took
        gen_wait = (s.lg.runqueue_wait_seconds() - g0) / took
        warm = s.warm(s.broadcast_targets())  # every stream subscribed and delivering
        after = _settled_rss_kb(s, a.settle)
        have = conn["connected"]
        return {"transport": kind or "websocket", "clients": n, "connected": have,
                "errors": conn["errors"], "connect_seconds": conn["seconds"],
                "connect_rate": round(have / took, 1),
                "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                "rss_per_conn_kb": round((after - before) / have, 2) if have else None,
                "generator_cpu": round(gen_cpu, 3), "server_cpu": round(server_cpu, 3),
                "server_cpu_wait": round(server_wait, 3),
                "generator_cpu_wait": round(gen_wait, 3),
                "limit": limit_of(server_cpu, gen_cpu, None, S.cores(system.server_cpus),
                                  server_wait, gen_wait), **warm}


def scenario_sse(suite: Suite, system: S.System, run: int) -> None:
    """Issue 23's measurements of Server-Sent Events against WebSocket clients of the same
    server, in one invocation: idle memory per client (``--sse-clients`` of each on a
    fresh server; target: SSE at most 1.2x) and the max rate to ``--maxrate-clients``
    (the ``maxrate`` bisection over ``--sse-rates`` once with each transport; target:
    SSE at least 0.8x). The
    transports take turns going first from run to run, so that a drift of the machine's
    load shows as spread rather than as a bias of one of them."""
    a = suite.args
    if system.name not in ("ws4tx", "ws4tx-baseline"):  # before/after with --baseline
        suite.record(run, system.name, "sse", {}, "skipped", reason="ws4tx only")
        return
    kinds: list[Optional[str]] = [None, "sse"] if run % 2 == 0 else ["sse", None]
    memory: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        m = _idle_memory(suite, system, a.sse_clients, kind)
        memory[m["transport"]] = m
        ok = m["connected"] == a.sse_clients
        suite.record(run, system.name, "sse-idle", {"clients": a.sse_clients,
                                                    "transport": m["transport"]},
                     "ok" if ok else "error", m,
                     reason="" if ok else f"{a.sse_clients - m['connected']} failed to connect")
    rates = sorted(a.sse_rates)
    n = a.maxrate_clients
    best: dict[str, Optional[int]] = {}
    probes: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        name = kind or "websocket"
        session = {"kind": kind} if kind else {}
        best[name], probes[name] = _bisect(suite, system, run, rates, n, **session)
    # The server's CPU per delivered event against per frame at the highest rate both
    # transports were probed at: what the max rates would show on an idle machine, where a
    # busy one starves the server below the rates a probe passes at.
    per_frame = {name: {p["rate"]: p.get("server_cpu_us_per_frame") for p in probes[name]}
                 for name in probes}
    common = sorted(set(per_frame["websocket"]) & set(per_frame["sse"]))
    at = common[-1] if common else None
    cpu_ratio = (round(per_frame["sse"][at] / per_frame["websocket"][at], 3)
                 if at is not None and per_frame["sse"][at] and per_frame["websocket"][at]
                 else None)
    ws_kb = memory["websocket"]["rss_per_conn_kb"]
    sse_kb = memory["sse"]["rss_per_conn_kb"]
    memory_ratio = round(sse_kb / ws_kb, 3) if ws_kb and sse_kb else None
    rate_ratio = (round((best["sse"] or 0) / best["websocket"], 3)
                  if best["websocket"] else None)
    suite.record(run, system.name, "sse", {"clients": n, "idle_clients": a.sse_clients}, "ok", {
        "first": kinds[0] or "websocket",
        "kb_per_client_websocket": ws_kb, "kb_per_client_sse": sse_kb,
        "memory_ratio": memory_ratio, "memory_target": SSE_MEMORY_TARGET,
        "memory_pass": memory_ratio is not None and memory_ratio <= SSE_MEMORY_TARGET,
        "max_rate_websocket": best["websocket"], "max_rate_sse": best["sse"],
        "rate_ratio": rate_ratio, "rate_target": SSE_RATE_TARGET,
        "rate_pass": rate_ratio is not None and rate_ratio >= SSE_RATE_TARGET,
        "cpu_per_frame_rate": at, "cpu_per_frame_ratio": cpu_ratio,
        "probes_websocket": probes["websocket"], "probes_sse": probes["sse"],
        "connect_rate_websocket": memory["websocket"]["connect_rate"],
        "connect_rate_sse": memory["sse"]["connect_rate"],
    })


def scenario_channels(suite: Suite, system: S.System, run: int) -> None:
    a = suite.args
    n = a.users
    users = [f"u{i:05d}" for i in range(n)]
    with Session(suite, system, users=True) as s:
        tokens: list[Optional[str]] = [None] * n
        if system.publisher_system == "ws4tx":
            tokens = s.pub.request({"cmd": "tokens", "users": users}, 120)["tokens"]
        urls = [system.user_url(s.port, s.facility, u, t) for u, t in zip(users, tokens, strict=True)]
        conn = s.connect(urls)
        if conn["connected"] < n:
            raise BenchError(f"only {conn['connected']}/{n} clients connected: {conn['errors']}")
        targets = [system.user_target(u) for u in users]
        warm = s.warm(targets, timeout=30)
        m = s.measure(a.users_rate, a.duration, targets)
        m.update(warm)
        m["auth"] = ("signed token (ws4tx.tokens.make_token), --django-settings ws4tx_settings"
                     if system.name == "ws4tx" else "user name in the URL")
        suite.record(run, system.name, "channels",
                     {"clients": n, "rounds_per_s": a.users_rate, "duration": a.duration},
                     "ok", m)


def scenario_replay(suite: Suite, system: S.System, run: int) -> None:
    a = suite.args
    n = a.replay_clients
    if system.name not in ("ws4tx", "ceiling"):
        suite.record(run, system.name, "replay", {"clients": n}, "skipped",
                     reason="no stored-message replay in this system")
        return
    with Session(suite, system) as s:
        tag = new_tag()
        s.lg.request({"cmd": "phase", "tag": tag}, 30)
        s.pub.request({"cmd": "once", "tag": tag, "seq": 0, "targets": s.broadcast_targets()}, 60)
        time.sleep(0.2)
        conn = s.connect(s.broadcast_urls(n))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if s.lg.request({"cmd": "progress"}, 30)["with_any"] >= conn["connected"]:
                break
            time.sleep(0.05)
        stats = s.lg.request({"cmd": "stats", "expected": 1, "recount": True}, 60)
        m = {"clients": n, "connected": conn["connected"], "with_message": stats["with_first"],
             "seconds_to_all": stats["first_after_connect_start_s"]
             if stats["with_first"] == n else None,
             "seconds_to_last_received": stats["first_after_connect_start_s"],
             "connect_seconds": conn["seconds"], "concurrency": a.concurrency}
        status = "ok" if stats["with_first"] == n else "error"
        suite.record(run, system.name, "replay", {"clients": n}, status, m,
                     reason="" if status == "ok" else f"{n - stats['with_first']} clients never got it")


def scenario_profile(suite: Suite, system: S.System, run: int) -> None:
    """py-spy on the ws4tx server: during fan-out to 1000 clients at 100 msg/s, and while
    clients connect (the idle scenario's largest count)."""
    a = suite.args
    venv = suite.venvs["ws4tx"]
    pyspy = venv.script("py-spy")
    if pyspy is None:
        suite.record(run, system.name, "profile", {}, "skipped", reason="py-spy not installed")
        return
    n, rate, duration = a.profile_clients, a.profile_rate, a.duration
    raw = os.path.join(suite.logdir, f"profile-{system.name}-fanout.txt")
    with Session(suite, system) as s:
        s.connect(s.broadcast_urls(n))
        s.warm(s.broadcast_targets())
        spy = _pyspy(suite, pyspy, s.server.pid, duration, raw)
        time.sleep(0.5)
        m = s.measure(rate, duration, s.broadcast_targets())
        _wait_spy(spy, duration)
    prof = summarize_profile(raw)
    prof.update({"fanout": {k: m.get(k) for k in ("delivered_per_s", "loss", "p50_ms",
                                                   "p99_ms", "server_cpu",
                                                   "server_cpu_us_per_frame")},
                 "raw_file": raw})
    suite.record(run, system.name, "profile", {"clients": n, "rate": rate, "duration": duration},
                 "ok" if prof.get("samples") else "error", prof,
                 reason="" if prof.get("samples") else "py-spy produced no samples")

    count = max(a.idle_counts)
    raw = os.path.join(suite.logdir, f"profile-{system.name}-connect.txt")
    with Session(suite, system) as s:
        seconds = max(5, int(count / 300) + 5)
        spy = _pyspy(suite, pyspy, s.server.pid, seconds, raw)
        time.sleep(0.5)
        conn = s.connect(s.broadcast_urls(count))
        _wait_spy(spy, seconds)
    prof = summarize_profile(raw)
    prof.update({"connect": {"clients": count, "connected": conn["connected"],
                             "seconds": conn["seconds"],
                             "connect_rate": round(conn["connected"] / conn["seconds"], 1)
                             if conn["seconds"] else None},
                 "raw_file": raw})
    suite.record(run, system.name, "profile-connect", {"clients": count},
                 "ok" if prof.get("samples") else "error", prof,
                 reason="" if prof.get("samples") else "py-spy produced no samples")


def _pyspy(suite: Suite, pyspy: str, pid: int, seconds: float, raw: str) -> Proc:
    return Proc("py-spy", [pyspy, "record", "-p", str(pid), "-d", str(int(seconds)),
                           "-r", "200", "-f", "raw", "-o", raw, "--nonblocking"],
                cpu=S.LOAD_CPU, pin=suite.pin, log_path=suite.log_path("py-spy"))


def _wait_spy(spy: Proc, seconds: float) -> None:
    deadline = time.monotonic() + seconds + 30
    while spy.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    spy.stop()


def summarize_profile(path: str, top: int = 25) -> dict[str, Any]:
    """Shares per function from py-spy's collapsed stacks: where the CPU is spent (self,
    by function and by line) and what it is spent under (inclusive, leaving out the
    reactor's plumbing that is on every stack)."""
    own: dict[str, int] = {}
    own_lines: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {"samples": 0}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [fr for fr in stack.split(";") if fr and not fr.startswith(("process ", "thread "))]
        if not frames:
            continue
        own_lines[frames[-1]] = own_lines.get(frames[-1], 0) + c
        leaf = _function(frames[-1])
        own[leaf] = own.get(leaf, 0) + c
        for fr in {_function(fr) for fr in frames if not _plumbing(fr)}:
            incl[fr] = incl.get(fr, 0) + c

    def table(d: dict[str, int], limit: int = top, below: float = 101.0) -> list[list[Any]]:
        rows = [[name, round(100.0 * c / total, 1)] for name, c in
                sorted(d.items(), key=lambda kv: -kv[1])]
        return [r for r in rows if r[1] < below][:limit]

    return {"samples": total, "self_top": table(own), "self_lines_top": table(own_lines, 15),
            "inclusive_top": table(incl)}


#: Frames on (nearly) every stack of a twistd process: the reactor loop and its callers.
_PLUMBING = ("<module> (", "twisted/scripts/", "twisted/application/", "twisted/python/log.py",
             "twisted/python/context.py", "twisted/internet/base.py",
             "twisted/internet/epollreactor.py", "twisted/internet/posixbase.py")


def _plumbing(frame: str) -> bool:
    return any(p in frame for p in _PLUMBING)


def _function(frame: str) -> str:
    """``func (pkg/module.py:123)`` -> ``func (pkg/module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def scenario_shards(suite: Suite, system: S.System, run: int) -> None:
    """The many-channels workload on one ws4tx server against one Redis, then against
    three Redis servers its channels are sharded over (and the publisher's Django side
    too), then against a three-primary Redis Cluster (sharded pub/sub): at the paced rate
    of --users-rate (fan-out latency and CPU), then with the publisher pushed to
    --shards-rate rounds per second (publish throughput: what it reaches). Ratios to one
    Redis are recorded as ``shards-ratio``."""
    a = suite.args
    if system.publisher_system != "ws4tx" or system.name not in ("ws4tx", "ws4tx-baseline"):
        suite.record(run, system.name, "shards", {}, "skipped",
                     reason="sharding is ws4tx's (run it with --systems ws4tx)")
        return
    n = a.users
    users = [f"u{i:05d}" for i in range(n)]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for mode, redis_count in (("one", 1), ("shards", 3), ("cluster", 3)):
        with Session(suite, system, users=True, redis_count=redis_count,
                     cluster=mode == "cluster") as s:
            tokens = s.pub.request({"cmd": "tokens", "users": users}, 120)["tokens"]
            urls = [system.user_url(s.port, s.facility, u, t)
                    for u, t in zip(users, tokens, strict=True)]
            conn = s.connect(urls)
            if conn["connected"] < n:
                raise BenchError(f"only {conn['connected']}/{n} clients connected: "
                                 f"{conn['errors']}")
            targets = [system.user_target(u) for u in users]
            for phase, rate in (("paced", a.users_rate), ("saturated", a.shards_rate)):
                warm = s.warm(targets, timeout=30)
                m = s.measure(rate, a.duration, targets)
                m.update(warm)
                m["published_per_s"] = round(m["published_messages"] / m["publish_seconds"], 1)
                params = {"redis": redis_count, "mode": mode, "phase": phase, "clients": n,
                          "rounds_per_s": rate, "duration": a.duration}
                suite.record(run, system.name, "shards", params, "ok", m)
                found[(mode, phase)] = m
    ratios: dict[str, Any] = {}
    for phase in ("paced", "saturated"):
        one = found[("one", phase)]
        for mode in ("shards", "cluster"):
            three = found[(mode, phase)]
            for key in ("published_per_s", "delivered_per_s", "server_cpu", "redis_cpu",
                        "p99_ms", "redis_commands_per_message"):
                if one.get(key) and three.get(key) is not None:
                    ratios[f"{mode}_{phase}_{key}"] = round(three[key] / one[key], 3)
            ratios[f"{mode}_{phase}_busiest_redis_cpu"] = (
                round(max(three["redis_cpu_each"]) / max(one["redis_cpu_each"]), 3)
                if one["redis_cpu_each"] and max(one["redis_cpu_each"]) else None)
    suite.record(run, system.name, "shards-ratio", {"clients": n}, "ok", ratios)


SCENARIOS: dict[str, Callable[[Suite, S.System, int], None]] = {
    "fanout": scenario_fanout,
    "maxrate": scenario_maxrate,
    "idle": scenario_idle,
    "channels": scenario_channels,
    "replay": scenario_replay,
    "profile": scenario_profile,
    "history": scenario_history,
    "recovery": scenario_recovery,
    "cookies": scenario_cookies,
    "cookie-kill": scenario_cookie_kill,
    "shards": scenario_shards,
    "sse": scenario_sse,
}


def run_scenario(suite: Suite, name: str, system: S.System, run: int) -> None:
    try:
        SCENARIOS[name](suite, system, run)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - recorded; the suite goes on
        suite.record(run, system.name, name, {}, "error", reason=f"{type(e).__name__}: {e}")
        with open(os.path.join(suite.logdir, "errors.log"), "a") as f:
            f.write(f"--- {system.name} {name} run {run}\n{traceback.format_exc()}\n")
