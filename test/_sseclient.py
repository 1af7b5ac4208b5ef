"""A real SSE client for the tests: twisted.web's Agent reads the stream as it comes and
parses its events (as a browser's EventSource does), without sleeping: a test waits for
the event it needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, Response
from twisted.web.http_headers import Headers

from test._wsclient import TIMEOUT


@dataclass
class Event:
    """One dispatched event: its name (``message`` without ``event:``), data, and the id
    the client holds after it (None: never given)."""

    name: str
    data: str
    id: Optional[str]

    def json(self) -> Any:
        return json.loads(self.data)


class SSEClient(Protocol):
    """Reads an event stream: every dispatched event in :attr:`events`, every raw byte in
    :attr:`raw`; :meth:`until` waits for a condition on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.raw = b""
        self.last_id: Optional[str] = None
        self.ended = False
        self._buffer = b""
        self._waiters: list[tuple[Callable[[SSEClient], bool], defer.Deferred[None]]] = []
        self.response: Optional[Response] = None

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            self._dispatch(block)
        self._check()

    def _dispatch(self, block: bytes) -> None:
        name, data, has_data = "message", [], False
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
                has_data = True
            elif field == "id":
                self.last_id = value
        if has_data:
            self.events.append(Event(name, "\n".join(data), self.last_id))

    def connectionLost(self, reason: Any = None) -> None:
        self.ended = True
        self._check()

    def _check(self) -> None:
        for waiter in tuple(self._waiters):
            condition, d = waiter
            if condition(self):
                self._waiters.remove(waiter)
                d.callback(None)

    def until(self, condition: Callable[[SSEClient], bool]) -> defer.Deferred[None]:
        """Fires once ``condition(self)`` holds (bounded by TIMEOUT)."""
        if condition(self):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((condition, d))
        return d.addTimeout(TIMEOUT, reactor)

    def messages(self) -> list[Event]:
        return [e for e in self.events if e.name == "message"]

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def close(self) -> None:
        if self.transport is not None and not self.ended:
            self.transport.stopProducing()


async def request(port: int, path: str, headers: Optional[dict[str, str]] = None,
                  accept: str = "text/event-stream") -> tuple[Response, SSEClient]:
    """GET ``path`` asking for an event stream; the response and its reader (which also
    reads a refusal's body)."""
    agent = Agent(reactor)
    raw = {"accept": [accept]}
    raw.update({k: [v] for k, v in (headers or {}).items()})
    response: Response = await agent.request(
        b"GET", f"http://127.0.0.1:{port}{path}".encode(), Headers(raw)).addTimeout(
        TIMEOUT, reactor)
    client = SSEClient()
    client.response = response
    response.deliverBody(client)
    return response, client


async def post(port: int, path: str, body: bytes, headers: Optional[dict[str, str]] = None,
               host: str = "127.0.0.1") -> tuple[int, Any, Any]:
    """POST ``body`` to ``path``: the status, the headers and the JSON body of the
    answer."""
    agent = Agent(reactor)
    raw = {k: [v] for k, v in (headers or {}).items()}
    response: Response = await agent.request(
        b"POST", f"http://{host}:{port}{path}".encode(), Headers(raw),
        FileBodyProducer(BytesIO(body))).addTimeout(TIMEOUT, reactor)
    reader = SSEClient()
    response.deliverBody(reader)
    await reader.until(lambda c: c.ended)
    return response.code, response.headers, json.loads(reader.raw)
