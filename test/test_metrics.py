"""The metrics URL: Prometheus's text format, read back with prometheus_client's parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial import unittest

from ws4tx import closecodes
from ws4tx.server import metrics
from ws4tx.server.node import close_label

from test._server import ServerTestCase, identity_header
from test._wsclient import TIMEOUT, raw_request, status_of

SCRAPE = b"GET /ws4tx/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(port: int, request: bytes = SCRAPE) -> tuple[int, str]:
    status, text = status_of(await raw_request(port, request))
    return status, text.split("\r\n\r\n", 1)[1]


class MetricsTests(ServerTestCase):
    """One node's metrics move as traffic flows."""

    config = ServerTestCase.config.replace(metrics_url="/ws4tx/metrics")

    async def test_countersMoveAsTrafficFlows(self):
        """Connections, subscriptions, messages and bytes in and out, closes by code and
        the fan-out latency, all read back with prometheus_client's parser."""
        # Redis is up once a message made the whole trip (its probe, or this barrier):
        # connected is not enough, the probe may still be on its way.
        await self.service.broker.barrier()
        status, before = await scrape(self.port)
        self.assertEqual(status, 200)
        before_samples = samples(before)
        self.assertEqual(value(before_samples, "ws4tx_node_num_clients"), 0)
        self.assertEqual(value(before_samples, "ws4tx_redis_up"), 1)
        receivers = [await self.client("/ws/foobar?subscribe-broadcast&subscribe-user",
                                       headers=identity_header("john")) for _ in range(2)]
        sender = await self.client("/ws/foobar?publish-broadcast")
        found = samples((await scrape(self.port))[1])
        self.assertEqual(value(found, "ws4tx_node_num_clients"), 3)
        self.assertEqual(value(found, "ws4tx_client_num_connect_total"), 3)
        # Two channels (broadcast, john's) for the receivers; the sender has none.
        self.assertEqual(value(found, "ws4tx_node_num_channels"), 2)
        self.assertEqual(value(found, "ws4tx_node_num_subscriptions"), 4)
        sender.send("hello")
        for receiver in receivers:
            self.assertEqual(await receiver.text(), "hello")
        await receivers[0].close(closecodes.NORMAL)
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        found = samples((await scrape(self.port))[1])
        self.assertEqual(value(found, "ws4tx_client_messages_received_total"), 1)
        self.assertEqual(value(found, "ws4tx_client_bytes_received_total"), 5)
        self.assertEqual(value(found, "ws4tx_node_messages_received_total"), 1)
        self.assertEqual(value(found, "ws4tx_node_messages_sent_total"), 2)
        self.assertEqual(value(found, "ws4tx_node_bytes_sent_total"), 10)
        self.assertEqual(value(found, "ws4tx_client_num_disconnect_total", code="1000"), 1)
        self.assertEqual(value(found, "ws4tx_node_num_clients"), 2)
        self.assertEqual(value(found, "ws4tx_node_fanout_latency_seconds_count"), 1)
        self.assertEqual(
            value(found, "ws4tx_node_fanout_latency_seconds_bucket", le="+Inf"), 1)
        for key in self.factory.node.counters():
            self.assertIn(metrics.COUNTERS[key][0] + "_total", {n for n, _ in found})

    async def test_dashboardQueriesExistingMetrics(self):
        """Every metric docs/grafana-ws4tx.json queries is one the server exports."""
        import json
        import re
        from pathlib import Path

        dashboard = Path(__file__).resolve().parent.parent / "docs" / "grafana-ws4tx.json"
        exprs = [target["expr"] for panel in json.loads(dashboard.read_text())["panels"]
                 for target in panel["targets"]]
        wanted = {name for expr in exprs for name in re.findall(r"ws4tx_\w+", expr)}
        self.assertGreater(len(wanted), 15)
        await self.client("/ws/foobar?subscribe-broadcast")
        await (await self.client("/ws/foobar")).close()  # a close code
        await self.factory.test_left.get().addTimeout(TIMEOUT, reactor)
        self.publish("ws4tx:broadcast:foobar", "x")  # a latency observation
        await self.factory.node.router.barrier()
        exported = {name for name, _ in samples((await scrape(self.port))[1])}
        self.assertEqual(wanted - exported, set())

    async def test_healthTokenGuardsTheMetrics(self):
        """With a health token the metrics need it (401 without, 200 with)."""
        await self.service.stopService()
        await self.startServer(config={"health_token": "t0ken"})
        status, _ = await scrape(self.port)
        self.assertEqual(status, 401)
        status, _ = await scrape(self.port, SCRAPE.replace(
            b"\r\n\r\n", b"\r\nAuthorization: Bearer wrong\r\n\r\n"))
        self.assertEqual(status, 401)
        status, text = await scrape(self.port, SCRAPE.replace(
            b"\r\n\r\n", b"\r\nAuthorization: Bearer t0ken\r\n\r\n"))
        self.assertEqual(status, 200)
        self.assertIn("ws4tx_node_num_clients", text)


class MetricsOffTests(ServerTestCase):
    """Without metrics_url (the default) there is no metrics URL."""

    async def test_offByDefault(self):
        status, _ = await scrape(self.port)
        self.assertEqual(status, 404)


class MergeTests(unittest.SynchronousTestCase):
    """Summing expositions (what a worker does with its siblings')."""

    def test_samplesAddUpByLabels(self):
        one = (b"# HELP a_total x\n# TYPE a_total counter\na_total{code=\"1000\"} 2.0\n"
               b"a_total{code=\"1001\"} 1.0\n# HELP g x\n# TYPE g gauge\ng 3.0\n"
               b"a_created 1.7e9\n")
        two = (b"# HELP a_total x\n# TYPE a_total counter\na_total{code=\"1000\"} 5.0\n"
               b"# HELP g x\n# TYPE g gauge\ng 4.0\n")
        found = samples(metrics.merge([one, two]).decode())
        self.assertEqual(value(found, "a_total", code="1000"), 7)
        self.assertEqual(value(found, "a_total", code="1001"), 1)
        self.assertEqual(value(found, "g"), 7)
        self.assertNotIn("a_created", {n for n, _ in found})

    def test_closeLabelsAreBounded(self):
        """A client's own close code (3000-4999) is counted as ``other``."""
        self.assertEqual(close_label(1000), "1000")
        self.assertEqual(close_label(closecodes.SLOW_CONSUMER), "4008")
        self.assertEqual(close_label(None), "1005")
        self.assertEqual({close_label(c) for c in range(3000, 5000)} - {"4001", "4002",
                                                                        "4008", "4503"}, {"other"})


@pytest.mark.system
class WorkerMetricsTests(unittest.TestCase):
    """``twistd ws4tx --workers 2 --metrics-url``: whichever worker a scrape reaches, it
    answers with the sum of both."""

    async def test_oneScrapeSumsBothWorkers(self):
        import glob
        import os
        import signal

        from ws4tx.server.embedded import free_port

        from test._process import Twistd, started_redis
        from test._wsclient import connect
        from test.test_twistd import children

        server, store = started_redis(self)
        port = free_port()
        child = Twistd().start("--workers", "2", "--metrics-url", "/ws4tx/metrics",
                               "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                               "--redis", server.url)
        self.addCleanup(child.stop, "KILL")
        await child.waitFor(r"(?s)Redis subscriber connected.*Redis subscriber connected")
        workers = children(child.transport.pid)
        self.assertEqual(len(workers), 2, child.output)
        store.set("ws4tx:broadcast:foobar", "stored", ex=60)
        clients = []
        for _ in range(8):  # the kernel spreads them over both workers
            client = await connect(port, "/ws/foobar?subscribe-broadcast")
            self.assertEqual(await client.text(), "stored")  # replayed: subscribed
            clients.append(client)
        self.assertEqual(store.publish("ws4tx:broadcast:foobar", "to all"), 2)
        for client in clients:
            self.assertEqual(await client.text(), "to all")
        # Each scrape is a new connection: the kernel hands them to either worker.
        for _ in range(6):
            status, text = await scrape(port)
            self.assertEqual(status, 200, text)
            found = samples(text)
            self.assertEqual(value(found, "ws4tx_node_processes"), 2, text)
            self.assertEqual(value(found, "ws4tx_node_num_clients"), 8)
            self.assertEqual(value(found, "ws4tx_client_num_connect_total"), 8)
            self.assertEqual(value(found, "ws4tx_node_messages_received_total"), 2)
            self.assertEqual(value(found, "ws4tx_node_messages_sent_total"), 8)
            self.assertEqual(value(found, "ws4tx_node_fanout_latency_seconds_count"), 2)
            self.assertEqual(value(found, "ws4tx_redis_up"), 2)
        # A worker that died is left out (its socket stays behind: SIGKILL), not waited for.
        with open(f"/proc/{workers[0]}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
        directory = environ[metrics.WORKER_METRICS_ENV.encode()].decode()
        self.assertEqual(len(glob.glob(os.path.join(directory, "*.sock"))), 2)
        os.kill(workers[0], signal.SIGKILL)
        await child.waitFor(rf"worker \d \(pid {workers[0]}\) killed by signal 9")
        status, text = await scrape(port)
        self.assertEqual(status, 200, text)
        self.assertIn(value(samples(text), "ws4tx_node_processes"), (1, 2), text)
        self.assertEqual(await child.stop("TERM"), 0, child.output[-3000:])
        # The supervisor removes the sockets' directory.
        self.assertFalse(os.path.exists(directory))


class RecoveryMetricsTests(ServerTestCase):
    """``ws4tx_client_recover_total`` counts each recovery asked for on reconnect by its
    outcome: recovered, or the reason it was not; every label is there from the start
    (zero), so that a dashboard always has its series."""

    async def _setUp(self) -> None:
        import redis

        from test.test_recovery import HISTORY

        self.redis_server = self.startRedis()
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
        self.addCleanup(self.redis.close)
        await self.startServer(config={"history": HISTORY, "metrics_url": "/ws4tx/metrics"})

    async def verdict(self, recover: str) -> dict:
        import json

        from test.test_recovery import CHAT, EVENTS

        client = await self.client(f"/ws/chat?subscribe-broadcast&recover={CHAT}:{recover}",
                                   protocols=EVENTS)
        while True:
            frame = json.loads(await client.text())
            if frame.get("event") == "ws4tx.recovered":
                return frame["data"]

    async def test_recoveriesByOutcome(self):
        from test.test_recovery import CHAT, RecoveryTests

        found = samples((await scrape(self.port))[1])
        for reason in ("none", "epoch", "trimmed", "position", "gap", "unavailable", "other"):
            recovered = "yes" if reason == "none" else "no"
            self.assertEqual(value(found, "ws4tx_client_recover_total", recovered=recovered,
                                   reason=reason), 0, reason)
        first = RecoveryTests.publishWithHistory(self, b"seen")
        RecoveryTests.publishWithHistory(self, b"missed")
        self.assertTrue((await self.verdict(f"{first.epoch}:{first.offset}"))["recovered"])
        self.assertEqual((await self.verdict("0ld:1"))["reason"], "epoch")
        self.assertEqual((await self.verdict(f"{first.epoch}:1")), {
            "recovered": True, "channels": {CHAT: {"recovered": True, "messages": 1}}})
        for _ in range(6):  # the history keeps 5: offset 1 is gone
            RecoveryTests.publishWithHistory(self, b"more")
        self.assertEqual((await self.verdict(f"{first.epoch}:1"))["reason"], "trimmed")
        found = samples((await scrape(self.port))[1])
        self.assertEqual(
            {key[1]: count for key, count in found.items()
             if key[0] == "ws4tx_client_recover_total" and count},
            {(("reason", "none"), ("recovered", "yes")): 2,
             (("reason", "epoch"), ("recovered", "no")): 1,
             (("reason", "trimmed"), ("recovered", "no")): 1})
