"""An event client for recovery tests that does what ws4tx.js does: it keeps the position of
each channel (from publication envelopes and ``ws4tx.positions``), reconnects with them as
``recover=``, and records every message, event and verdict; plus publishing through the
Lua script with redis-py, as either half publishes."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IDelayedCall

from ws4tx import envelope, history, naming
from ws4tx.history import Position, Retention

from test._wsclient import TIMEOUT, WSClient, connect

EVENTS = (envelope.SUBPROTOCOL,)


def publish_with_history(redis: Any, channel: str, payload: bytes, retention: Retention,
                         prefix: str = "ws4tx", publish_to: Optional[str] = None) -> Position:
    """Run the publish script with redis-py. ``publish_to``: PUBLISH on that channel
    instead (nobody listens: the message is in the history but never arrives live, as
    when Redis pub/sub loses it)."""
    keys, args = history.publish_args(channel, channel, *naming.history_keys(prefix, channel),
                                      payload, retention, 0)
    if publish_to is not None:
        args[0] = publish_to
    reply = redis.eval(history.script(history.PUBLISH_SCRIPT), len(keys), *keys, *args)
    return history.parse_published(reply).position


class _Sink:
    """Takes the place of a WSClient's message queue: each frame goes to ``received``."""

    def __init__(self, received: Callable[[tuple[bytes, bool]], None]) -> None:
        self.put = received


class Follower:
    """One event client across its reconnections. ``got[channel]`` holds the payloads
    (text) of the publications it received, in order; ``offsets[channel]`` their offsets;
    ``verdicts`` the data of each ``ws4tx.recovered``; ``events`` the names of the other
    events."""

    def __init__(self, path: str, headers: Optional[dict[str, str]] = None) -> None:
        self.path = path
        self.headers = headers
        self.positions: dict[str, Position] = {}
        self.got: dict[str, list[str]] = {}
        self.offsets: dict[str, list[tuple[str, int]]] = {}
        self.verdicts: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.client: Optional[WSClient] = None
        #: When set: the port to reconnect to (asked when the server closes the
        #: connection), as ws4tx.js reconnects.
        self.reconnect_to: Optional[Callable[[], int]] = None
        #: Connections made, and closes the server made.
        self.connections = self.closes = 0
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []
        #: The next attempt to reconnect, while one waits.
        self._redialing: Optional[IDelayedCall] = None

    def url(self) -> str:
        query = "".join(f"&recover={quote(f'{c}:{p.epoch}:{p.offset}', safe='')}"
                        for c, p in self.positions.items())
        return self.path + query

    async def connect(self, port: int) -> None:
        """Connect (again), asking to recover from the positions known."""
        client = self.client = await connect(port, self.url(), protocols=EVENTS,
                                             headers=self.headers)
        self.connections += 1
        client.messages = _Sink(self._received)  # type: ignore[assignment]
        client.closed.addCallback(self._closed, client)

    def _closed(self, result: Any, client: WSClient) -> Any:
        if self.client is client:
            self.client = None
            self.closes += 1
            if self.reconnect_to is not None:
                self._redial(0)
        return result

    def _redial(self, attempt: int) -> None:
        self._redialing = None
        if self.reconnect_to is None or self.client is not None:
            return  # closed for good meanwhile, or connected by the test

        def failed(failure: Any) -> None:
            if self.reconnect_to is None:
                return  # stopped while this attempt was under way
            if attempt >= 100:
                raise AssertionError(f"could not reconnect: {failure.getErrorMessage()}")
            self._redialing = reactor.callLater(  # type: ignore[attr-defined]
                0.05, self._redial, attempt + 1)

        defer.ensureDeferred(self.connect(self.reconnect_to())).addErrback(failed)

    def stop(self) -> None:
        """Reconnect no more (an attempt that waits is called off)."""
        self.reconnect_to = None
        if self._redialing is not None and self._redialing.active():
            self._redialing.cancel()
        self._redialing = None

    def drop(self) -> defer.Deferred[Any]:
        """Close the connection (the server sees the client go)."""
        assert self.client is not None
        client, self.client = self.client, None
        return client.close()

    def _received(self, item: tuple[bytes, bool]) -> None:
        payload, binary = item
        assert not binary, payload
        frame = json.loads(payload)
        if frame.get("ws4tx") == envelope.PUBLICATION:
            channel = frame["channel"]
            self.positions[channel] = Position(frame["offset"], frame["epoch"])
            self.got.setdefault(channel, []).append(frame["data"])
            self.offsets.setdefault(channel, []).append((frame["epoch"], frame["offset"]))
        elif frame.get("event") == envelope.POSITIONS_EVENT:
            for channel, p in frame["data"]["channels"].items():
                self.positions[channel] = Position(p["offset"], p["epoch"])
            self.events.append(frame["event"])
        elif frame.get("event") == envelope.RECOVERED_EVENT:
            self.verdicts.append(frame["data"])
        else:
            self.events.append(frame.get("event", "?"))
        self._check()

    def _check(self) -> None:
        waiting, self._waiting = self._waiting, []
        for predicate, d in waiting:
            if predicate():
                d.callback(None)
            else:
                self._waiting.append((predicate, d))

    def until(self, predicate: Callable[[], bool],
              timeout: float = TIMEOUT) -> defer.Deferred[None]:
        """Fires once ``predicate()`` holds (checked on every frame); TimeoutError
        after ``timeout`` seconds."""
        d: defer.Deferred[None] = defer.Deferred()
        if predicate():
            d.callback(None)
            return d

        def cancelled(_: Any) -> Any:
            self._waiting = [(p, w) for p, w in self._waiting if w is not d]
            return _

        self._waiting.append((predicate, d))
        return d.addTimeout(timeout, reactor).addErrback(cancelled)

    def count(self, channel: str) -> int:
        return len(self.got.get(channel, ()))
