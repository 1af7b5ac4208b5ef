"""Plain HTTP catch-up: ``GET <channel URL>&history&since=<id>`` answers the stored messages
of the URL's channels after a position, as JSON.

The request is admitted as the URL's WebSocket handshake would be (same checks, same
identity and channels: :func:`ws4tx.server._verdict.judge`); ``since`` is an SSE event id
of the same URL (see :mod:`ws4tx.server._sse_format`). Each channel with a position in it
is read once (the reads shared with joining clients), a page of at most
:data:`~ws4tx.server.streams.FIRST_PAGE` messages. A page that is full and has more after
it cannot change: the answer is then cacheable (``max-age``: the history's ttl; ``public``
for an anonymous identity, ``private`` otherwise); any other answer is ``no-store``.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from ws4tx import envelope
from ws4tx.envelope import server_voice
from ws4tx.history import Position, step
from ws4tx.server import _sse_format, _verdict, admission
from ws4tx.server._log import observer
from ws4tx.server.auth import HandshakeDenied
from ws4tx.server.broker import BrokerUnavailable
from ws4tx.server.streams import FIRST_PAGE

if TYPE_CHECKING:
    from ws4tx.server.protocol import PushFactory

_log = Logger(observer=observer)


def wants_history(request: Request) -> bool:
    """Whether ``request`` asks for the history (a ``history`` query parameter)."""
    query = urlsplit(request.uri).query  # twisted.web's args leave out "history" alone
    return b"history" in parse_qs(query, keep_blank_values=True)


def serve(factory: PushFactory, request: Request) -> Any:
    """Answer a history GET (or its refusal: status and JSON body, as a plain GET's)."""
    config = factory.config
    _verdict.allow_reading(config, request)
    finished = [False]
    request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

    def answer(result: tuple[bytes, bytes]) -> None:
        if finished[0]:
            return
        body, cache = result
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", cache)
        request.setHeader(b"vary", b"Origin, Cookie, Authorization")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def refused(failure: Failure) -> None:
        if finished[0]:
            return
        if isinstance(failure.value, defer.FirstError):
            failure = failure.value.subFailure
        if isinstance(failure.value, BrokerUnavailable):
            denied = HandshakeDenied("the history cannot be read now", 503)
        elif isinstance(failure.value, HandshakeDenied):
            denied = failure.value
        else:
            _log.failure("answering the history GET of {uri}", failure, uri=request.uri)
            denied = HandshakeDenied("the server failed to read the history", 500)
        body = _verdict.refusal_body(denied)
        request.setResponseCode(denied.status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    _verdict.judge(config, factory.authenticator, request).addCallback(
        _read, factory).addCallbacks(answer, refused)
    return NOT_DONE_YET


def _read(judged: tuple[Any, Any], factory: PushFactory) -> defer.Deferred[tuple[bytes, bytes]]:
    handshake, answer = judged
    config, node = factory.config, factory.node
    admitted = admission.admit(config, handshake, answer,
                               handled=node.events.handles(handshake.facility),
                               protocols=[envelope.SUBPROTOCOL])
    retention = config.history_for(admitted.facility)
    channels = admitted.channels
    if retention is None or not channels:
        raise HandshakeDenied("this URL has no channel with history", 404)
    tag = _sse_format.channels_tag(channels)
    since = handshake.params.get("since", [])
    positions = _sse_format.parse_id(since[0], tag, channels) if len(since) == 1 else None
    if positions is None:
        raise HandshakeDenied("history needs since=<an event id of this URL's stream>", 400)
    asked = [(channel, positions[channel]) for channel in channels if channel in positions]
    reads = [node.reads.read(channel, retention, position.offset)
             for channel, position in asked]
    anonymous = admitted.identity.user is None and admitted.identity.session is None
    return defer.gatherResults(reads, consumeErrors=True).addCallback(
        _answer, asked, tag, channels, anonymous, retention.ttl)


def _answer(shared: list[Any], asked: list[tuple[str, Position]], tag: str,
            channels: tuple[str, ...], anonymous: bool, ttl: int) -> tuple[bytes, bytes]:
    """The JSON body and its Cache-Control."""
    body: dict[str, Any] = {}
    following: dict[str, Optional[Position]] = {}
    sealed = bool(asked)
    for (channel, position), read in zip(asked, shared, strict=True):
        history = read.history
        page = step(position.epoch, position.offset + 1, history, FIRST_PAGE, first=True)
        messages = []
        for publication in page.publications:
            if server_voice(publication.payload) is not None:
                continue  # never handed on
            entry: dict[str, Any] = {"offset": publication.offset}
            try:
                entry["data"] = publication.payload.decode("utf-8")
            except UnicodeDecodeError:
                entry["data64"] = base64.b64encode(publication.payload).decode("ascii")
            messages.append(entry)
        outcome: dict[str, Any] = {"epoch": history.epoch, "offset": history.offset,
                                   "messages": messages, "complete": page.done}
        if page.reason is not None:
            outcome["reason"] = page.reason
            sealed = False
        else:
            following[channel] = Position(page.following - 1, position.epoch)
            sealed = sealed and not page.done
        body[channel] = outcome
    next_id = _sse_format.position_id(tag, [following.get(c) for c in channels])
    text = json.dumps({"channels": body, "next": next_id}, separators=(",", ":"))
    if sealed and ttl > 0:
        cache = b"%s, max-age=%d" % (b"public" if anonymous else b"private", ttl)
    else:
        cache = b"no-store"
    return text.encode() + b"\n", cache
