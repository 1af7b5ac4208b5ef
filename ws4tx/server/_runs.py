"""A run: several messages of one channel that go to each client at once.

When one read from the broker holds several messages of a channel, the router hands each
client all of them together (``deliverRun``) instead of one by one, and a client that can
take them as they are (it drains, nothing waits for it, nothing to hold back or skip)
gets their frames in one write: joined here once for every such client, per deflate window
for those that compress. Pure: it only joins frames framed elsewhere
(:class:`ws4tx.server.deflate.Message`).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Protocol


class Framed(Protocol):
    """A message framed once for every client (a :class:`ws4tx.server.deflate.Message`)."""

    @property
    def plain(self) -> bytes:
        """The uncompressed frame."""

    @property
    def binary(self) -> bool:
        """Whether it is a binary message (else text)."""

    def deflated(self, window_bits: int) -> bytes:
        """The frame for a client that compresses with this window."""


class Run:
    """Messages of one channel, in order: :attr:`items` are (message, payload) pairs;
    :attr:`plain` and :meth:`deflated` are their frames joined, once for every client
    (:meth:`joined`: joined as another transport writes them)."""

    __slots__ = ("_joined", "binary", "items", "plain")

    #: The plain frames, joined on the first read (see :meth:`__getattr__`).
    plain: bytes
    #: Whether any of its messages is binary (a transport of text only takes such a run
    #: message by message), found on the first read.
    binary: bool

    def __init__(self, items: list[tuple[Any, bytes]]) -> None:
        self.items: list[tuple[Any, bytes]] = items
        self._joined: Optional[dict[Hashable, bytes]] = None

    def __getattr__(self, name: str) -> Any:
        # Python calls it only while the slot is unset: each is made on the first read,
        # every later client reads a slot (and a run that no client asks makes none).
        framed: list[Framed] = [message for message, _ in self.items]
        if name == "plain":
            plain = self.plain = b"".join([message.plain for message in framed])
            return plain
        if name == "binary":
            binary = self.binary = any([message.binary for message in framed])
            return binary
        raise AttributeError(name)

    def deflated(self, window_bits: int) -> bytes:
        """The frames for a client that compresses with this window (each message's
        :meth:`Framed.deflated`), joined once per window size."""
        return self.joined(window_bits, lambda message: message.deflated(window_bits))

    def joined(self, key: Hashable, each: Callable[[Any], bytes]) -> bytes:
        """``each(message)`` of every message, joined once per ``key`` for every client
        that writes them the same way (a deflate window's size, another transport's
        framing of the same messages)."""
        made = self._joined
        if made is None:
            made = self._joined = {}
        joined = made.get(key)
        if joined is None:
            joined = made[key] = b"".join([each(message) for message, _ in self.items])
        return joined
