"""The benchmark suite's smoke mode, so that ``bench/`` cannot rot unnoticed."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest
from twisted.trial.unittest import SynchronousTestCase

#: Whole processes, browsers or storms: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run.py")

#: What every fan-out JSON line carries in its metrics.
FANOUT_METRICS = {"delivered_per_s", "loss", "lost", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                  "server_cpu", "server_rss_mb", "generator_cpu", "received", "clients"}


class BenchSmokeTests(SynchronousTestCase):
    def test_smoke_mode(self) -> None:
        """``python bench/run.py --smoke`` runs ws4tx and the bare-Autobahn ceiling (their own
        Redis, real WebSocket clients, this interpreter, no virtualenvs) within a minute,
        exits 0 with a plain closing line, and writes a fan-out JSON line with the expected
        fields for both systems, in which the clients got the messages."""
        out = tempfile.mkdtemp(prefix="bench-smoke-")
        try:
            done = subprocess.run([sys.executable, RUN, "--smoke", "--out", out],
                                  cwd=REPO, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            self.fail(f"the smoke mode took over 60 s:\n{(e.stdout or b'')[-3000:]!r}")
        report = done.stdout[-4000:] + done.stderr[-2000:]
        self.assertEqual(done.returncode, 0, report)
        self.assertRegex(done.stdout.strip().splitlines()[-1],
                         r"^smoke: \d+ passed, 0 failed, \d+ skipped$", report)
        files = glob.glob(os.path.join(out, "*.jsonl"))
        self.assertEqual(len(files), 1, report)
        with open(files[0]) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for system in ("ws4tx", "ceiling"):
            fanout = [r for r in records if r["system"] == system and r["scenario"] == "fanout"]
            self.assertTrue(fanout, f"no fan-out line for {system}")
            record = fanout[0]
            self.assertEqual(record["status"], "ok", record)
            self.assertEqual(record["suite"], "ws4tx-bench")
            self.assertLessEqual(FANOUT_METRICS, set(record["metrics"]), record)
            self.assertGreater(record["metrics"]["received"], 0, record)
            self.assertIsNotNone(record["metrics"]["p99_ms"], record)
            self.assertEqual(record["params"]["clients"], 50)
        self.assertFalse([r for r in records if r["status"] == "error"], report)


class HistoryBenchSmokeTests(SynchronousTestCase):
    def test_historyAndRecoveryScenarios(self) -> None:
        """The history-cost and recovery scenarios in smoke size (50 clients, 10 missed
        messages): both run, and the recovery line says every client got every missed
        message, was told it recovered, and cost one GET and at most one script call."""
        out = tempfile.mkdtemp(prefix="bench-smoke-")
        done = subprocess.run([sys.executable, RUN, "--smoke", "--systems", "ws4tx",
                               "--scenarios", "history,recovery", "--out", out],
                              cwd=REPO, capture_output=True, text=True, timeout=90)
        report = done.stdout[-4000:] + done.stderr[-2000:]
        self.assertEqual(done.returncode, 0, report)
        [path] = glob.glob(os.path.join(out, "*.jsonl"))
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        [history] = [r for r in records if r["scenario"] == "history"]
        # One 1 s probe each way in smoke size: whether it passes is noise, not a verdict.
        self.assertEqual(history["status"], "ok", report)
        self.assertTrue(history["metrics"]["probes_off"] and history["metrics"]["probes_on"])
        [recovery] = [r for r in records if r["scenario"] == "recovery"]
        m = recovery["metrics"]
        self.assertEqual((recovery["status"], m["complete_clients"], m["recovered_true"],
                          m["duplicates"]), ("ok", 50, 50, 0), report)
        # One GET each (the ws4redis replay); the history reads are shared per turn.
        self.assertEqual(m["redis_commands"]["get"], 50, report)
        self.assertLessEqual(m["redis_commands"]["evalsha"], 50, report)
