"""A real WebSocket client (Autobahn on Twisted) and a raw HTTP handshake, for tests."""

from __future__ import annotations

import base64
import os
from typing import Any, Optional, Sequence

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol

TIMEOUT = 10.0


class _Protocol(WebSocketClientProtocol):
    client: WSClient

    def onConnect(self, response: Any) -> None:
        self.client.protocol = response.protocol

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.client._closed(code, reason)


class WSClient:
    """One client connection: ``messages`` queues ``(payload, is_binary)``; ``closed``
    fires with ``(code, reason)``."""

    def __init__(self) -> None:
        self.messages: defer.DeferredQueue[tuple[bytes, bool]] = defer.DeferredQueue()
        self.opened: defer.Deferred[WSClient] = defer.Deferred()
        self.closed: defer.Deferred[tuple[Optional[int], Optional[str]]] = defer.Deferred()
        self.proto: Optional[_Protocol] = None
        self.protocol: Optional[str] = None

    def _opened(self, proto: _Protocol) -> None:
        self.proto = proto
        self.opened.callback(self)

    def _closed(self, code: Optional[int], reason: Optional[str]) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send(self, payload: bytes | str, binary: bool = False) -> None:
        assert self.proto is not None
        self.proto.sendMessage(payload.encode() if isinstance(payload, str) else payload,
                               isBinary=binary)

    def next(self, timeout: float = TIMEOUT) -> defer.Deferred[tuple[bytes, bool]]:
        """The next message, failing with TimeoutError after ``timeout`` seconds."""
        return self.messages.get().addTimeout(timeout, reactor)

    async def text(self, timeout: float = TIMEOUT) -> str:
        payload, binary = await self.next(timeout)
        assert not binary, payload
        return payload.decode()

    def close(self, code: int = 1000) -> defer.Deferred[Any]:
        if self.proto is not None and not self.closed.called:
            self.proto.sendClose(code)
        return self.closed.addTimeout(TIMEOUT, reactor)


async def connect(
    port: int,
    path: str,
    protocols: Sequence[str] = (),
    headers: Optional[dict[str, str]] = None,
    host: str = "127.0.0.1",
) -> WSClient:
    """Connect to ``ws://host:port{path}`` and wait for the handshake."""
    client = WSClient()
    factory = WebSocketClientFactory(f"ws://{host}:{port}{path}", protocols=list(protocols),
                                     headers=headers or {})
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=TIMEOUT)
    factory.protocol = _Protocol
    _Protocol.client = None  # set per instance below

    def build(addr: Any) -> _Protocol:
        proto = _Protocol()
        proto.factory = factory
        proto.client = client
        return proto

    factory.buildProtocol = build  # type: ignore[method-assign]
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT)
    await endpoint.connect(factory)
    await client.opened.addTimeout(TIMEOUT, reactor)
    return client


class _RawHTTP(Protocol):
    def __init__(self, request: bytes, done: defer.Deferred[bytes]) -> None:
        self.request, self.done, self.data = request, done, b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and b" 101 " not in self.data.split(b"\r\n", 1)[0]:
            head, _, body = self.data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(body) >= length:
                self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


async def raw_request(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    done: defer.Deferred[bytes] = defer.Deferred()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT)
    await endpoints.connectProtocol(endpoint, _RawHTTP(request, done))
    return await done.addTimeout(TIMEOUT, reactor)


def handshake_request(path: str, headers: Optional[dict[str, str]] = None,
                      host: str = "127.0.0.1") -> bytes:
    """The bytes of a WebSocket opening handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(response: bytes) -> tuple[int, str]:
    """The status code and the whole response (reason, headers and body) as text."""
    return int(response.split(b" ", 2)[1]), response.decode("utf-8", "replace")


class NeverReads(Protocol):
    """Sends a request, then, once the answer's head came (``opened``), stops reading
    its socket for good: a slow consumer."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.opened: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if not self.opened.called and b"\r\n\r\n" in data:
            self.transport.pauseProducing()
            self.opened.callback(None)


async def never_reading(case: Any, port: int, request: bytes) -> NeverReads:
    """A connection to ``port`` that sends ``request`` and, once the answer's head came,
    never reads again (aborted at the end of ``case``)."""
    slow = NeverReads(request)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoints.connectProtocol(endpoint, slow)
    case.addCleanup(slow.transport.abortConnection)
    await slow.opened.addTimeout(TIMEOUT, reactor)
    return slow
