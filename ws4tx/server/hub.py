"""The hub: which local clients listen to which channels. No I/O, no Twisted.

The hub is the single source of truth about the channels this process needs: the router
subscribes the broker to a channel when the hub reports its first member, unsubscribes when
it reports the last one gone, and resubscribes everything the hub lists after the broker
reconnects.
"""

from __future__ import annotations

from collections.abc import Set
from typing import AbstractSet, Any, Generic, Hashable, Iterable, Iterator, KeysView, TypeVar, Union

C = TypeVar("C", bound=Hashable)

_EMPTY: frozenset[Any] = frozenset()


class _One(Set[C]):
    """The members of a channel with one member: most channels of subscriptions (a
    user's, a session's) have one, and this costs a quarter of a set of one."""

    __slots__ = ("member",)

    def __init__(self, member: C) -> None:
        self.member = member

    def __contains__(self, client: object) -> bool:
        return client == self.member

    def __iter__(self) -> Iterator[C]:
        yield self.member

    def __len__(self) -> int:
        return 1


def _unique(channels: Iterable[str]) -> tuple[str, ...]:
    """``channels`` without repeats, in order: the same tuple when it has none (a client
    and the hub share it)."""
    if isinstance(channels, tuple) and len(frozenset(channels)) == len(channels):
        return channels
    return tuple(dict.fromkeys(channels))


class Hub(Generic[C]):
    """Members of channels, kept both ways round for O(1) joins, leaves and lookups."""

    def __init__(self) -> None:
        self._members: dict[str, Union[set[C], _One[C]]] = {}
        self._channels: dict[C, tuple[str, ...]] = {}

    def join(self, client: C, channels: Iterable[str]) -> list[str]:
        """Add ``client`` to ``channels``; return the channels that had no member before.

        A client joins once, with all its channels; joining again is an error.
        """
        if client in self._channels:
            raise ValueError(f"{client!r} has already joined")
        mine = _unique(channels)
        self._channels[client] = mine
        opened = []
        for channel in mine:
            members = self._members.get(channel)
            if members is None:
                self._members[channel] = _One(client)
                opened.append(channel)
            elif isinstance(members, _One):
                self._members[channel] = {members.member, client}
            else:
                members.add(client)
        return opened

    def leave(self, client: C) -> list[str]:
        """Remove ``client`` from all its channels; return those left without members.

        Leaving without having joined (or twice) does nothing and returns ``[]``.
        """
        closed = self.leave_channels(client, self._channels.get(client, ()))
        self._channels.pop(client, None)
        return closed

    def leave_channels(self, client: C, channels: Iterable[str]) -> list[str]:
        """Remove ``client`` from those of ``channels`` it is in (it stays joined, with
        its other channels, possibly none); return the channels left without members."""
        mine = self._channels.get(client)
        if mine is None:
            return []
        leaving = frozenset(channels)
        self._channels[client] = tuple(c for c in mine if c not in leaving)
        closed = []
        for channel in mine:
            if channel in leaving:
                members = self._members[channel]
                if isinstance(members, _One):
                    del self._members[channel]
                    closed.append(channel)
                    continue
                members.discard(client)
                if len(members) == 1:
                    (last,) = members
                    self._members[channel] = _One(last)
        return closed

    def members(self, channel: str) -> AbstractSet[C]:
        """The clients in ``channel`` (a view, live or not: copy it before changing the
        hub)."""
        return self._members.get(channel, _EMPTY)

    def channels_of(self, client: C) -> tuple[str, ...]:
        """The channels ``client`` joined."""
        return self._channels.get(client, ())

    def channels(self) -> KeysView[str]:
        """Every channel with at least one member."""
        return self._members.keys()

    def clients(self) -> KeysView[C]:
        """Every client that has joined."""
        return self._channels.keys()

    def __len__(self) -> int:
        return len(self._channels)
