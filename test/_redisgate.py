"""A TCP proxy to a real Redis that can hold Redis's answers on the command connections
until the server sends a given command: whether the server sent it without waiting for
the answers before it (pipelined) or only after them (then the proxy lets them through
after ``patience`` seconds and says so)."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import endpoints, protocol, reactor
from twisted.internet.interfaces import IDelayedCall

#: What a connection sends that makes it a subscriber (whose answers are never held).
_SUBSCRIBING = (b"SUBSCRIBE", b"subscribe", b"SSUBSCRIBE", b"ssubscribe")


class _Side(protocol.Protocol):
    """One side of a proxied connection; ``to_redis``: the side the server talks to."""

    peer: Optional[_Side] = None
    factory: RedisGate

    def __init__(self, to_redis: bool) -> None:
        self.to_redis = to_redis
        self.subscriber = False
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        gate = self.factory
        if self.to_redis:
            # What the server sends to Redis.
            if any(word in data for word in _SUBSCRIBING):
                self.subscriber = True
            if self.peer is not None:
                self.peer.transport.write(data)
            if gate.waiting_for is not None and gate.waiting_for in data:
                gate.open("sent")
            return
        # What Redis answers.
        server_side = self.peer
        if gate.waiting_for is not None and server_side is not None \
                and not server_side.subscriber:
            server_side.held.append(data)
            gate.holding.add(server_side)
        elif server_side is not None:
            server_side.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()


class RedisGate(protocol.Factory):
    """Proxies every connection to the Redis on ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        #: What the server must send for the held answers to go on (None: nothing held).
        self.waiting_for: Optional[bytes] = None
        self.holding: set[_Side] = set()
        #: How the last hold ended: "sent" (the server sent it while the answers before
        #: it were held) or "patience" (it did not: the answers went on after a while).
        self.outcome: Optional[str] = None
        self._patience: Optional[IDelayedCall] = None

    def buildProtocol(self, addr: Any) -> _Side:
        inbound, outbound = _Side(to_redis=True), _Side(to_redis=False)
        inbound.factory = outbound.factory = self
        inbound.peer, outbound.peer = outbound, inbound
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.target_port)
        endpoints.connectProtocol(endpoint, outbound).addErrback(
            lambda f: inbound.transport.loseConnection())
        return inbound

    def hold(self, until_sent: bytes, patience: float) -> None:
        """Hold Redis's answers on the command connections from now until the server sends
        something that contains ``until_sent``, or for ``patience`` seconds."""
        self.waiting_for = until_sent
        self.outcome = None
        self._patience = reactor.callLater(patience, self.open, "patience")

    def open(self, outcome: str) -> None:
        """Let the held answers go on."""
        if self.waiting_for is None:
            return
        self.waiting_for = None
        self.outcome = outcome
        if self._patience is not None and self._patience.active():
            self._patience.cancel()
        self._patience = None
        holding, self.holding = self.holding, set()
        for side in holding:
            held, side.held = side.held, []
            for data in held:
                side.transport.write(data)
