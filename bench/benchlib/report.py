"""Markdown tables from the JSON lines of one invocation: medians over runs, every system
side by side, ratios against the ceiling and against ws4tx, and the issue's targets."""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Optional

from benchlib.limits import BOUND, limit_of
from benchlib.systems import ALL, ORDER, cores

BASES = ("ceiling", "ws4tx")
#: The fan-out floor the issue's ratios are taken against.
FLOOR = "floor-picows"


def _systems(records: list[dict]) -> list[str]:
    seen = {r["system"] for r in records}
    return [s for s in ORDER if s in seen]


def _median(values: Iterable[Any]) -> Optional[float]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(nums) if nums else None


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(v: Optional[float], base: Optional[float]) -> str:
    if v is None or base is None or base == 0:
        return "–"
    return f"{v / base:.2f}×"


def _vs_bases(v: Optional[float], base: dict[str, list[dict]], key: str) -> str:
    """The "× ceiling | × ws4tx" cells: ``v`` against each base system's median of ``key``."""
    return " | ".join(_ratio(v, _med(base[b], key)) for b in BASES)


def _pct(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def _group(records: list[dict], scenario: str, keys: tuple[str, ...]) -> dict:
    """(param values..., system) -> list of records."""
    out: dict = {}
    for r in records:
        if r["scenario"] != scenario or any(x not in r["params"] for x in keys):
            continue
        k = tuple(r["params"].get(x) for x in keys) + (r["system"],)
        out.setdefault(k, []).append(r)
    return out


def _med(rs: list[dict], key: str) -> Optional[float]:
    return _median(r["metrics"].get(key) for r in rs if r["status"] == "ok")


def _status_note(rs: list[dict]) -> str:
    bad = [r for r in rs if r["status"] != "ok"]
    if not bad:
        return ""
    reasons = sorted({f"{r['status']}: {r.get('reason', '')}".strip() for r in bad})
    return "; ".join(reasons)


def _limit(rs: list[dict], system: str) -> str:
    """Which process limited a cell, from the medians of its runs (see limits.py)."""
    cpus = ALL[system].server_cpus if system in ALL else 0
    return limit_of(_med(rs, "server_cpu"), _med(rs, "generator_cpu"),
                    _med(rs, "load_core_cpu"), cores(cpus), _med(rs, "server_cpu_wait"),
                    _med(rs, "generator_cpu_wait"))


def _failing_limit(ok: list[dict]) -> str:
    """Per run: the lowest rate whose probe failed, and which process limited it."""
    found = []
    for r in ok:
        failed = sorted((p for p in r["metrics"].get("probes", []) if not p["pass"]),
                        key=lambda p: p["rate"])
        if not failed:
            found.append("none failed")
            continue
        p = failed[0]
        found.append(f"{p['rate']}: server {_pct(p.get('server_cpu'), 0)}, generator "
                     f"{_pct(p.get('generator_cpu'), 0)}"
                     + (f", load core {_pct(p.get('load_core_cpu'), 0)}"
                        if p.get("load_core_cpu") is not None else "")
                     + f" → {p.get('limit') or limit_of(p.get('server_cpu'), p.get('generator_cpu'))}")
    return "; ".join(found)


def fanout_table(records: list[dict]) -> list[str]:
    g = _group(records, "fanout", ("clients", "rate"))
    if not g:
        return []
    systems = _systems([r for r in records if r["scenario"] == "fanout"])
    cells = sorted({k[:2] for k in g})
    lines = [
        "| clients | msg/s | system | delivered frames/s | loss | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU | µs/frame | server RSS MB | generator CPU | generator µs/frame | limit "
        "| server waited for CPU "
        "| p99 × ceiling | p99 × ws4tx | delivered × ceiling | µs/frame × floor-picows | notes |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n, rate in cells:
        base = {b: g.get((n, rate, b), []) for b in BASES}
        floor_us = _med(g.get((n, rate, FLOOR), []), "server_cpu_us_per_frame")
        for s in systems:
            rs = g.get((n, rate, s))
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            notes = []
            closes: dict[str, int] = {}
            silent = lagged = 0
            for r in ok:
                for code, c in (r["metrics"].get("closed_by_server") or {}).items():
                    closes[code] = closes.get(code, 0) + c
                silent += r["metrics"].get("lost_open") or 0
                lagged += r["metrics"].get("server_lagged_frames") or 0
            if closes:
                notes.append("closed by server: " + ", ".join(f"{c}×{code}" for code, c in sorted(closes.items())))
            if any((r["metrics"].get("publish_rate") or 0) < 0.97 * rate for r in ok):
                notes.append("publisher fell behind")
            if lagged:
                notes.append(f"frames the server dropped as over --max-lag (counted, logged): {lagged:,}")
            if silent:
                notes.append(f"missing at the end of the window on clients left open: {silent:,}")
            st = _status_note(rs)
            if st:
                notes.append(st)
            if not ok:
                lines.append(f"| {n:,} | {rate:,} | {s} | " + " | ".join(["–"] * 17) + f" | {'; '.join(notes)} |")
                continue
            p99 = _med(rs, "p99_ms")
            delivered = _med(rs, "delivered_per_s")
            lines.append(
                f"| {n:,} | {rate:,} | {s} | {_fmt(delivered, 0)} | {_pct(_med(rs, 'loss'))} "
                f"| {_fmt(_med(rs, 'p50_ms'))} | {_fmt(_med(rs, 'p90_ms'))} | {_fmt(p99)} "
                f"| {_fmt(_med(rs, 'max_ms'))} | {_pct(_med(rs, 'server_cpu'), 0)} "
                f"| {_fmt(_med(rs, 'server_cpu_us_per_frame'))} | {_fmt(_med(rs, 'server_rss_mb'))} "
                f"| {_pct(_med(rs, 'generator_cpu'), 0)} "
                f"| {_fmt(_med(rs, 'generator_cpu_us_per_frame'), 2)} | {_limit(rs, s)} "
                f"| {_pct(_med(rs, 'server_cpu_wait'), 0)} "
                f"| {_vs_bases(p99, base, 'p99_ms')} "
                f"| {_ratio(delivered, _med(base['ceiling'], 'delivered_per_s'))} "
                f"| {_ratio(_med(rs, 'server_cpu_us_per_frame'), floor_us)} "
                f"| {'; '.join(notes)} |")
    return lines


def maxrate_table(records: list[dict]) -> list[str]:
    rs_all = [r for r in records if r["scenario"] == "maxrate"]
    if not rs_all:
        return []
    systems = _systems(rs_all)

    def best(s: str) -> tuple[Optional[float], list[dict]]:
        rs = [r for r in rs_all if r["system"] == s]
        vals = [r["metrics"].get("max_rate") or 0 for r in rs if r["status"] == "ok"]
        return (statistics.median(vals) if vals else None), rs

    base = {b: best(b)[0] for b in BASES + (FLOOR,)}
    lines = [
        "| system | max msg/s to all clients (median) | frames/s | × ceiling | × ws4tx "
        "| × floor-picows | per run | probes of the first run (msg/s: result; server CPU, "
        "generator CPU: limit) | generator CPU (max) | limit at the lowest failing rate |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for s in systems:
        value, rs = best(s)
        ok = [r for r in rs if r["status"] == "ok"]
        per_run = ", ".join(
            (str(r["metrics"].get("max_rate")) if r["metrics"].get("max_rate")
             else f"< {r['metrics'].get('lowest_tried')}") for r in ok)
        lowest = min((r["metrics"].get("lowest_tried") or 0) for r in ok) if ok else None
        probes = ""
        if ok:
            probes = "; ".join(
                f"{p['rate']}: {'pass' if p['pass'] else 'fail'} ({p['why']}"
                + (f"; {_pct(p.get('server_cpu'), 0)}, {_pct(p.get('generator_cpu'), 0)}: "
                   f"{p.get('limit')}" if p.get("limit") else "") + ")"
                for p in ok[0]["metrics"].get("probes", []))
        clients = ok[0]["params"]["clients"] if ok else 0
        shown = (_fmt(value, 0) if value else f"< {lowest}") if ok else "–"
        lines.append(
            f"| {s} | {shown} | {_fmt(value * clients if value else None, 0)} "
            f"| {_ratio(value, base['ceiling'])} | {_ratio(value, base['ws4tx'])} "
            f"| {_ratio(value, base[FLOOR])} | {per_run} "
            f"| {probes or _status_note(rs)} | {_pct(_median(r['metrics'].get('generator_cpu_max') for r in ok), 0)} "
            f"| {_failing_limit(ok)} |")
    return lines


def idle_table(records: list[dict]) -> list[str]:
    g = _group(records, "idle", ("clients",))
    if not g:
        return []
    systems = _systems([r for r in records if r["scenario"] == "idle"])
    lines = [
        "| connections | system | KB per connection | connects/s | RSS before → after MB "
        "| KB × ceiling | KB × ws4tx | connects × ceiling | connects × ws4tx | notes |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for (n,) in sorted({k[:1] for k in g}):
        base = {b: g.get((n, b), []) for b in BASES}
        for s in systems:
            rs = g.get((n, s))
            if not rs:
                continue
            kb, rate = _med(rs, "rss_per_conn_kb"), _med(rs, "connect_rate")
            lines.append(
                f"| {n:,} | {s} | {_fmt(kb)} | {_fmt(rate, 0)} "
                f"| {_fmt(_med(rs, 'rss_before_mb'))} → {_fmt(_med(rs, 'rss_after_mb'))} "
                f"| {_vs_bases(kb, base, 'rss_per_conn_kb')} "
                f"| {_vs_bases(rate, base, 'connect_rate')} | {_status_note(rs)} |")
    return lines


def channels_table(records: list[dict]) -> list[str]:
    rs_all = [r for r in records if r["scenario"] == "channels"]
    if not rs_all:
        return []
    by = {s: [r for r in rs_all if r["system"] == s] for s in _systems(rs_all)}
    base = {b: by.get(b, []) for b in BASES}
    lines = [
        "| system | clients (one channel each) | msg/s published | delivered/s | loss | p50 ms "
        "| p99 ms | max ms | server CPU | µs/frame | generator CPU | p99 × ceiling | p99 × ws4tx | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s, rs in by.items():
        ok = [r for r in rs if r["status"] == "ok"]
        n = ok[0]["params"]["clients"] if ok else (rs[0]["params"].get("clients") if rs else 0)
        pub = _median(r["metrics"].get("published_messages", 0) / max(r["metrics"].get("publish_seconds", 1), 1e-9) for r in ok)
        p99 = _med(rs, "p99_ms")
        lines.append(
            f"| {s} | {_fmt(n)} | {_fmt(pub, 0)} | {_fmt(_med(rs, 'delivered_per_s'), 0)} "
            f"| {_pct(_med(rs, 'loss'))} | {_fmt(_med(rs, 'p50_ms'))} | {_fmt(p99)} "
            f"| {_fmt(_med(rs, 'max_ms'))} | {_pct(_med(rs, 'server_cpu'), 0)} "
            f"| {_fmt(_med(rs, 'server_cpu_us_per_frame'))} | {_pct(_med(rs, 'generator_cpu'), 0)} "
            f"| {_vs_bases(p99, base, 'p99_ms')} "
            f"| {_status_note(rs)} |")
    return lines


def shards_table(records: list[dict]) -> list[str]:
    """ws4tx on one Redis against three shards, the same workload, one invocation."""
    rs_all = [r for r in records if r["scenario"] == "shards" and r["status"] == "ok"]
    if not rs_all:
        return []
    lines = [
        "| phase | Redis | clients (one channel each) | msg/s published | delivered/s "
        "| loss | p50 ms | p99 ms | server CPU | Redis CPU (sum) | Redis CPU per server "
        "| Redis commands per message |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    shown = {"one": "one server", "shards": "three shards", "cluster": "cluster of three"}
    for phase in ("paced", "saturated"):
        for mode in ("one", "shards", "cluster"):
            rs = [r for r in rs_all if r["params"].get("phase") == phase
                  and r["params"].get("mode", "one" if r["params"].get("redis") == 1
                                      else "shards") == mode]
            if not rs:
                continue
            each = rs[0]["metrics"].get("redis_cpu_each") or []
            lines.append(
                f"| {phase} ({rs[0]['params'].get('rounds_per_s')} rounds/s) | {shown[mode]} "
                f"| {_fmt(rs[0]['params'].get('clients'))} | {_fmt(_med(rs, 'published_per_s'), 0)} "
                f"| {_fmt(_med(rs, 'delivered_per_s'), 0)} | {_pct(_med(rs, 'loss'))} "
                f"| {_fmt(_med(rs, 'p50_ms'))} | {_fmt(_med(rs, 'p99_ms'))} "
                f"| {_pct(_med(rs, 'server_cpu'), 0)} | {_pct(_med(rs, 'redis_cpu'), 0)} "
                f"| {' / '.join(_pct(c, 0) for c in each)} "
                f"| {_fmt(_med(rs, 'redis_commands_per_message'), 2)} |")
    ratios = [r for r in records if r["scenario"] == "shards-ratio" and r["status"] == "ok"]
    if ratios:
        keys = sorted({k for r in ratios for k in r["metrics"]})
        lines += ["", "| against one Redis (median of the runs) | ratio |", "|---|---:|"]
        for key in keys:
            lines.append(f"| {key.replace('_', ' ')} "
                         f"| {_fmt(_median(r['metrics'].get(key) for r in ratios), 3)} |")
    return lines


def replay_table(records: list[dict]) -> list[str]:
    rs_all = [r for r in records if r["scenario"] == "replay"]
    if not rs_all:
        return []
    by = {s: [r for r in rs_all if r["system"] == s] for s in _systems(rs_all)}
    base = {b: _med(by.get(b, []), "seconds_to_all") for b in BASES}
    lines = [
        "| system | clients | got the stored message | seconds until all have it | × ceiling "
        "| vs ws4redis's published 1.5 s | notes |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for s, rs in by.items():
        secs = _med(rs, "seconds_to_all")
        n = rs[0]["params"].get("clients")
        lines.append(
            f"| {s} | {_fmt(n)} | {_fmt(_med(rs, 'with_message'), 0)} | {_fmt(secs, 3)} "
            f"| {_ratio(secs, base['ceiling'])} "
            f"| {('faster' if secs < 1.5 else 'slower') if secs is not None else '–'} "
            f"| {_status_note(rs)} |")
    return lines


def history_table(records: list[dict]) -> list[str]:
    rs = [r for r in records if r["scenario"] == "history" and r["status"] == "ok"]
    if not rs:
        return []
    lines = ["| run | clients | max msg/s without history | with history | ratio | target "
             "| result |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rs:
        m = r["metrics"]
        lines.append(
            f"| {r['run'] + 1} | {_fmt(r['params'].get('clients'))} | {_fmt(m.get('max_rate_off'))} "
            f"| {_fmt(m.get('max_rate_on'))} | {_fmt(m.get('ratio'), 2)} | ≥ {m.get('target')} "
            f"| {'pass' if m.get('pass') else 'FAIL'} |")
    return lines


def sse_table(records: list[dict]) -> list[str]:
    rs = [r for r in records if r["scenario"] == "sse" and r["status"] == "ok"]
    if not rs:
        return []
    lines = ["| system | run | first | KB/client WebSocket | SSE | ratio (≤ 1.2) "
             "| max msg/s WebSocket | SSE | ratio (≥ 0.8) "
             "| server CPU per event / per frame (at msg/s) | limits WebSocket / SSE |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rs:
        m = r["metrics"]

        def limits(name: str, m: dict = m) -> str:
            return ", ".join(sorted({str(p.get("limit")) for p in m.get(f"probes_{name}") or []}))
        lines.append(
            f"| {r['system']} | {r['run'] + 1} | {m.get('first')} "
            f"| {_fmt(m.get('kb_per_client_websocket'), 2)} "
            f"| {_fmt(m.get('kb_per_client_sse'), 2)} | {_fmt(m.get('memory_ratio'), 2)} "
            f"{'pass' if m.get('memory_pass') else 'FAIL'} "
            f"| {_fmt(m.get('max_rate_websocket'))} | {_fmt(m.get('max_rate_sse'))} "
            f"| {_fmt(m.get('rate_ratio'), 2)} "
            f"{'not measured' if m.get('rate_ratio') is None else 'pass' if m.get('rate_pass') else 'FAIL'} "
            f"| {_fmt(m.get('cpu_per_frame_ratio'), 2)} ({_fmt(m.get('cpu_per_frame_rate'))}) "
            f"| {limits('websocket')} / {limits('sse')} |")
    return lines


def recovery_table(records: list[dict]) -> list[str]:
    rs = [r for r in records if r["scenario"] == "recovery" and r["metrics"]]
    if not rs:
        return []
    lines = ["| run | clients | missed each | got all, once, in order | told recovered: true "
             "| seconds until all recovered | target | Redis commands sent per client (all "
             "run, scripts' own included) | result |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rs:
        m = r["metrics"]
        commands = ", ".join(f"{k} {v}" for k, v in sorted(m.get("redis_commands", {}).items()))
        lines.append(
            f"| {r['run'] + 1} | {_fmt(m.get('clients'))} | {_fmt(m.get('missed'))} "
            f"| {_fmt(m.get('complete_clients'))} | {_fmt(m.get('recovered_true'))} "
            f"| {_fmt(m.get('seconds_to_all_recovered'), 3)} | ≤ {m.get('target_s')} s "
            f"| {_fmt(m.get('redis_commands_sent_per_client'), 2)} ({commands}) "
            f"| {'pass' if m.get('pass') else 'FAIL'} |")
    return lines


def cookies_table(records: list[dict], phase: str = "cookies-phase") -> list[str]:
    rs = [r for r in records if r["scenario"] == phase and r["metrics"]]
    if not rs:
        return []
    lines = ["| run | phase | clients | connected | connects/s | p50 ms | p99 ms | 503s "
             "| SQL statements (per client) | DB connections | server CPU | generator CPU "
             "| limit |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rs:
        m = r["metrics"]
        lines.append(
            f"| {r['run'] + 1} | {r['params'].get('phase')} | {_fmt(m.get('clients'))} "
            f"| {_fmt(m.get('connected'))} | {_fmt(m.get('connects_per_s'))} "
            f"| {_fmt(m.get('p50_ms'))} | {_fmt(m.get('p99_ms'))} "
            f"| {_fmt(m.get('refused_503'))} | {_fmt(m.get('db_queries'))} "
            f"({_fmt(m.get('db_queries_per_client'), 2)}) | {_fmt(m.get('db_connections'))} "
            f"| {_pct(m.get('server_cpu'), 0)} | {_pct(m.get('generator_cpu'), 0)} "
            f"| {m.get('limit', '–')} |")
    for r in records:
        if r["scenario"] != "cookies" or r["status"] != "ok":
            continue
        m = r["metrics"]
        lines += ["", f"Run {r['run'] + 1}, ratios: resume / cookies connects/s "
                      f"{_fmt(m.get('resume_vs_cookies_connects'), 2)}×, p99 connect time "
                      f"{_fmt(m.get('resume_vs_cookies_p99'), 2)}×; cookies / anonymous "
                      f"connects/s {_fmt(m.get('cookies_vs_anonymous_connects'), 2)}× (target "
                      f"≥ {m.get('target')}×); resume / anonymous "
                      f"{_fmt(m.get('resume_vs_anonymous_connects'), 2)}×; SQL statements "
                      f"during the resume storm: {m.get('db_queries', {}).get('resume')} "
                      f"(target 0). Both targets: {'pass' if m.get('pass') else 'FAIL'}."]
    for r in records:
        if r["scenario"] != "cookie-kill" or not r["metrics"]:
            continue
        m = r["metrics"]
        lines += ["", f"Run {r['run'] + 1}, node A killed: {_fmt(m.get('reconnecting'))} "
                      f"clients back on B, {_pct(m.get('back_and_recovered_share'), 1)} back and "
                      f"told recovered within {m.get('target_s')} s of the kill (p50 "
                      f"{_fmt(m.get('p50_back_ms'))} ms, p99 {_fmt(m.get('p99_back_ms'))} ms to "
                      f"the 101); {_fmt(m.get('complete_clients'))}/{_fmt(m.get('clients'))} "
                      f"clients got every message of the storm ({_fmt(m.get('duplicates'))} "
                      f"twice); SQL statements on B: {_fmt(m.get('db_queries'))} "
                      f"({_pct(m.get('db_queries_share'), 2)} of the clients); connects/s "
                      f"{_fmt(m.get('vs_anonymous_connects'), 2)}× the anonymous storm's "
                      f"(limit: {m.get('limit')}); B's CPU per connect "
                      f"{_fmt(m.get('server_cpu_ms_per_connect'), 2)} ms against "
                      f"{_fmt(m.get('anonymous_server_cpu_ms_per_connect'), 2)} ms anonymous. Targets (≤ 1 % SQL, 99 % within 5 s, "
                      f"≥ 0.8×): {'pass' if m.get('pass') else 'FAIL'}."]
    return lines


def profile_section(records: list[dict], top: int = 15) -> list[str]:
    out: list[str] = []
    for scenario in ("profile", "profile-connect"):
        rs = [r for r in records if r["scenario"] == scenario and r["status"] == "ok"]
        if not rs:
            continue
        m = rs[0]["metrics"]
        p = rs[0]["params"]
        if scenario == "profile":
            f = m.get("fanout", {})
            what = (f"during fan-out to {p.get('clients')} clients × {p.get('rate')} msg/s for "
                    f"{p.get('duration')} s; that phase: delivered {f.get('delivered_per_s')} "
                    f"frames/s, p99 {f.get('p99_ms')} ms, server CPU "
                    f"{_pct(f.get('server_cpu'), 0)}, {f.get('server_cpu_us_per_frame')} µs per frame")
        else:
            c = m.get("connect", {})
            what = (f"while {c.get('clients')} clients connect ({c.get('connected')} in "
                    f"{c.get('seconds')} s, {c.get('connect_rate')}/s)")
        out += ["", f"**{'Fan-out' if scenario == 'profile' else 'Connecting'}** — py-spy "
                f"(200 Hz, --nonblocking, samples of the active thread only): "
                f"{m.get('samples'):,} samples of the ws4tx server {what}. Raw collapsed "
                f"stacks: `{m.get('raw_file')}`.", "",
                "| self % | function (where the CPU is spent) | | inclusive % | function (with its callees; the reactor loop left out) |",
                "|---:|---|---|---:|---|"]
        own, incl = m.get("self_top", [])[:top], m.get("inclusive_top", [])[:top]
        for i in range(max(len(own), len(incl))):
            a = own[i] if i < len(own) else ["", ""]
            b = incl[i] if i < len(incl) else ["", ""]
            out.append(f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |")
        by_line = m.get("self_lines_top", [])
        if by_line:
            out += ["", "Hottest lines (self):", "", "| self % | line |", "|---:|---|"]
            out += [f"| {pct} | `{name}` |" for name, pct in by_line[:12]]
    return out[1:]


def targets(records: list[dict]) -> list[str]:
    lines = ["| target | measured | result |", "|---|---|---|"]

    def verdict(ok: Optional[bool]) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**missed**")

    # 1. max rate
    mr = [r for r in records if r["scenario"] == "maxrate" and r["status"] == "ok"]
    if mr:
        best = {}
        lowest = min((r["metrics"].get("lowest_tried") or 0) for r in mr)
        for s in _systems(mr):
            vals = [r["metrics"].get("max_rate") or 0 for r in mr if r["system"] == s]
            best[s] = statistics.median(vals)

        def shown(v: Any) -> str:
            return f"< {lowest}" if not v else f"{v:g}"
        ws, ce = best.get("ws4tx"), best.get("ceiling")
        peers = {s: v for s, v in best.items()
                 if not s.startswith(("ceiling", "ws4tx", "floor"))}
        ok = None
        if ws is not None and ce:
            ok = ws >= 0.5 * ce and all(ws > v for v in peers.values())
        n = mr[0]["params"].get("clients")
        lines.append(f"| max fan-out rate to {n:,} clients (≥ 99.9 %, p99 < 100 ms) ≥ ½ ceiling and above every peer "
                     f"| ws4tx {shown(ws)} msg/s, ceiling {shown(ce)} (½ = {ce / 2 if ce else '–'}), peers: "
                     f"{', '.join(f'{k} {shown(v)}' for k, v in peers.items()) or '–'} | {verdict(ok)} |")
        if ws is not None and best.get("ws4tx-2w") is not None:
            two = best["ws4tx-2w"]
            probes = [r for r in records if r["scenario"] == "maxrate-probe"
                      and r["system"] == "ws4tx-2w" and r["status"] == "ok"
                      and r["params"].get("rate") == two]
            gen = _med(probes, "generator_cpu")
            lines.append(f"| multi-core: fan-out with `--workers 2` against 1 (max rate, {n:,} clients) "
                         f"| 2 workers {shown(two)} msg/s, 1 worker {shown(ws)} "
                         f"({two / ws if ws else float('nan'):.2f}×); load generator at "
                         f"{_fmt(gen, 2)} of a core at that rate | shown (no target) |")
    lines += floor_targets(records)
    # 2. p99 at 1000 x 10
    fo = _group(records, "fanout", ("clients", "rate"))
    ws = _med(fo.get((1000, 10, "ws4tx"), []), "p99_ms")
    ce = _med(fo.get((1000, 10, "ceiling"), []), "p99_ms")
    ok = None if ws is None or ce is None else ws <= 1.5 * ce
    lines.append(f"| p99 latency at 1000 clients × 10 msg/s ≤ 1.5 × ceiling | ws4tx {_fmt(ws)} ms, ceiling {_fmt(ce)} ms "
                 f"({_ratio(ws, ce)}) | {verdict(ok)} |")
    # 3/4. idle
    idle = _group(records, "idle", ("clients",))
    counts = sorted({k[0] for k in idle})
    n = 10000 if 10000 in counts else (counts[-1] if counts else None)
    if n is not None:
        ws = _med(idle.get((n, "ws4tx"), []), "rss_per_conn_kb")
        ce = _med(idle.get((n, "ceiling"), []), "rss_per_conn_kb")
        ok = None if ws is None or ce is None else ws <= 1.5 * ce
        lines.append(f"| idle memory per connection at {n:,} ≤ 1.5 × ceiling | ws4tx {_fmt(ws)} KB, ceiling {_fmt(ce)} KB "
                     f"({_ratio(ws, ce)}) | {verdict(ok)} |")
        ws = _med(idle.get((n, "ws4tx"), []), "connect_rate")
        ce = _med(idle.get((n, "ceiling"), []), "connect_rate")
        ok = None if ws is None or ce is None else ws >= 0.7 * ce
        lines.append(f"| connect rate (handshake + subscription, anonymous), {n:,} clients, ≥ 70 % of ceiling "
                     f"| ws4tx {_fmt(ws, 0)}/s, ceiling {_fmt(ce, 0)}/s ({_ratio(ws, ce)}) | {verdict(ok)} |")
    # 5. replay
    rp = [r for r in records if r["scenario"] == "replay" and r["system"] == "ws4tx"]
    if rp:
        secs = _med(rp, "seconds_to_all")
        n = rp[0]["params"].get("clients")
        ok = None if secs is None else secs < 1.5
        lines.append(f"| replay of a stored message to {n:,} connecting clients < 1.5 s (ws4redis) "
                     f"| ws4tx {_fmt(secs, 3)} s | {verdict(ok)} |")
    # 6. silent loss
    ws_cells = [r for r in records if r["system"] == "ws4tx" and r["status"] == "ok"
                and r["scenario"] in ("fanout", "channels", "maxrate-probe")]
    if ws_cells:
        lossy = [r for r in ws_cells if (r["metrics"].get("lost") or 0) > 0]
        missing = sum(r["metrics"].get("lost_open") or 0 for r in ws_cells)
        lagged = sum(r["metrics"].get("server_lagged_frames") or 0 for r in ws_cells)
        # Missing on open clients beyond what the server said it dropped, phase by phase.
        silent = sum(max(0, (r["metrics"].get("lost_open") or 0)
                         - (r["metrics"].get("server_lagged_frames") or 0)) for r in ws_cells)
        closed = sum(r["metrics"].get("lost_closed") or 0 for r in ws_cells)
        codes: dict[str, int] = {}
        for r in ws_cells:
            for code, c in (r["metrics"].get("closed_by_server") or {}).items():
                codes[code] = codes.get(code, 0) + c
        logged = sum(r["metrics"].get("server_slow_drops") or 0 for r in ws_cells)
        ok = silent == 0 and codes.get("4008", 0) == logged
        where: dict[str, int] = {}
        for r in lossy:
            p = r["params"]
            key = f"{r['scenario']} {p.get('clients')}×{p.get('rate', p.get('rounds_per_s'))}"
            where[key] = where.get(key, 0) + 1
        lines.append(
            f"| no silent loss: what is lost the server says it dropped (counted, logged), or is on "
            f"clients it closed with a code "
            f"| {len(lossy)} of {len(ws_cells)} ws4tx phases ended with messages missing "
            f"({', '.join(f'{k} msg/s: {c}' for k, c in sorted(where.items())) or 'none'}); "
            f"missing on clients left open: {missing:,}, of which the server counted as dropped "
            f"(over --max-lag): {lagged:,}, not accounted for: {silent:,}; on clients the "
            f"server closed: {closed:,}; closes seen by clients: "
            f"{', '.join(f'{c}×{k}' for k, c in sorted(codes.items())) or 'none'}; slow clients "
            f"ws4tx counted: {logged} | {verdict(ok)} |")
    return lines


def floor_targets(records: list[dict], clients: int = 1000, rate: int = 100) -> list[str]:
    """The fan-out floor's targets (issue 14), for every ws4tx system of the run: server
    CPU per delivered frame at ``clients`` × ``rate`` msg/s ≤ 1.5 × the picows floor's,
    and the max rate to ``clients`` ≥ 0.8 × the floor's."""
    lines: list[str] = []

    def verdict(ok: Optional[bool]) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**missed**")

    fo = _group(records, "fanout", ("clients", "rate"))
    floor_us = _med(fo.get((clients, rate, FLOOR), []), "server_cpu_us_per_frame")
    node_us = _med(fo.get((clients, rate, "floor-node"), []), "server_cpu_us_per_frame")
    mr = [r for r in records if r["scenario"] == "maxrate" and r["status"] == "ok"]

    def max_rate(system: str) -> Optional[float]:
        vals = [r["metrics"].get("max_rate") or 0 for r in mr if r["system"] == system]
        return statistics.median(vals) if vals else None

    floor_max, node_max = max_rate(FLOOR), max_rate("floor-node")
    if mr:
        clients = mr[0]["params"].get("clients", clients)
    wanted = [s for s in _systems(records) if s.startswith("ws4tx") and s != "ws4tx-2w"]
    for s in wanted:
        us = _med(fo.get((clients, rate, s), []), "server_cpu_us_per_frame")
        if us is not None and floor_us is not None:
            lines.append(
                f"| server CPU per delivered frame at {clients:,} clients × {rate} msg/s "
                f"≤ 1.5 × the picows floor's ({s}) | {s} {_fmt(us, 2)} µs, floor-picows "
                f"{_fmt(floor_us, 2)} µs ({_ratio(us, floor_us)}); floor-node {_fmt(node_us, 2)} µs "
                f"| {verdict(us <= 1.5 * floor_us)} |")
        best = max_rate(s)
        if best is not None and floor_max:
            lines.append(
                f"| max rate to {clients:,} clients ≥ 0.8 × the picows floor's ({s}) "
                f"| {s} {best:g} msg/s, floor-picows {floor_max:g} ({_ratio(best, floor_max)}); "
                f"floor-node {_fmt(node_max, 0)} | {verdict(best >= 0.8 * floor_max)} |")
    return lines


def render(records: list[dict], header: list[str]) -> str:
    out = list(header)
    sections = [
        ("Fan-out: N clients on one broadcast channel", fanout_table(records),
         "Medians of the runs. delivered = frames received by all clients, up to the end of "
         "the drain window, per second of publishing (in overload more than the server can "
         "sustain: the latency shows how late); loss = missing sequence numbers at the end of "
         "the drain window (nothing new for 1 s and, for ws4tx, an empty fan-out backlog; at "
         "most 15 s after the last publish); latency = receive time − send time; CPU as a share of one "
         "core; 'server waited for CPU' = share of the window the server was runnable but "
         "another process had its core (other load on the machine). Higher rates at a client "
         "count are skipped once a rate loses ≥ 1 % or has p99 ≥ 1 s. "
         f"limit: 'server' when the server used ≥ {BOUND:.0%} of its cores, 'generator' when "
         f"the load generator used ≥ {BOUND:.0%} of its core, 'load core' when it did not but "
         "it, the publisher and Redis (pinned to one core) together did, 'starved' when a "
         "process used less but used and waited for its core together make ≥ 90 % (other "
         "load on the machine had it), 'neither' below that: a cell limited by anything but "
         "the server measures that, not the server."),
        ("Max rate: the highest publish rate at which ≥ 99.9 % reaches every client with p99 < 100 ms",
         maxrate_table(records),
         "Bisection over the bounded set of rates given by --maxrate-rates; a probe passes when "
         "≥ 99.9 % of the frames arrive, p99 < 100 ms and the publisher kept the rate. The "
         "last column says, per run, which process was saturated at the lowest rate that "
         "failed (as in the fan-out table): a max rate is the server's only where that is "
         "'server' (or 'neither': then latency, not CPU, ended it)."),
        ("Idle connections", idle_table(records),
         "Clients are added in steps on one server (to 1000, then 5000, then 10000). KB per "
         "connection = (server RSS at N − RSS before the first client) / N; connects/s = the "
         "step's new connections / the time until its last handshake (and, for Socket.IO, "
         "namespace connect) finished."),
        ("Many channels: each client on its own user channel", channels_table(records), ""),
        ("Replay: clients connecting to a channel with a stored message", replay_table(records), ""),
        ("History cost: max rate to event clients without and with history (ws4tx)",
         history_table(records),
         "The max-rate bisection twice in one invocation, both with event clients "
         "(ws4tx.v1): without history, and with --history on the facility (the publish "
         "script, positions, publication envelopes)."),
        ("Server-Sent Events against WebSockets (ws4tx)", sse_table(records),
         "Issue 23: idle memory per client (--sse-clients of each transport on a fresh "
         "server), the max-rate bisection to --maxrate-clients with each transport, and "
         "the server's CPU per SSE event against per WebSocket frame at the highest rate "
         "both were probed at (what the max rates come to when the server is not starved "
         "by other load). first: the transport measured first in that run."),
        ("Recovery: clients reconnecting with their position (ws4tx)", recovery_table(records),
         "N event clients of a facility with history disconnect, messages are published, and "
         "all reconnect at once with recover= (as ws4tx.js does): the time from the first "
         "reconnect until every client got every missed message and ws4tx.recovered true; "
         "Redis commands counted by INFO commandstats: those the server sent per client (its "
         "GET for the ws4redis replay, and the history reads, shared by the clients that "
         "join in one reactor turn), and every command Redis ran (the scripts' own "
         "included)."),
        ("Cookie storm: logged-in clients reconnecting at once (ws4tx)",
         cookies_table(records),
         "N event clients on one server with a Django site (sessions and users in SQLite, "
         "each client a user with a session of its own) connect at once, --concurrency "
         "handshakes in flight, a 503 (the authentication queue full) tried again after its "
         "Retry-After as ws4tx.js does: anonymous, then with their session cookies (which "
         "get a resume token), then with their resume tokens. Connect time: from a "
         "client's first attempt to its 101. SQL statements and database connections are "
         "counted in the server process (servers/cookie_site.py)."),
        ("Cookie storm on two nodes, one SIGKILLed (ws4tx)",
         cookies_table(records, "cookie-kill-phase"),
         "N logged-in event clients on two ws4tx nodes (one Redis, one Django site): "
         "anonymous: N/2 anonymous clients to B first (the baseline); login: all N with their "
         "session cookies, half on each node (SQL: B's); kill: node A SIGKILLed, its clients "
         "back on B at once with cookie, resume token and recover=, times from the kill, "
         "while messages are published on their channel (figures of B)."),
        ("One Redis against three shards and a cluster (ws4tx, many channels)",
         shards_table(records),
         "The many-channels workload (each client on its own user channel) on one ws4tx "
         "server, first with one Redis, then with its channels sharded over three Redis "
         "servers (the publisher's Django side given the same three), then on a Redis "
         "Cluster of three primaries (sharded pub/sub). paced: --users-rate "
         "rounds per second; saturated: the publisher pushed to --shards-rate rounds per "
         "second (it publishes one channel per call, as an application does): what it "
         "reaches is the publish throughput. Redis commands per message count every "
         "command the servers ran during the phase."),
        ("Where the time goes (ws4tx)", profile_section(records), ""),
        ("Targets of the issue (ratios to what this run measured)", targets(records), ""),
    ]
    for title, lines, note in sections:
        if not lines:
            continue
        out += ["", f"### {title}", ""]
        if note:
            out += [note, ""]
        out += lines
    return "\n".join(out) + "\n"


def labels() -> list[str]:
    return [f"- `{name}`: {ALL[name].label}" for name in ORDER]
