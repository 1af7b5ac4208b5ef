"""The ceiling of the ws4tx benchmark suite: bare Autobahn on Twisted, no Redis.

Clients connect to ``ws://HOST:PORT/<channel path>``. A tiny local trigger (a TCP port
taking lines ``<channel path> <payload>\\n``) hands payloads to the server, which builds
the WebSocket frame once (``factory.prepareMessage``) and writes it to every client of
that path (``sendPreparedMessage``): the least work any Twisted/Autobahn push server can
do per message. It also remembers the last payload of each path and sends it to a client
that connects later (a lower bound for ws4tx's replay).

Usage: python ceiling.py WS_PORT TRIGGER_PORT
"""

from __future__ import annotations

import sys

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import endpoints, protocol, reactor
from twisted.protocols.basic import LineReceiver


class Client(WebSocketServerProtocol):
    path = ""

    def onConnect(self, request):
        self.path = request.path
        return None

    def onOpen(self) -> None:
        self.factory.channels.setdefault(self.path, set()).add(self)
        last = self.factory.last.get(self.path)
        if last is not None:
            self.sendMessage(last)

    def onClose(self, wasClean, code, reason) -> None:
        members = self.factory.channels.get(self.path)
        if members is not None:
            members.discard(self)
            if not members:
                del self.factory.channels[self.path]


class Factory(WebSocketServerFactory):
    protocol = Client

    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[str, set[Client]] = {}
        self.last: dict[str, bytes] = {}
        self.setProtocolOptions(webStatus=False)

    def broadcast(self, path: str, payload: bytes) -> None:
        self.last[path] = payload
        members = self.channels.get(path)
        if members:
            prepared = self.prepareMessage(payload, isBinary=False)
            for client in tuple(members):
                client.sendPreparedMessage(prepared)


class Trigger(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def lineReceived(self, line: bytes) -> None:
        path, _, payload = line.partition(b" ")
        self.factory.ws.broadcast(path.decode(), payload)


def main() -> None:
    ws_port, trigger_port = int(sys.argv[1]), int(sys.argv[2])
    txaio.use_twisted()
    txaio.set_global_log_level("warn")
    factory = Factory()
    trigger = protocol.Factory.forProtocol(Trigger)
    trigger.ws = factory
    endpoints.serverFromString(
        reactor, f"tcp:{ws_port}:interface=127.0.0.1:backlog=4096").listen(factory)
    endpoints.serverFromString(
        reactor, f"tcp:{trigger_port}:interface=127.0.0.1").listen(trigger)
    print(f"ceiling: WebSocket on {ws_port}, trigger on {trigger_port} "
          f"(reactor {type(reactor).__name__})", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
