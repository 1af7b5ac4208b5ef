"""The benchmark suite's smoke mode, so that ``bench/`` cannot rot unnoticed."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, ClassVar

import pytest
from twisted.trial.unittest import SynchronousTestCase

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run.py")

#: What every fan-out JSON line carries in its metrics.
FANOUT_METRICS = {"delivered_per_s", "loss", "lost", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                  "server_cpu", "server_rss_mb", "generator_cpu", "received", "clients"}


#: Seconds after which a smoke run counts as hung: a bound on a hang, not a speed the smoke
#: promises (a busy machine stretches every run; the bench's own cells say how busy).
HANG = 300


def run_smoke(case: SynchronousTestCase, *args: str) -> tuple[list[dict[str, Any]], str,
                                                                str]:
    """Run ``bench/run.py --smoke *args`` into a directory of its own; fail ``case`` when
    it hangs or exits other than 0. The JSON lines of the one file it wrote, what it
    printed (the end of it, for messages) and its standard output."""
    out = tempfile.mkdtemp(prefix="bench-smoke-")
    try:
        done = subprocess.run([sys.executable, RUN, "--smoke", *args, "--out", out],
                              cwd=REPO, capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired as e:
        case.fail(f"the smoke mode hung (over {HANG} s):\n{(e.stdout or b'')[-3000:]!r}")
    report = done.stdout[-4000:] + done.stderr[-2000:]
    case.assertEqual(done.returncode, 0, report)
    files = glob.glob(os.path.join(out, "*.jsonl"))
    case.assertEqual(len(files), 1, report)
    with open(files[0]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records, report, done.stdout


#: The scenarios of the one smoke run the tests below share: the smoke mode's own, then
#: history, recovery and the cookie storm (ws4tx only: the ceiling's are skipped).
SHARED_SCENARIOS = "fanout,maxrate,idle,channels,replay,history,recovery,cookies"


class BenchSmokeTests(SynchronousTestCase):
    """One ``bench/run.py --smoke`` of every smoke-sized scenario (each scenario a fresh
    server of its own, as in any run); each test reads its part of the results."""

    records: ClassVar[list[dict[str, Any]]]
    report: ClassVar[str]
    stdout: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.records, cls.report, cls.stdout = run_smoke(
            SynchronousTestCase(), "--scenarios", SHARED_SCENARIOS)

    def of(self, system: str, scenario: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["system"] == system and r["scenario"] == scenario]

    def test_smoke_mode(self) -> None:
        """``python bench/run.py --smoke`` runs ws4tx and the bare-Autobahn ceiling (their own
        Redis, real WebSocket clients, this interpreter, no virtualenvs; about 20 s on an
        idle machine for its own scenarios), exits 0 with a plain closing line, and writes
        a fan-out JSON line with the expected fields for both systems, in which the clients
        got the messages."""
        report = self.report
        self.assertRegex(self.stdout.strip().splitlines()[-1],
                         r"^smoke: \d+ passed, 0 failed, \d+ skipped$", report)
        for system in ("ws4tx", "ceiling"):
            fanout = self.of(system, "fanout")
            self.assertTrue(fanout, f"no fan-out line for {system}")
            record = fanout[0]
            self.assertEqual(record["status"], "ok", record)
            self.assertEqual(record["suite"], "ws4tx-bench")
            self.assertLessEqual(FANOUT_METRICS, set(record["metrics"]), record)
            self.assertGreater(record["metrics"]["received"], 0, record)
            self.assertIsNotNone(record["metrics"]["p99_ms"], record)
            self.assertEqual(record["params"]["clients"], 50)
        self.assertFalse([r for r in self.records if r["status"] == "error"], report)

    def test_historyAndRecoveryScenarios(self) -> None:
        """The history-cost and recovery scenarios in smoke size (50 clients, 10 missed
        messages): both run, and the recovery line says every client got every missed
        message, was told it recovered, and cost at most one MGET and one script call."""
        report = self.report
        [history] = self.of("ws4tx", "history")
        # One 1 s probe each way in smoke size: whether it passes is noise, not a verdict.
        self.assertEqual(history["status"], "ok", report)
        self.assertTrue(history["metrics"]["probes_off"] and history["metrics"]["probes_on"])
        [recovery] = self.of("ws4tx", "recovery")
        m = recovery["metrics"]
        self.assertEqual((recovery["status"], m["complete_clients"], m["recovered_true"],
                          m["duplicates"]), ("ok", 50, 50, 0), report)
        # The ws4redis replay's stored messages and the history reads are each one
        # command per turn for every client joining in it: at most one MGET each.
        self.assertGreaterEqual(m["redis_commands"]["mget"], 1, report)
        self.assertLessEqual(m["redis_commands"]["mget"], 50, report)
        self.assertNotIn("get", m["redis_commands"], report)
        self.assertLessEqual(m["redis_commands"]["evalsha"], 50, report)

    def test_cookieStormScenario(self) -> None:
        """The cookie storm in smoke size (50 logged-in clients, about 8 s on a busy
        machine): every client connects in each phase; the cookie storm runs the session,
        user and groups statements of each client and the resume storm none, and the
        summary line gives the ratios and which process was the limit of each phase."""
        report = self.report
        phases = {r["params"]["phase"]: r for r in self.of("ws4tx", "cookies-phase")}
        self.assertEqual(sorted(phases), ["anonymous", "cookies", "resume"], report)
        for record in phases.values():
            self.assertEqual(record["status"], "ok", record)
            self.assertEqual(record["metrics"]["connected"], 50, record)
            self.assertIn("limit", record["metrics"])
        self.assertGreaterEqual(phases["cookies"]["metrics"]["db_queries"], 50, report)
        self.assertEqual(phases["resume"]["metrics"]["db_queries"], 0, report)
        self.assertEqual(phases["resume"]["metrics"]["db_connections"], 0, report)
        [summary] = self.of("ws4tx", "cookies")
        self.assertIsNotNone(summary["metrics"]["resume_vs_cookies_connects"], summary)
        self.assertEqual(set(summary["metrics"]["limits"]), set(phases))


class StreamGeneratorSmokeTests(SynchronousTestCase):
    def test_streamGenerator(self) -> None:
        """``--generator stream`` (frames counted in the byte stream, latency sampled) in
        smoke size, 20 clients for 2 s on ws4tx and the ceiling: every frame is counted,
        none twice or out of order, latency is taken on one frame in 10 of each client (by
        sequence number), and each cell says which process limited it."""
        records, _, _ = run_smoke(self, "--generator", "stream", "--scenarios", "fanout",
                                  "--fanout-clients", "20", "--duration", "2")
        for system in ("ws4tx", "ceiling"):
            [record] = [r for r in records if r["system"] == system]
            m = record["metrics"]
            self.assertEqual(record["status"], "ok", record)
            self.assertIn("stream counter", record["generator"])
            self.assertEqual(record["params"]["clients"], 20)
            self.assertEqual((m["received"], m["duplicates"], m["out_of_order"]),
                             (m["expected_total"], 0, 0), record)
            # each client samples the sequence numbers of its residue modulo 10
            rounds = m["published_rounds"]
            self.assertEqual(m["latency_sampled_every"], 10)
            self.assertGreaterEqual(m["latency_samples"], 20 * (rounds // 10), record)
            self.assertLessEqual(m["latency_samples"], 20 * -(-rounds // 10), record)
            self.assertIn(m["limit"], LIMITS, record)


#: What a cell's ``limit`` may say (bench/benchlib/limits.py).
LIMITS = {"neither", "server", "generator", "load core", "server starved",
          "generator starved", "server and generator", "server and load core",
          "server and generator starved", "server starved and generator",
          "server starved and load core", "server starved and generator starved"}


def _frame(payload: bytes, opcode: int = 0x81) -> bytes:
    n = len(payload)
    head = bytes([opcode, n]) if n < 126 else bytes([opcode, 126]) + n.to_bytes(2, "big")
    return head + payload


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class StreamCounterTests(SynchronousTestCase):
    """The stream client against the per-frame client of bench/loadgen.py (pure logic:
    bytes fed to both, no sockets)."""

    def test_countsWhatThePerFrameClientCounts(self) -> None:
        """Fed the same bytes cut at random places — frames of 100 and 1000 bytes, raw and
        in Socket.IO's framing, with gaps, duplicates, frames out of order, another
        phase's frames, pings and other messages among them — the stream client counts
        the same messages, duplicates, out-of-order, stale and other frames, takes the
        same number of latency samples, and answers the same pings as the client that
        parses every frame."""
        import asyncio
        import random
        import time

        sys.path.insert(0, os.path.join(REPO, "bench"))
        try:
            import loadgen
        finally:
            sys.path.remove(os.path.join(REPO, "bench"))
        rng = random.Random(25)
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)

        def message(tag: str, seq: int, size: int) -> bytes:
            head = f"B|{tag}|{seq:08d}|{time.time_ns():019d}|"
            return (head + "x" * (size - len(head))).encode()

        def client(cls: type) -> tuple[object, _Transport]:
            k = cls("ws://127.0.0.1:1/b", False, loop.create_future())
            transport = _Transport()
            k.connection_made(transport)
            k.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            k.cid = 7
            return k, transport

        for wrap in (lambda b: b, lambda b: b'42["m","' + b + b'"]'):
            for size in (100, 1000):
                for _ in range(40):
                    stream = b""
                    seqs = list(range(300))
                    for i in range(len(seqs) - 1):
                        if rng.random() < 0.01:  # out of order
                            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
                    for seq in seqs:
                        r = rng.random()
                        if r < 0.02:
                            continue  # lost
                        stream += _frame(wrap(message("abcd", seq, size)))
                        if r > 0.98:
                            stream += _frame(wrap(message("abcd", seq, size)))
                        elif 0.50 < r < 0.51:
                            stream += _frame(wrap(message("zzzz", seq, size)))
                        elif 0.60 < r < 0.61:
                            stream += bytes([0x89, 2]) + b"hi"
                        elif 0.70 < r < 0.71:
                            stream += _frame(b'{"event":"other"}')
                    cuts = sorted(rng.sample(range(1, len(stream)), 40))
                    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)],
                                                          strict=True)]
                    loadgen.P.stride = rng.choice([1, 3, 10])
                    seen = []
                    for cls in (loadgen.AsyncioClient, loadgen.StreamClient):
                        loadgen.P.tag, loadgen.P.mark = b"abcd", b"B|abcd|"
                        loadgen.P.lat = loadgen.array.array("q")
                        k, transport = client(cls)
                        k.reset()
                        for chunk in chunks:
                            k.data_received(chunk)
                        seen.append((k.n, k.last, k.dup, k.ooo, k.stale, k.other,
                                     len(loadgen.P.lat), len(transport.written)))
                    self.assertEqual(seen[0], seen[1])
                    self.assertGreater(seen[1][0], 250)


class CountedCostTests(SynchronousTestCase):
    def test_fanout_cost_counts_every_frame(self) -> None:
        """``bench/fanout_cost.py --meter calls`` runs ws4tx's own service and real
        WebSocket clients, one message alone per round and five per round, checks every
        client got every frame, and reports a positive cost per delivered frame for each;
        the turn's work (one send per client) is shared by the round's messages, so a
        frame costs less when five share it."""
        out = tempfile.mkdtemp(prefix="bench-cost-")
        path = os.path.join(out, "cost.jsonl")
        try:
            done = subprocess.run(
                [sys.executable, os.path.join(REPO, "bench", "fanout_cost.py"), "--meter",
                 "calls", "--systems", "ws4tx", "--clients", "20", "--messages", "10",
                 "--batch", "1,5", "--json", path],
                cwd=REPO, capture_output=True, text=True, timeout=HANG)
        except subprocess.TimeoutExpired as e:
            self.fail(f"fanout_cost hung (over {HANG} s):\n{(e.stdout or b'')[-3000:]!r}")
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(path) as f:
            records = {r["batch"]: r for r in map(json.loads, f)}
        self.assertEqual(set(records), {1, 5})
        for record in records.values():
            self.assertEqual(record["frames"], 200, record)
            self.assertGreater(record["per_frame"], 0, record)
        self.assertLess(records[5]["per_frame"], records[1]["per_frame"], records)

    def test_many_connections_get_the_broadcast(self) -> None:
        """``bench/many.py`` (small: 300 connections from two client processes) connects
        every client to ws4tx and to the ceiling and every one of them gets the broadcast;
        its table says so, with a memory per connection for each."""
        done = subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "many.py"), "--connections", "300",
             "--clients-per-process", "150", "--logs", tempfile.mkdtemp(prefix="bench-many-")],
            cwd=REPO, capture_output=True, text=True, timeout=HANG)
        report = done.stdout[-3000:] + done.stderr[-3000:]
        self.assertEqual(done.returncode, 0, report)
        for system in ("ws4tx", "ceiling"):
            self.assertRegex(done.stdout, rf"\| {system} \| 300 \| [\d.]+ \| [\d,]+ \| 300 \| ",
                             report)
