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
from typing import Optional, Sequence

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


def event(data: bytes, name: Optional[str] = None, id: Optional[str] = None) -> bytes:
    """One SSE event: ``data`` (UTF-8 text) on as many ``data:`` lines as it has lines
    (a CR LF or a lone CR ends a line as LF does: the client reads LF)."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    head = b""
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


#: A heartbeat: a comment, which the client ignores.
PING = b": ping\n\n"
