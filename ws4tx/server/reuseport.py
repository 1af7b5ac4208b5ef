"""A TCP server endpoint with SO_REUSEPORT, so that several worker processes listen on one
port and the kernel spreads connections between them.

Usable as an endpoint description once the plugin in ``twisted/plugins`` is installed:
``reuseport:8000:interface=127.0.0.1:backlog=1024`` (the arguments of ``tcp:``).
``twistd ws4tx --workers N`` gives its workers such descriptions. Parsed with a
:class:`~ws4tx.server.directwrite.DirectWriteReactor` (as ``PushService`` does unless
``--no-direct-writes``), its connections write directly too.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from ws4tx.server import directwrite


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on ``interface:port`` with SO_REUSEADDR and SO_REUSEPORT set."""

    def __init__(self, reactor: IReactorSocket | directwrite.DirectWriteReactor, port: int,
                 backlog: int = 50, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        return defer.execute(self._listen, factory)

    def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        if isinstance(self.reactor, directwrite.DirectWriteReactor):
            return directwrite.listen(self.reactor.reactor, self.port, factory, self.backlog,
                                      self.interface, reuse_port=True)
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # The reactor takes a duplicate of the descriptor.
            # Twisted annotates a ServerFactory here; any IProtocolFactory will do.
            reactor: IReactorSocket = self.reactor
            return reactor.adoptStreamPort(
                sock.fileno(), family, factory)  # type: ignore[arg-type]
        finally:
            sock.close()


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """Parses ``reuseport:PORT[:interface=...][:backlog=...]``."""

    prefix = "reuseport"

    def parseStreamServer(self, reactor: IReactorCore, *args: object,
                          **kwargs: object) -> ReusePortEndpoint:
        # Twisted passes the description's fields as strings, positional or named.
        listening = (reactor if isinstance(reactor, directwrite.DirectWriteReactor)
                     else IReactorSocket(reactor))
        return _endpoint(listening, *map(str, args),
                         **{name: str(value) for name, value in kwargs.items()})


def _endpoint(reactor: IReactorSocket | directwrite.DirectWriteReactor, port: str,
              backlog: str = "50", interface: str = "") -> ReusePortEndpoint:
    """The endpoint of ``reuseport:PORT[:backlog=...][:interface=...]``."""
    return ReusePortEndpoint(reactor, int(port), int(backlog), interface)
