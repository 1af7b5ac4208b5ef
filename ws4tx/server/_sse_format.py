"""The wire format of an SSE stream (pure): events, comments, and the event id that holds
the position of every channel of the stream.

An event id is ``<tag>.<epoch>:<offset>,<epoch>:<offset>,...``: ``tag`` names the stream's
channels (6 characters of a hash of their names, in order), then one position per channel in
the stream's channel order, empty for a channel whose position is not known yet. The browser
sends the last one back as ``Last-Event-ID`` when it reconnects; an id for other channels, or
malformed, is not a position (:func:`parse_id` gives None).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Callable, Optional, Sequence

from ws4tx.history import Position

_ENTRY = re.compile(r"([0-9A-Za-z]{1,64}):([0-9]{1,19})")
#: The longest entry: a 64-character epoch, a colon, 19 digits, a comma.
_ENTRY_MAX = 85


def channels_tag(channels: Sequence[str]) -> str:
    """The tag of an id for ``channels`` (in this order)."""
    digest = hashlib.sha256("\n".join(channels).encode()).digest()[:4]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def position_id(tag: str, positions: Sequence[Optional[Position]]) -> str:
    """The event id of a stream whose channels stand at ``positions`` (its channel order;
    None: not known)."""
    return tag + "." + ",".join("" if p is None else f"{p.epoch}:{p.offset}"
                                for p in positions)


def parse_id(text: str, tag: str, channels: Sequence[str]) -> Optional[dict[str, Position]]:
    """The positions an id (``Last-Event-ID``) gives, by channel (those it knows); None
    when it is malformed or for other channels. Reads at most a bounded prefix."""
    if len(text) > len(tag) + 1 + _ENTRY_MAX * len(channels):
        return None
    given_tag, dot, rest = text.partition(".")
    if not dot or given_tag != tag:
        return None
    entries = rest.split(",")
    if len(entries) != len(channels):
        return None
    positions = {}
    for channel, entry in zip(channels, entries, strict=True):
        if not entry:
            continue
        match = _ENTRY.fullmatch(entry)
        if match is None:
            return None
        positions[channel] = Position(int(match.group(2)), match.group(1))
    return positions


def data_lines(data: bytes) -> bytes:
    """The ``data:`` lines of ``data`` (UTF-8 text), one per line it has (a CR LF or a
    lone CR ends a line as LF does: the client reads LF), and the blank line that ends
    the event."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def event(data: bytes, name: Optional[str] = None, id: Optional[str] = None) -> bytes:
    """One SSE event: ``data`` on its ``data:`` lines (:func:`data_lines`), after its
    name and id when given."""
    head = b""
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    return head + data_lines(data)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body (what ``Request.write`` sends)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class MessageEvents:
    """The events of one message for every stream it is written to, built once: a
    fan-out writes one message to all its streams before the next, so what was made of
    the last payload is kept (the payload held, so that it is the same object and not one
    at the same address): its ``data:`` lines, and the whole event as a stream writes it
    (:meth:`written`) for each id it was written with. ``chunked``: what is written is an
    HTTP/1.1 chunk (:func:`chunk`) of the event."""

    __slots__ = ("_chunked", "_lines", "_payload", "_written", "plain", "plain_of",
                 "plain_size")

    def __init__(self, chunked: bool = False) -> None:
        self._chunked = chunked
        self._payload: Optional[bytes] = None
        self._lines = b""
        self._written: dict[Optional[str], bytes] = {}
        #: What :meth:`written` made without an id (its size) and of which payload, for a
        #: fan-out's usual stream to take without a call (None: not made).
        self.plain_of: Optional[bytes] = None
        self.plain = b""
        self.plain_size = 0

    def _lines_of(self, payload: bytes) -> bytes:
        if payload is not self._payload:
            self._lines = data_lines(payload)
            self._written = {}
            self._payload = payload
            self.plain_of = None
        return self._lines

    def event(self, payload: bytes, id: Optional[str] = None) -> bytes:
        """The event of ``payload`` with ``id`` (None: none), as :func:`event` makes it."""
        lines = self._lines_of(payload)
        if id is None:
            return lines
        return b"id: " + id.encode() + b"\n" + lines

    def written(self, payload: bytes, key: Optional[str] = None,
                id: Optional[Callable[[], str]] = None) -> bytes:
        """What a stream writes of ``payload``'s event: without an id when ``key`` is
        None, else with the id ``id()`` makes, which ``key`` determines (made once for
        every stream that gives the same key, as the event is)."""
        if payload is self._payload:
            made = self._written.get(key)
            if made is not None:
                return made
        event = self.event(payload, None if id is None else id())
        made = self._written[key] = chunk(event) if self._chunked else event
        if key is None:
            self.plain, self.plain_size, self.plain_of = made, len(made), payload
        return made


#: A heartbeat: a comment, which the client ignores.
PING = b": ping\n\n"
