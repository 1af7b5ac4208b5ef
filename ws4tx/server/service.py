"""The ws4tx service: a broker, the WebSocket factory, and the ports it listens on.

Add it to any Twisted application (``service.setServiceParent(multiService)``), or mount
``service.resource`` (everything) or ``service.websocket_resource`` (the WebSocket endpoint
alone) in an existing ``twisted.web`` Site. On stop it refuses new connections, closes the
clients with 1001 (going away), waits for them up to ``drain_timeout``, then closes Redis.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource

from ws4tx import closecodes
from ws4tx.redis_address import RedisAddress
from ws4tx.server import metrics, sharded_broker
from ws4tx.server._log import observer
from ws4tx.server.auth import IAuthenticator
from ws4tx.server.broker import IBroker
from ws4tx.server.cluster import ClusterBroker
from ws4tx.server.config import ServerConfig, check, risks
from ws4tx.server.directwrite import DirectWriteReactor
from ws4tx.server.handlers import EventHandler
from ws4tx.server.node import Node
from ws4tx.server.protocol import PushFactory
from ws4tx.server.redis_broker import RedisBroker
from ws4tx.server.web import PushSite, Root


class PushService(service.MultiService):
    """Serves ws4tx WebSockets from a broker (Redis unless given another)."""

    log = Logger(observer=observer)

    def __init__(
        self,
        config: ServerConfig,
        *,
        listen: Iterable[str] = (),
        authenticator: Optional[IAuthenticator] = None,
        handlers: Iterable[type[EventHandler]] = (),
        broker: Optional[IBroker] = None,
        fallback: Optional[resource.Resource] = None,
        run_in_thread: Any = None,
        drain_timeout: float = 10.0,
        reactor: Any = None,
        metrics_peers: Optional[str] = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config = check(config)
        self.reactor = reactor
        self.drain_timeout = drain_timeout
        self.broker: IBroker = broker or sharded_broker.several(
            [_shardBroker(address, config, reactor) for address in config.shards],
            config.prefix)
        #: The node: broker, router, handlers, counters, health, drain.
        self.node = Node(config, self.broker, handlers=handlers, run_in_thread=run_in_thread,
                         clock=reactor)
        #: What handlers may do beyond their client.
        self.server = self.node.server
        self.factory = PushFactory(self.node, authenticator, reactor)
        #: The whole tree (WebSocket endpoint, health check, fallback) for a Site.
        self.resource = Root(self.factory, fallback, metrics_peers)
        #: The WebSocket endpoint alone, to mount at ``websocket_url`` in another Site.
        self.websocket_resource = self.resource.websocket
        #: What listens: a Site with a deadline on each connection's request head, each
        #: connection counted toward the per-address cap.
        self.site = PushSite(self.resource, config.handshake_timeout, reactor,
                             addresses=self.node.addresses,
                             body_limit=(config.websocket_url, config.max_message_size),
                             timeout=config.http_idle_timeout)
        self.site.displayTracebacks = False
        # Twisted's endpoint parsing, with ports whose plain-TCP connections write
        # directly (ws4tx.server.directwrite) unless turned off.
        listening: Any = DirectWriteReactor(reactor) if config.direct_writes else reactor
        for description in listen:
            strports.service(description, self.site,
                             reactor=listening).setServiceParent(self)
        if metrics_peers and self.resource.metrics is not None:
            # A --workers worker: its siblings ask it for its metrics here.
            path = metrics.socket_path(metrics_peers)
            strports.service(f"unix:{path}:mode=600",
                             metrics.peer_factory(self.resource.metrics.metrics),
                             reactor=reactor).setServiceParent(self)

    def startService(self) -> None:
        for risk in risks(self.config):
            self.log.warn("risky configuration: {risk}", risk=risk)
        self.node.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # Stop listening first (MultiService stops its children), then drain.
        yield super().stopService()
        node = self.node
        closing = node.closeAll(closecodes.GOING_AWAY, "server shutting down")
        if closing:
            self.log.info("closing {n} WebSocket clients (1001)", n=closing)
            try:
                yield node.whenDrained().addTimeout(self.drain_timeout, self.reactor)
            except defer.TimeoutError:
                self.log.warn("{n} clients did not close within {t} s; dropping them",
                              n=node.clientCount(), t=self.drain_timeout)
                node.dropAll()
        yield node.stop()


def _shardBroker(address: RedisAddress, config: ServerConfig, reactor: Any) -> IBroker:
    """The broker of one shard: a Redis Cluster's (its channels placed on its primaries
    by slot), or one Redis's (Sentinel included)."""
    if address.is_cluster:
        return ClusterBroker(address, reactor, ping_interval=config.redis_ping_interval,
                             timeout=config.redis_timeout, prefix=config.prefix)
    return RedisBroker(address, reactor, ping_interval=config.redis_ping_interval,
                       timeout=config.redis_timeout, prefix=config.prefix)
