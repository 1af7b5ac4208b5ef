"""A plain-TCP server transport that writes without asking epoll first.

Twisted's TCP transport answers every ``write()`` by registering the socket for
writability (``epoll_ctl`` ADD or MOD), waits for the next poll to say it is writable,
sends, and unregisters it again (``epoll_ctl`` once more) — per socket, per reactor turn.
In a fan-out to 1000 sockets those calls and their Python around them (the reactor's
dispatch of each writable socket with its logging context) cost more than the ``send()``
itself. :class:`DirectWriteServer` buffers what is written in one turn exactly as Twisted
does (``bufferSize``, producers paused and resumed at the same points), then sends it
right after the turn, from one loop over the sockets written to (:class:`_Flusher`), and
registers a socket for writability only when the kernel did not take everything (its
buffer is full, ``EAGAIN``): from then on Twisted's own ``doWrite`` drains it, resumes
its producer, closes it when asked to, as before.

It is a subclass of Twisted's ``tcp.Server`` used through :class:`DirectWritePort`
(``tcp.Port`` with it as ``transport``); TLS is not affected: ``startTLS`` and ``ssl:``
ports write through Twisted's path. :class:`DirectWriteReactor` makes Twisted's own
``tcp:`` endpoints listen with such ports (``strports.service(description, factory,
reactor=DirectWriteReactor(reactor))``), and the ``reuseport:`` endpoint does so too.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable, Optional, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTCP
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from ws4tx.server._log import observer

_log = Logger(observer=observer)

#: Twisted's bound on what one send() is given (FileDescriptor.SEND_LIMIT).
_SEND_LIMIT: int = tcp.Server.SEND_LIMIT


class _Flusher:
    """The sockets written to in this reactor turn, and the one call, right after the
    turn, that sends what each of them has buffered."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pending: list[DirectWriteServer] = []
        self.call: Optional[IDelayedCall] = None

    def add(self, transport: DirectWriteServer) -> None:
        self.pending.append(transport)
        if self.call is None:
            self.call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        pending, self.pending = self.pending, []
        for transport in pending:
            # DirectWriteServer._flush(), its usual case inline (this loop runs once per
            # client and turn of a fan-out): nothing half-sent before, little new, and
            # one send() that takes it all.
            size = transport._tempDataLen
            if (transport._watched or not transport.connected or transport._aborting
                    or transport.dataBuffer or size > _SEND_LIMIT):
                transport._flush()
                continue
            transport._queued = False
            data = b"".join(transport._tempDataBuffer)
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = -1  # EAGAIN, ENOBUFS, a reset...: as Twisted's doWrite says
            if sent == size:
                transport._tempDataBuffer = []
                transport._tempDataLen = 0
                transport.offset = 0
                producer: Any = transport.producer
                if producer is not None and (not transport.streamingProducer
                                             or transport.producerPaused):
                    transport.producerPaused = False
                    producer.resumeProducing()
            elif sent >= 0:
                transport._sentPart(data, sent)
            else:
                transport._writeSlowly()


class DirectWriteServer(tcp.Server):
    """A server TCP connection that sends what it is given right after the reactor turn
    and waits for writability only while the kernel's send buffer is full."""

    #: Whether the reactor is watching this socket for writability (its own doWrite
    #: then drains the buffer).
    _watched = False
    #: Whether this connection waits in the flusher for the end of the turn.
    _queued = False

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: tcp.Port,
                 sessionno: int, reactor: Any) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self._flusher: _Flusher = cast(DirectWritePort, server).flusher
        # What write() and the flush read once per client and message of a fan-out, as
        # attributes of the connection (their class defaults' values): Python finds an
        # instance's own attribute faster than one it must look up through the classes.
        self.TLS = False
        self._writeDisconnected = False
        self._aborting = False
        self.bufferSize = self.bufferSize
        self.producerPaused = False
        self._watched = False
        self._queued = False

    def write(self, data: object) -> None:
        if self.TLS or data.__class__ is not bytes:
            # TLS, or not plainly bytes (Twisted raises TypeError for anything else).
            super().write(data)
            return
        # FileDescriptor.write, but for startWriting(): the flusher sends it after the turn.
        if not self.connected or self._writeDisconnected or not data:
            return
        self._tempDataBuffer.append(data)
        buffered = self._tempDataLen + len(data)
        self._tempDataLen = buffered
        if self.dataBuffer:
            buffered += len(self.dataBuffer)
        if buffered > self.bufferSize:
            self._maybePauseProducer()
        if not (self._watched or self._queued):
            # _queue(), inline: this runs once per client and message of a fan-out.
            self._queued = True
            flusher = self._flusher
            flusher.pending.append(self)
            if flusher.call is None:
                flusher.call = flusher.reactor.callLater(0, flusher.flush)

    def writeSequence(self, iovec: Iterable[object]) -> None:
        if self.TLS:
            super().writeSequence(iovec)
            return
        given = list(iovec)
        if not all(isinstance(chunk, bytes) for chunk in given):
            super().writeSequence(given)  # Twisted's TypeError
            return
        chunks = cast(list[bytes], given)
        if not self.connected or not chunks or self._writeDisconnected:
            return
        self._tempDataBuffer.extend(chunks)
        self._tempDataLen += sum(map(len, chunks))
        self._maybePauseProducer()
        self._queue()

    def _queue(self) -> None:
        if not (self._watched or self._queued):
            self._queued = True
            self._flusher.add(self)

    def _flush(self) -> None:
        """Send what is buffered (the flusher calls it after the turn)."""
        self._queued = False
        if self._watched or not self.connected or self._aborting:
            # The reactor's doWrite will send it, or the connection is going away.
            return
        size = self._tempDataLen
        if (not self.dataBuffer or self.offset == len(self.dataBuffer)) \
                and size <= _SEND_LIMIT:
            # The usual case, in one send(): nothing half-sent before, little new. It runs
            # once per client and turn of a fan-out: no more lookups and calls than needed
            # (join() of one chunk is that chunk).
            data = b"".join(self._tempDataBuffer)
            try:
                sent = self.socket.send(data)
            except OSError:
                sent = -1  # EAGAIN, ENOBUFS, a reset...: as Twisted's doWrite says below
            if sent >= 0:
                self._tempDataBuffer = []
                self._tempDataLen = 0
                if sent == size:
                    self.dataBuffer, self.offset = b"", 0
                    producer: Any = self.producer
                    if producer is not None and (not self.streamingProducer
                                                 or self.producerPaused):
                        self.producerPaused = False
                        producer.resumeProducing()
                else:
                    self._sentPart(data, sent)
                return
        self._writeSlowly()

    def _sentPart(self, data: bytes, sent: int) -> None:
        """One send() took ``sent`` bytes of ``data``, everything that was buffered: the
        kernel's buffer is full, and the reactor says when it has room for the rest."""
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.dataBuffer, self.offset = data, sent
        self.startWriting()

    def _writeSlowly(self) -> None:
        """What is buffered, through Twisted's doWrite (something half-sent before, more
        than one send() takes, or a send() that failed), handled as the reactor would."""
        try:
            why = self.doWrite()
        except BaseException:  # noqa: BLE001 - as the reactor does: logged, then lost
            why = failure.Failure()
            _log.failure("writing to {peer}", why, peer=self.getPeer())
        if why:
            # What the reactor does with a doWrite that reports the connection gone.
            self.stopReading()
            self.stopWriting()
            self.connectionLost(why if isinstance(why, failure.Failure) else failure.Failure(why))
            return
        if self.connected and (len(self.dataBuffer) > self.offset or self._tempDataLen):
            # The kernel's buffer is full: the reactor says when it has room again.
            self.startWriting()

    def startWriting(self) -> None:
        self._watched = True
        super().startWriting()

    def stopWriting(self) -> None:
        # Only a watched socket needs the reactor (and epoll_ctl) to stop watching it.
        if self._watched:
            self._watched = False
            super().stopWriting()


class DirectWritePort(tcp.Port):
    """A TCP listening port whose connections are :class:`DirectWriteServer`; with
    ``reuse_port`` its socket has SO_REUSEPORT (several processes on one port)."""

    transport = DirectWriteServer

    def __init__(self, port: int, factory: Any, backlog: int = 50, interface: str = "",
                 reactor: Any = None, reuse_port: bool = False) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self.reuse_port = reuse_port
        self.flusher = _Flusher(self.reactor)

    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


@implementer(IReactorTCP)
class DirectWriteReactor:
    """``reactor``, except that the TCP ports it listens on are :class:`DirectWritePort`:
    give it to Twisted's endpoint parsing (``strports.service``, ``serverFromString``)
    and ``tcp:`` descriptions listen with direct writes; every other kind (``ssl:``,
    ``unix:``) is the reactor's own."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> DirectWritePort:
        return listen(self.reactor, port, factory, backlog, interface)

    def connectTCP(self, *args: Any, **kwargs: Any) -> Any:
        return self.reactor.connectTCP(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)


def listen(reactor: Any, port: int, factory: Any, backlog: int = 50, interface: str = "",
           reuse_port: bool = False) -> DirectWritePort:
    """Listen on ``interface:port`` with direct writes (what ``reactor.listenTCP`` does
    with Twisted's own port)."""
    p = DirectWritePort(port, factory, backlog, interface, reactor, reuse_port)
    p.startListening()
    return p
