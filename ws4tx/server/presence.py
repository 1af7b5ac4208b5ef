"""The node's part of presence (setting ``PRESENCE``; see :mod:`ws4tx.presence`).

:class:`Presence` writes the node's own clients of presence facilities to Redis: joins and
leaves gathered per facility for :data:`~ws4tx.presence.BATCH_DELAY` and written by one
script call, and every client again every third of ``PRESENCE_TTL`` (one call per
facility, not per client). After each write it announces what changed on the facility's
presence channel (:func:`ws4tx.naming.presence_keys`): one message for the whole batch,
with the connections that joined, those that left, and those of dead nodes that a refresh
trimmed. While a node has event clients on a presence facility it listens on that channel
and sends them each announcement as a ``ws4tx.presence`` event. Clients never publish on
that channel (it names no audience), so a client cannot forge presence.
"""

from __future__ import annotations

import json
import uuid
from itertools import count
from typing import Any, Callable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import envelope, naming
from ws4tx.naming import Identity
from ws4tx.presence import (
    BATCH_DELAY,
    JOIN,
    LEAVE,
    MAX_INFO_BYTES,
    MAX_INFO_DEPTH,
    Entry,
    check_info,
)
from ws4tx.server._log import observer
from ws4tx.server.broker import IBroker
from ws4tx.server.config import ServerConfig
from ws4tx.server.router import Router

Change = tuple[str, str, Optional[str], str]


class Client(Protocol):
    """What presence needs of a connection."""

    identity: Identity
    facility: str
    speaks_events: bool
    @property
    def channels(self) -> tuple[str, ...]:
        """The channels it listens to (its audiences in the presence)."""

    def __hash__(self) -> int:
        ...

    def emit(self, event: str, data: Any = None) -> None:
        ...


class _Announcement:
    """What one batch of a facility announces."""

    def __init__(self) -> None:
        self.joined: list[dict[str, Any]] = []
        self.left: list[str] = []

    def encode(self, gone: list[str]) -> bytes:
        return json.dumps({"joined": self.joined, "left": self.left + gone},
                          separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()


class Presence:
    """This node's clients in the presence of their facilities."""

    log = Logger(observer=observer)

    def __init__(self, config: ServerConfig, broker: IBroker, router: Router,
                 clock: IReactorTime,
                 info: Optional[Callable[[Client], Optional[defer.Deferred[Any]]]] = None,
                 ) -> None:
        self.config = config
        #: The site's info about a client (its handler's ``presence_info``): None when the
        #: site gives none, else a Deferred of a JSON object (or None).
        self._info = info
        #: Clients whose info is being asked for (they join once it comes).
        self._waiting: set[Client] = set()
        #: facility -> {connection id: its audiences}
        self._audiences: dict[str, dict[str, tuple[str, ...]]] = {}
        self.broker = broker
        self.router = router
        self.clock = clock
        #: Prefix of this node's connection ids: unique across nodes and restarts.
        self.node_id = uuid.uuid4().hex[:12]
        self._ids = count(1)
        #: facility -> {client: its entry}
        self._members: dict[str, dict[Client, Entry]] = {}
        #: facility -> event clients on this node
        self._listeners: dict[str, set[Client]] = {}
        #: facility -> (changes to write, what to announce), until the batch is written
        self._batches: dict[str, tuple[list[Change], _Announcement]] = {}
        self._flush: Optional[IDelayedCall] = None
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = clock
        #: Counters: batches written, announcements sent, connections of dead nodes trimmed.
        self.stats = {"presence_writes": 0, "presence_events": 0, "presence_trimmed": 0}

    @property
    def enabled(self) -> bool:
        return bool(self.config.presence)

    def start(self) -> None:
        """Refresh the node's clients every third of ``PRESENCE_TTL``."""
        if self.enabled and not self._refresher.running:
            self._refresher.start(self.config.presence_ttl / 3, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop refreshing; write what is pending (clients that left while draining)."""
        if self._refresher.running:
            self._refresher.stop()
        return self.flush()

    def entries(self, facility: str) -> list[Entry]:
        """This node's entries of ``facility``."""
        return list(self._members.get(facility, {}).values())

    # Clients

    def joined(self, client: Client) -> None:
        """``client`` opened: add it to its facility's presence and those of the
        audiences it listens to (in the next batch, once the site's info came)."""
        if not client.facility or not self.config.has_presence(client.facility):
            return  # the WebSocket URL itself (its subscriptions have their facilities)
        since = round(self.clock.seconds(), 3)
        asked = self._info(client) if self._info is not None else None
        if asked is None:
            self._join(client, since, None)
            return
        self._waiting.add(client)

        def came(info: Any) -> None:
            if client in self._waiting:
                self._waiting.discard(client)
                self._join(client, since, self._checkInfo(info, client.facility))

        def failed(failure: Failure) -> None:
            self.log.failure("the presence info of a client of {facility} failed", failure,
                             facility=client.facility)
            came(None)

        asked.addCallbacks(came, failed)

    def _checkInfo(self, info: Any, facility: str) -> Optional[dict[str, Any]]:
        """The site's info, checked once as it comes (:func:`ws4tx.presence.check_info`);
        info that is not a plain JSON object within the bounds is left out, and the log
        says why (the client is in the presence without it)."""
        if info is None:
            return None
        try:
            return check_info(info)
        except ValueError as e:
            self.log.warn("left out the presence info of a client of {facility}: {why} "
                          "(presence_info must give a JSON object of at most {limit} bytes, "
                          "{depth} deep, with finite numbers)", facility=facility, why=e,
                          limit=MAX_INFO_BYTES, depth=MAX_INFO_DEPTH)
            return None

    def _join(self, client: Client, since: float, info: Optional[dict[str, Any]]) -> None:
        facility = client.facility
        entry = Entry(f"{self.node_id}.{next(self._ids)}", client.identity.user, since, info)
        self._members.setdefault(facility, {})[client] = entry
        prefix = self.config.prefix
        self._audiences.setdefault(facility, {})[entry.id] = tuple(
            a for a in (naming.presence_audience_of(prefix, c) for c in client.channels)
            if a is not None)
        changes, announcement = self._batch(facility)
        changes.append((JOIN, entry.id, entry.user, entry.to_json()))
        announcement.joined.append(entry.as_dict())
        if client.speaks_events:
            listeners = self._listeners.setdefault(facility, set())
            if not listeners:
                self.router.follow(self._keys(facility).events,
                                   lambda payload: self.received(facility, payload))
            listeners.add(client)

    def left(self, client: Client) -> None:
        """``client`` closed: remove it from its facility's presence (next batch)."""
        if client in self._waiting:
            self._waiting.discard(client)
            return
        facility = client.facility
        members = self._members.get(facility)
        entry = members.pop(client, None) if members is not None else None
        if entry is None:
            return
        if not members:
            del self._members[facility]
        changes, announcement = self._batch(facility)
        changes.append((LEAVE, entry.id, entry.user, ""))
        audiences = self._audiences.get(facility, {})
        audiences.pop(entry.id, None)
        if not audiences:
            self._audiences.pop(facility, None)
        announcement.left.append(entry.id)
        listeners = self._listeners.get(facility)
        if listeners is not None and client in listeners:
            listeners.discard(client)
            if not listeners:
                del self._listeners[facility]
                self.router.unfollow(self._keys(facility).events)

    def _batch(self, facility: str) -> tuple[list[Change], _Announcement]:
        batch = self._batches.get(facility)
        if batch is None:
            batch = self._batches[facility] = ([], _Announcement())
        if self._flush is None:
            self._flush = self.clock.callLater(BATCH_DELAY, self.flush)
        return batch

    def _keys(self, facility: str) -> naming.PresenceKeys:
        return naming.presence_keys(self.config.prefix, facility)

    # Writing

    def flush(self) -> defer.Deferred[None]:
        """Write every pending batch (one script call per facility) and announce it."""
        if self._flush is not None:
            if self._flush.active():
                self._flush.cancel()
            self._flush = None
        batches, self._batches = self._batches, {}
        writes = [self._write(facility, changes, announcement)
                  for facility, (changes, announcement) in batches.items()]
        return defer.gatherResults(writes).addCallback(lambda _: None)

    def refresh(self) -> defer.Deferred[None]:
        """Give every client of this node a new expiry (trimming those of dead nodes)."""
        writes = []
        for facility, members in list(self._members.items()):
            changes = [(JOIN, e.id, e.user, e.to_json()) for e in members.values()]
            writes.append(self._write(facility, changes, _Announcement()))
        return defer.gatherResults(writes).addCallback(lambda _: None)

    def _write(self, facility: str, changes: list[Change],
               announcement: _Announcement) -> defer.Deferred[None]:
        keys = self._keys(facility)
        self.stats["presence_writes"] += 1

        def written(gone: list[str]) -> Optional[defer.Deferred[int]]:
            self.stats["presence_trimmed"] += len(gone)
            if not (announcement.joined or announcement.left or gone):
                return None
            self.stats["presence_events"] += 1
            return self.broker.publish(keys.events, announcement.encode(gone))

        def failed(failure: Failure) -> None:
            self.log.warn("presence of {facility} not written: {error}; the next refresh "
                          "writes it", facility=facility, error=failure.getErrorMessage())

        d = self.broker.updatePresence(keys, self.config.presence_ttl, changes,
                                       self._audiences.get(facility, {}))
        return d.addCallback(written).addCallbacks(lambda _: None, failed)

    # Announcements

    def received(self, facility: str, payload: bytes) -> None:
        """An announcement on ``facility``'s presence channel: tell its event clients."""
        try:
            data = json.loads(payload, parse_constant=_no_constant)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            event = {"joined": list(data.get("joined", ())), "left": list(data.get("left", ()))}
        except (ValueError, RecursionError) as e:
            self.log.warn("ignored a presence announcement of {size} bytes on {facility}: "
                          "{error}", size=len(payload), facility=facility, error=e)
            return
        for client in tuple(self._listeners.get(facility, ())):
            client.emit(envelope.PRESENCE_EVENT, event)


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which JSON cannot carry")
