"""Prometheus metrics of a node, in the text format of ``prometheus_client``.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one). Its collector reads the node's counters when scraped, so the hot path does no
more than the counting it did already; the one measurement taken per message (never per
client) is the fan-out latency histogram: from a message's arrival from Redis to the end
of its fan-out, backlog wait included.

Under ``--workers N`` each worker also answers on a private Unix socket in a directory
its supervisor made (:data:`WORKER_METRICS_ENV`); whichever worker a scrape reaches asks
the others there and sums every sample, so one scrape sees every worker.
"""

from __future__ import annotations

import glob
import hmac
import os
from typing import Any, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.server import Request

from ws4tx.server._log import observer
from ws4tx.server.node import RECOVERED, RECOVERY_LABELS, Node

#: The environment variable by which a ``--workers`` supervisor names the directory of
#: its workers' metrics sockets.
WORKER_METRICS_ENV = "WS4TX_WORKER_METRICS_DIR"

#: The exposition's content type (text format 0.0.4).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Seconds a worker waits for each other worker's metrics before leaving it out.
PEER_TIMEOUT = 2.0

#: Buckets of the fan-out latency, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

_POSTS = ("POSTs answered (messages sent without a socket), by outcome: ok (2xx), "
          "refused (4xx), failed (5xx)")

#: Every counter of :meth:`Node.counters`: its metric's name (without ``_total``), help,
#: and labels. A test checks that none is missing.
COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "accepted": ("ws4tx_client_num_connect", "WebSocket connections accepted (opened)", {}),
    "sse_accepted": ("ws4tx_client_num_connect_sse", "SSE streams accepted (opened)", {}),
    "posts_ok": ("ws4tx_client_posts", _POSTS, {"outcome": "ok"}),
    "posts_refused": ("ws4tx_client_posts", _POSTS, {"outcome": "refused"}),
    "posts_failed": ("ws4tx_client_posts", _POSTS, {"outcome": "failed"}),
    "sse_binary_dropped": ("ws4tx_sse_binary_dropped",
                           "binary messages not sent to SSE clients (SSE carries text)", {}),
    "messages": ("ws4tx_node_messages_received",
                 "messages received from Redis for clients' channels", {}),
    "frames": ("ws4tx_node_messages_sent", "messages written to clients (one per client)",
               {}),
    "bytes_out": ("ws4tx_node_bytes_sent",
                  "payload bytes written to clients (before compression)", {}),
    "client_messages": ("ws4tx_client_messages_received",
                        "messages received from clients", {}),
    "client_bytes": ("ws4tx_client_bytes_received", "payload bytes received from clients",
                     {}),
    "lagged": ("ws4tx_node_lagged_messages",
               "messages dropped because they waited over max_lag or the backlog was full",
               {}),
    "lagged_frames": ("ws4tx_node_lagged_frames",
                      "client deliveries lost with the lagged messages", {}),
    "oversized": ("ws4tx_node_dropped_messages",
                  "messages from Redis dropped before fan-out", {"reason": "oversized"}),
    "forged": ("ws4tx_node_dropped_messages", "messages from Redis dropped before fan-out",
               {"reason": "forged"}),
    "slow_consumers": ("ws4tx_client_slow_consumers",
                       "clients disconnected for not reading", {}),
    "rate_limited": ("ws4tx_client_rate_limited", "client messages over the rate limit",
                     {}),
    "raw_envelopes": ("ws4tx_client_raw_envelopes",
                      "raw client messages refused for looking like the server's envelopes",
                      {}),
    "subscribes": ("ws4tx_client_subscribes",
                   "subscribe frames that added channels to their connection",
                   {"outcome": "subscribed"}),
    "subscribes_refused": ("ws4tx_client_subscribes",
                           "subscribe frames that added channels to their connection",
                           {"outcome": "refused"}),
    "subscribes_granted": ("ws4tx_client_subscribes_granted",
                           "subscribe frames admitted by a signed grant, without "
                           "authentication work", {}),
    "unsubscribes": ("ws4tx_client_unsubscribes",
                     "unsubscribe frames that left channels", {}),
    "store_refused": ("ws4tx_client_store_refused",
                      "messages not stored: their sender was over its storage budget", {}),
    "outages": ("ws4tx_redis_outages", "times the Redis connection was lost", {}),
    "reconnects": ("ws4tx_redis_reconnects", "reconnections to Redis", {}),
    "shard_outages": ("ws4tx_redis_shard_outages",
                      "times one Redis server of several (shards) was lost", {}),
    "deaf": ("ws4tx_redis_deaf_detections",
             "times Redis was connected but its delivery probe did not come back", {}),
    "store_failures": ("ws4tx_redis_store_failures",
                       "messages delivered but not stored for replay", {}),
    "refused": ("ws4tx_redis_subscriptions_refused", "subscriptions Redis refused", {}),
    "control_commands": ("ws4tx_control_commands", "the site's commands executed", {}),
    "control_invalid": ("ws4tx_control_invalid",
                        "messages on the control channel ignored as malformed", {}),
    "closed_by_site": ("ws4tx_control_closed_connections",
                       "connections closed at the site's command", {}),
    "unsubscribed_by_site": ("ws4tx_control_unsubscribed_connections",
                             "connections that left channels at the site's command", {}),
    "subscribed_by_site": ("ws4tx_control_subscribed_connections",
                           "connections that subscribed channels at the site's command", {}),
    "skips": ("ws4tx_history_skips",
              "live messages that skipped offsets (lost on the way): channel recovered", {}),
    "epochs": ("ws4tx_history_epochs", "live messages of a new epoch (history lost)", {}),
    "duplicates": ("ws4tx_history_duplicates",
                   "live messages dropped because their offset was handed on already", {}),
    "recoveries": ("ws4tx_history_recoveries",
                   "channels read from their history by the node (skip or outage)", {}),
    "recovered": ("ws4tx_history_recovered_messages",
                  "messages the node handed on from a history read", {}),
    "unrecovered": ("ws4tx_history_unrecovered",
                    "channel recoveries that failed (clients told recovered: false)", {}),
    "impossible": ("ws4tx_history_impossible_positions",
                   "live positions a history read showed could not be true (forged), "
                   "dropped", {}),
    "history_reads": ("ws4tx_history_reads",
                      "history reads for joining clients sent to Redis (one per channel "
                      "and batch)", {}),
    "history_batches": ("ws4tx_history_read_batches",
                        "batches those reads went in (one per reactor turn; a batch costs "
                        "one round trip to each Redis server it reads from)", {}),
    "history_read_requests": ("ws4tx_history_read_requests",
                              "joining clients' history reads, answered by those reads", {}),
    "presence_writes": ("ws4tx_presence_writes",
                        "presence updates written to Redis (one per facility and batch)", {}),
    "presence_events": ("ws4tx_presence_events",
                        "coalesced presence events sent to this node's clients", {}),
    "presence_trimmed": ("ws4tx_presence_trimmed",
                         "expired presence entries (clients of a dead node) trimmed", {}),
}


class NodeCollector(Collector):
    """Reads a node's gauges and counters at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node = self.node
        hub = node.router.hub
        yield _gauge("ws4tx_node_processes", "ws4tx processes in this answer", 1)
        yield _gauge("ws4tx_redis_up", "1 while messages flow from Redis",
                     int(node.health().up))
        yield _gauge("ws4tx_node_num_clients", "connected clients", node.clientCount())
        yield _gauge("ws4tx_node_num_sse_clients", "connected SSE clients (among the clients)",
                     sum(1 for client in hub.clients()
                         if getattr(client, "transport_name", "") == "sse"))
        yield _gauge("ws4tx_node_num_channels", "channels with at least one local client",
                     len(hub.channels()))
        yield _gauge("ws4tx_node_num_subscriptions", "subscriptions of the local clients",
                     sum(len(hub.channels_of(client)) for client in hub.clients()))
        yield _gauge("ws4tx_node_backlog", "messages waiting for a later fan-out turn",
                     node.router.backlog)
        families: dict[str, CounterMetricFamily] = {}
        for key, value in node.counters().items():
            name, documentation, labels = COUNTERS[key]
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    name, documentation, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        closed = CounterMetricFamily("ws4tx_client_num_disconnect",
                                     "WebSocket connections closed, by close code",
                                     labels=["code"])
        for code, count in sorted(node.closed.items()):
            closed.add_metric([code], count)
        recover = CounterMetricFamily(
            "ws4tx_client_recover",
            "recoveries of missed messages asked for on reconnect (recover=), by whether "
            "they succeeded and, when not, the first failing channel's reason",
            labels=["recovered", "reason"])
        for reason in RECOVERY_LABELS:
            recover.add_metric(["yes" if reason == RECOVERED else "no", reason],
                               node.recoveries[reason])
        yield from families.values()
        yield closed
        yield recover


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class NodeMetrics:
    """A node's registry: its collector and its fan-out latency histogram."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NodeCollector(node))
        self.latency = Histogram(
            "ws4tx_node_fanout_latency_seconds",
            "seconds from a message's arrival from Redis to the end of its fan-out",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        node.router.fanout_observer = self.latency.observe

    def exposition(self) -> bytes:
        """This node's metrics in the text format."""
        return generate_latest(self.registry)


class _Answer(protocol.Protocol):
    """Writes this worker's exposition to whoever connects, then closes."""

    def connectionMade(self) -> None:
        factory: Any = self.factory
        transport: Any = self.transport
        transport.write(factory.metrics.exposition())
        transport.loseConnection()


class _Read(protocol.Protocol):
    """Reads a peer's exposition until it closes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.chunks))


def peer_factory(metrics: NodeMetrics) -> protocol.Factory:
    """The factory a worker listens with on its metrics socket."""
    factory: protocol.Factory = protocol.Factory.forProtocol(_Answer)
    factory.metrics = metrics  # type: ignore[attr-defined]
    return factory


def socket_path(directory: str) -> str:
    """This process's metrics socket in ``directory``."""
    return os.path.join(directory, f"{os.getpid()}.sock")


@defer.inlineCallbacks
def _ask(reactor: Any, path: str) -> Any:
    """A peer's exposition, or None if it does not answer in time (it ended, say)."""
    endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=PEER_TIMEOUT)
    try:
        reader = yield endpoint.connect(protocol.Factory.forProtocol(_Read))
        text = yield reader.done.addTimeout(PEER_TIMEOUT, reactor)
    except Exception:  # noqa: BLE001 - a worker that ended or hangs is left out
        return None
    return text


def merge(texts: Iterable[bytes]) -> bytes:
    """The sum of expositions, sample by sample (labels kept apart), in the text
    format. Gauges add up too (clients, channels, backlog of all processes);
    ``_created`` samples, which would not, are left out."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation,
                                               family.type)
                sums[family.name] = {}
            total = sums[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                total[key] = total.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in sums[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return generate_latest(_Fixed(families.values()))


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def register(self) -> None:
        pass


class MetricsResource(resource.Resource):
    """``metrics_url``: the node's metrics (summed over every worker when ``peers`` names
    the workers' socket directory), behind ``Authorization: Bearer <health_token>`` when
    the configuration has a token (401 without it)."""

    isLeaf = True
    log = Logger(observer=observer)

    def __init__(self, node: Node, reactor: Any, peers: Optional[str] = None) -> None:
        super().__init__()
        self.metrics = NodeMetrics(node)
        self.reactor = reactor
        self.peers = peers
        token = node.config.health_token
        self._authorization = b"Bearer " + token.encode() if token else None

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        if self._authorization is not None:
            given = (request.getHeader(b"authorization") or b"").strip()
            if not hmac.compare_digest(given, self._authorization):
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b"Bearer")
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"the metrics need Authorization: Bearer <the health token>\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        own = self.metrics.exposition()
        if not self.peers:
            return own
        mine = socket_path(self.peers)
        others = [p for p in sorted(glob.glob(os.path.join(self.peers, "*.sock")))
                  if p != mine]
        d = defer.gatherResults([_ask(self.reactor, p) for p in others])

        def answer(texts: list[Optional[bytes]]) -> None:
            body = merge([own, *(t for t in texts if t)])
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            self.log.failure("summing the workers' metrics failed", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.finish()

        d.addCallback(answer).addErrback(failed)
        return server.NOT_DONE_YET
