"""permessage-deflate (RFC 7692), deflated once per message for every client.

Autobahn compresses each message for each connection, with a zlib compressor the connection
keeps (window 15, memLevel 8: about 256 KB of zlib state): a broadcast to N compressing
clients would be deflated N times, and 10,000 clients would hold 2.5 GB of compressors.
ws4tx accepts permessage-deflate only without server context takeover, so that the
compressed form of a message does not depend on the connection: a :class:`Message` is
deflated once per window size (the only parameter a client may lower), the first time a
compressing client needs it, and every compressing client gets the same bytes. Nothing is
kept per connection between messages, in either direction.

Messages under :data:`MIN_SIZE` bytes, and messages deflate does not shrink, go out as plain
frames (RSV1 clear), which RFC 7692 allows message by message.
"""

from __future__ import annotations

import struct
import zlib
from typing import Optional, Sequence

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

from ws4tx.envelope import encode_channel_message, encode_publication, tag_event
from ws4tx.history import Position

#: Messages shorter than this are never compressed: deflate saves little on them and costs
#: the client an inflate.
MIN_SIZE = 256

#: The window when the client does not ask for a smaller one (``server_max_window_bits``).
DEFAULT_WINDOW_BITS = 15


def deflate(payload: bytes, window_bits: int) -> bytes:
    """``payload`` as the body of one permessage-deflate message: raw deflate with a fresh
    ``2**window_bits`` window, sync-flushed, without the final ``00 00 ff ff``."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """A whole unmasked server frame (FIN set) carrying ``payload``; RSV1 set when
    ``compressed``."""
    first = (0x82 if binary else 0x81) | (0x40 if compressed else 0)
    size = len(payload)
    if size <= 125:
        return bytes((first, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


class Message:
    """One outgoing message, framed once for any number of connections: :attr:`plain`
    for the clients that do not compress, :meth:`deflated` for those that do."""

    __slots__ = ("_deflated", "_published", "_tagged", "binary", "payload", "plain",
                 "position")

    def __init__(self, payload: bytes, binary: bool) -> None:
        self.payload = payload
        self.binary = binary
        #: The uncompressed frame.
        self.plain = frame(payload, binary)
        self._deflated: Optional[dict[int, bytes]] = None
        #: The message's position in its channel's history (set by the router), if any.
        self.position: Optional[Position] = None
        self._published: Optional[Message] = None
        self._tagged: Optional[tuple[tuple[str, str], Message]] = None

    def published(self, channel: str) -> Message:
        """The message as event clients of a channel with history get it: in a
        publication envelope with its :attr:`position` (built once, on the first call,
        for every such client); the message itself when it has no position."""
        position = self.position
        if position is None:
            return self
        published = self._published
        if published is None:
            published = self._published = Message(
                encode_publication(channel, position.offset, position.epoch, self.payload),
                False)
            # It keeps the position (an SSE stream writes it in its event's id), and is
            # its own publication.
            published.position = position
            published._published = published
        return published

    def tagged(self, facility: str, channel: str) -> Message:
        """The message of ``channel`` as a subscription of ``facility`` gets it when it
        has no position (a channel without history), built once for every such
        subscription: an event envelope with its facility named
        (:func:`~ws4tx.envelope.tag_event`); anything else in a publication envelope
        that names the channel (:func:`~ws4tx.envelope.encode_channel_message`)."""
        tagged = self._tagged
        if tagged is None or tagged[0] != (facility, channel):
            text = None if self.binary else tag_event(self.payload, facility)
            if text is None:
                text = encode_channel_message(channel, self.payload)
            tagged = self._tagged = ((facility, channel), Message(text, False))
        return tagged[1]

    def deflated(self, window_bits: int) -> bytes:
        """The frame for a client that negotiated permessage-deflate (without server
        context takeover) with this window: compressed once, on the first call for the
        window size; the plain frame for a small or incompressible message."""
        if len(self.payload) < MIN_SIZE:
            return self.plain
        frames = self._deflated
        if frames is None:
            frames = self._deflated = {}
        compressed = frames.get(window_bits)
        if compressed is None:
            body = deflate(self.payload, window_bits)
            compressed = frame(body, self.binary, True) if len(body) < len(self.payload) \
                else self.plain
            frames[window_bits] = compressed
        return compressed


class _Accept(PerMessageDeflateOfferAccept):
    """An accepted offer whose answer always says ``server_no_context_takeover`` (RFC 7692
    7.1.1.1 lets a server say so unasked): the client may then drop its inflater's window
    between messages."""

    def get_extension_string(self) -> str:
        answer: str = super().get_extension_string()
        if not self.offer.request_no_context_takeover:
            answer += "; server_no_context_takeover"
        return answer


def accept(offers: Sequence[object]) -> Optional[PerMessageDeflateOfferAccept]:
    """Autobahn's ``perMessageCompressionAccept`` for ws4tx: the client's first
    permessage-deflate offer, without server context takeover (one compressed frame per
    message serves every client) and, since every client must support it, without client
    context takeover either (no inflater is kept between a client's messages)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return _Accept(offer, request_no_context_takeover=offer.accept_no_context_takeover,
                           no_context_takeover=True)
    return None
