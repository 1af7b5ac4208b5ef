"""A run: several messages of one channel that go to each client at once.

When one read from the broker holds several messages of a channel, the router hands each
client all of them together (``deliverRun``) instead of one by one, and a client that can
take them as they are (it drains, nothing waits for it, nothing to hold back or skip)
gets their frames in one write: joined here once for every such client, per deflate window
for those that compress. Pure: it only joins frames framed elsewhere
(:class:`ws4tx.server.deflate.Message`).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol


class Framed(Protocol):
    """A message framed once for every client (a :class:`ws4tx.server.deflate.Message`)."""

    @property
    def plain(self) -> bytes:
        """The uncompressed frame."""

    def deflated(self, window_bits: int) -> bytes:
        """The frame for a client that compresses with this window."""


class Run:
    """Messages of one channel, in order: :attr:`items` are (message, payload) pairs;
    :attr:`plain` and :meth:`deflated` are their frames joined, once for every client."""

    __slots__ = ("_deflated", "items", "plain")

    #: The plain frames, joined on the first read (see :meth:`__getattr__`).
    plain: bytes

    def __init__(self, items: list[tuple[Any, bytes]]) -> None:
        self.items: list[tuple[Any, bytes]] = items
        self._deflated: Optional[dict[int, bytes]] = None

    def __getattr__(self, name: str) -> bytes:
        # Python calls it only while the slot is unset: the frames are joined on the first
        # read, every later client reads a plain slot (and a run that no plain client
        # takes never joins them).
        if name != "plain":
            raise AttributeError(name)
        framed: list[Framed] = [message for message, _ in self.items]
        plain = self.plain = b"".join([message.plain for message in framed])
        return plain

    def deflated(self, window_bits: int) -> bytes:
        """The frames for a client that compresses with this window (each message's
        :meth:`Framed.deflated`), joined once per window size."""
        frames = self._deflated
        if frames is None:
            frames = self._deflated = {}
        joined = frames.get(window_bits)
        if joined is None:
            framed: list[Framed] = [message for message, _ in self.items]
            joined = frames[window_bits] = b"".join(
                [message.deflated(window_bits) for message in framed])
        return joined
