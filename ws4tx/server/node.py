"""The node: one ws4tx server process's moving parts, and what the rest asks of them.

A :class:`Node` owns the broker (the message bus), the router (and its hub: which local
client listens where), the event handlers, the per-address counts and storage budgets,
the counters, health and drain. Autobahn's factory builds connections that talk to the
node; the health resource and the service ask the node. It writes to no socket itself.

It also listens on the control channel (:func:`ws4tx.naming.control_channel`) and executes
the site's commands (:mod:`ws4tx.control`) against its own connections: every node gets
every command, and each closes the matching connections it has.
"""

from __future__ import annotations

import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import AbstractSet, Any, Callable, Iterable, Optional

import twisted
from autobahn import version as autobahn_version
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

import ws4tx
from ws4tx import closecodes, control, naming
from ws4tx.history import (
    EPOCH_CHANGED,
    GAP,
    TRIMMED,
    UNAVAILABLE,
    UNKNOWN_POSITION,
    History,
    Position,
    fingerprint,
)
from ws4tx.presence import JOIN, LEAVE, Entry
from ws4tx.server import deflate
from ws4tx.server._log import observer
from ws4tx.server._ratelimit import Budgets
from ws4tx.server.admission import AddressCounts
from ws4tx.server.broker import BrokerUnavailable, IBroker
from ws4tx.server.config import ServerConfig
from ws4tx.server.events import Events
from ws4tx.server.handlers import EventHandler, ServerAPI
from ws4tx.server.presence import Presence
from ws4tx.server.router import Router
from ws4tx.server.streams import FIRST_PAGE, ClientStream, Streams

#: The close codes counted under their own label; any other is counted as ``other``
#: (a client picks any code from 3000 to 4999: the labels must stay few).
_KNOWN_CODES = frozenset({closecodes.NORMAL, closecodes.GOING_AWAY, closecodes.PROTOCOL_ERROR,
                          closecodes.UNSUPPORTED_DATA, closecodes.INVALID_PAYLOAD,
                          closecodes.POLICY_VIOLATION, closecodes.MESSAGE_TOO_BIG,
                          closecodes.INTERNAL_ERROR, closecodes.CLOSED_BY_SITE,
                          closecodes.TOKEN_EXPIRED,
                          closecodes.SLOW_CONSUMER, closecodes.SUBSCRIPTION_REFUSED})

#: The versions a node runs (in its info).
_VERSIONS = {"ws4tx": ws4tx.__version__, "python": platform.python_version(),
             "twisted": twisted.__version__, "autobahn": autobahn_version}


def close_label(code: Optional[int]) -> str:
    """The label a connection's close code is counted under: the code for the server's
    own and the standard ones (``1006``: the connection ended without a closing
    handshake, ``1005``: a close frame without a code), ``other`` for the rest."""
    if code is None:
        return "1005"
    return str(code) if code in _KNOWN_CODES or code in (1005, 1006) else "other"


#: The label of a recovery that succeeded; the others are the reasons it failed for.
RECOVERED = "none"
#: Every recovery label (bounded): a reason the history module does not name is ``other``.
RECOVERY_LABELS = (RECOVERED, EPOCH_CHANGED, TRIMMED, UNKNOWN_POSITION, GAP, UNAVAILABLE,
                   "other")


def recovery_label(reason: Optional[str]) -> str:
    """The label a recovery's verdict is counted under."""
    if reason is None:
        return RECOVERED
    return reason if reason in RECOVERY_LABELS else "other"


@dataclass(frozen=True)
class Health:
    """Whether the node delivers (messages flow from the broker), and in what state the
    broker is: ``delivering``, ``connected`` (but no probe came back lately) or
    ``disconnected``; and, while it cannot reach Redis, why (the broker's ``problem``)."""

    up: bool
    redis: str
    reason: Optional[str] = None


class Node:
    """One ws4tx node on ``broker``; ``clock`` schedules fan-out turns, budgets and
    backlog ages (the reactor in production, a ``task.Clock`` in tests)."""

    log = Logger(observer=observer)

    def __init__(
        self,
        config: ServerConfig,
        broker: IBroker,
        *,
        handlers: Iterable[type[EventHandler]] = (),
        run_in_thread: Optional[Callable[..., defer.Deferred[Any]]] = None,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.broker = broker
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.router = Router(broker, deflate.Message, config.max_outgoing_size,
                             clock=self.clock, max_lag=config.max_lag,
                             max_backlog=config.max_backlog,
                             has_history=self._hasHistory if config.history else None,
                             read_history=self._readHistory if config.history else None)
        #: The channel streams: where each channel stands and its recovery (the
        #: router's), the history reads clients share, each client's catch-up.
        self.streams = Streams(config, broker, self.clock, self.router.streams,
                               self.router.barrier, self.recovered)
        #: Clients' history reads, batched per channel and reactor turn.
        self.reads = self.streams.reads
        #: What event handlers may do beyond their client (publish, run in a thread).
        self.server = ServerAPI(broker, config.prefix, run_in_thread, config.history,
                                listen=self._listen, clock=self.clock,
                                presence=config.presence)
        self.events = Events(handlers, self.server)
        #: Open connections per client address, for the per-address cap.
        self.addresses = AddressCounts(config)
        #: What each user (or anonymous address) may still store for replay.
        self.store_budgets = Budgets(config.store_budget / 60, config.store_budget,
                                     self.clock) if config.store_budget else None
        #: Counters of the clients: dropped for not reading, messages over the rate limit,
        #: raw messages refused because they looked like the server's envelopes, messages
        #: not stored because their sender was over its storage budget.
        #: Then the site's commands: executed, refused as malformed, the connections
        #: they closed and those they made leave channels.
        self.stats = {"slow_consumers": 0, "rate_limited": 0, "raw_envelopes": 0,
                      "store_refused": 0, "control_commands": 0, "control_invalid": 0,
                      "closed_by_site": 0, "unsubscribed_by_site": 0,
                      "subscribed_by_site": 0, "accepted": 0, "client_messages": 0,
                      "client_bytes": 0, "subscribes": 0,
                      "subscribes_refused": 0, "subscribes_granted": 0, "unsubscribes": 0,
                      "sse_accepted": 0, "sse_binary_dropped": 0,
                      "posts_ok": 0, "posts_refused": 0, "posts_failed": 0}
        #: The subscriptions event clients added by frames (hub members of their own,
        #: not clients: see :meth:`joinSubscription`).
        self._subscriptions: set[Any] = set()
        #: Connections closed, by close code (see :func:`close_label`): bounded labels.
        self.closed: Counter[str] = Counter()
        #: Recoveries on reconnect (``recover=``), by outcome: :data:`RECOVERED`, or the
        #: reason of the first channel that failed (see :func:`recovery_label`).
        self.recoveries: Counter[str] = Counter()
        #: Handshakes that presented a resume token, by outcome: ``resumed``, or why
        #: they authenticated as usual (``revoked``, ``expired``, ``invalid``, ...).
        self.resumes: Counter[str] = Counter()
        self._drain_waiters: list[defer.Deferred[None]] = []
        #: The channel of the site's commands, which every node listens to.
        self.control_channel = naming.control_channel(config.prefix)
        self.router.pin(self.control_channel, self.controlReceived)
        #: This node's clients in the presence of their facilities (setting PRESENCE).
        self.presence = Presence(config, broker, self.router, self.clock,
                                 info=self.events.presenceInfo)
        #: This node's id: in its presence entries, the node registry and its answers.
        self.id = self.presence.node_id
        #: When the node started (Unix seconds; None before).
        self.started: Optional[float] = None
        self._registrar = LoopingCall(self.register)
        self._registrar.clock = self.clock
        self._registered: list[defer.Deferred[None]] = []
        self._retry: Optional[IDelayedCall] = None
        self._announced = False
        self._refused = False

    def _hasHistory(self, channel: str) -> bool:
        """Whether ``channel`` belongs to a facility with history."""
        return self.config.history_for(naming.facility_of(channel)) is not None

    def _readHistory(self, channel: str, since: Position) -> defer.Deferred[History]:
        """The first page of ``channel``'s history (of a facility with history) since
        ``since``."""
        retention = self.config.history_for(naming.facility_of(channel))
        assert retention is not None
        return self.broker.history(channel, retention, since=since.offset, limit=FIRST_PAGE)

    # Lifecycle

    def start(self) -> None:
        """Connect the broker; the router hears from it from now on. Keep the node in
        the registry (every third of :data:`ws4tx.control.NODE_TTL`)."""
        self.started = self.clock.seconds()
        self.broker.start(self.router)
        self.presence.start()
        self._registrar.start(control.NODE_TTL / 3, now=True)

    def stop(self) -> defer.Deferred[None]:
        """Leave the registry and write what presence has pending, then disconnect the
        broker (drain the clients first: :meth:`closeAll`)."""
        if self._registrar.running:
            self._registrar.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        left: defer.Deferred[Any] = self.broker.updatePresence(
            naming.nodes_keys(self.config.prefix), control.NODE_TTL,
            [(LEAVE, self.id, None, "")]).addErrback(lambda _: None)
        return defer.gatherResults([left, self.presence.stop()]).addBoth(
            lambda _: self.broker.stop())

    # Clients

    def join(self, client: Any, recover: dict[str, Position]) -> ClientStream:
        """A client (a :class:`~ws4tx.server.protocol.PushProtocol`: a router member, a
        presence and an event client, a stream transport) joins its channels, asking to
        recover ``recover``: subscribed, replayed and caught up, in the presence, told
        when Redis is away, known to the event handlers. Its stream state, which the
        client hands its live messages and its drains."""
        channels = client.channels
        stream = self.streams.join(client, client.facility, channels, recover)
        self.router.join(client, channels).chainDeferred(stream.subscribed)
        if not self.broker.connected:
            client.deliveryInterrupted()
        self.presence.joined(client)
        self.events.connected(client)
        return stream

    def joinSubscription(self, subscription: Any, recover: dict[str, Position],
                         subscribed: Callable[[], None]) -> ClientStream:
        """A subscription an event client added by a frame (a
        :class:`~ws4tx.server.subscriptions.Subscription`: a router member, a stream
        transport and a presence client of its own, speaking through its connection)
        joins its channels as a connection does (:meth:`join`, recovering ``recover``),
        without the handlers' connect; ``subscribed()`` is called once its channels are
        subscribed, before anything of them is sent."""
        self._subscriptions.add(subscription)
        channels = subscription.channels
        stream = self.streams.join(subscription, subscription.facility, channels, recover)

        def answered(_: object) -> None:
            subscribed()

        self.router.join(subscription, channels).addCallback(answered).chainDeferred(
            stream.subscribed)
        self.presence.joined(subscription)
        return stream

    def leaveSubscription(self, subscription: Any) -> None:
        """A subscription is over (unsubscribed, or its connection went away)."""
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self.streams.leave(subscription)
            self.router.leave(subscription)
            self.presence.left(subscription)
            self.clientLeft()

    def leaveChannels(self, client: Any, channels: AbstractSet[str]) -> None:
        """A client leaves ``channels`` only (the site's ``unsubscribe``), and stays."""
        self.streams.leaveChannels(client, channels)
        self.router.leaveChannels(client, channels)

    def leave(self, client: Any) -> None:
        """A client went away: out of its streams, channels, presence and handlers."""
        self.streams.leave(client)
        self.router.leave(client)
        self.presence.left(client)
        self.clientLeft()
        self.events.closed(client)

    # The node registry

    def register(self) -> defer.Deferred[None]:
        """Write this node into the registry with a new expiry (retried every second
        while Redis cannot be reached)."""
        # Its HISTORY, which the Django side compares with its own before it publishes.
        entry = Entry(self.id, None, round(self.started or 0.0, 3),
                      {"history": fingerprint(self.config.history)})
        d = self.broker.updatePresence(naming.nodes_keys(self.config.prefix),
                                       control.NODE_TTL, [(JOIN, self.id, None, entry.to_json())])

        def written(_: object) -> None:
            if not self._announced:
                self._announced = True
                self.log.info("node {id} is in the node registry", id=self.id)
            waiters, self._registered = self._registered, []
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> None:
            if not failure.check(BrokerUnavailable):
                # Refused (an ACL without the registry's keys): the next refresh tries
                # again; said once.
                if not self._refused:
                    self._refused = True
                    self.log.warn("could not write this node into the node registry (it "
                                  "will not be reported missing): {error}",
                                  error=failure.getErrorMessage())
                return
            self.log.debug("not in the node registry yet: {error}",
                           error=failure.getErrorMessage())
            if self._registrar.running and (self._retry is None or not self._retry.active()):
                self._retry = self.clock.callLater(1.0, self.register)

        return d.addCallbacks(written, failed)

    def whenRegistered(self) -> defer.Deferred[None]:
        """Fires after the next write of this node into the registry."""
        d: defer.Deferred[None] = defer.Deferred()
        self._registered.append(d)
        return d

    # What the node knows

    def counters(self) -> dict[str, int]:
        """Every counter of this node: the router's, the broker's and the clients'."""
        return {**self.router.stats, **getattr(self.broker, "stats", {}), **self.stats,
                **self.presence.stats, **self.reads.stats}

    def health(self) -> Health:
        """Whether messages flow (a probe made the whole trip lately)."""
        broker = self.broker
        if broker.delivering:
            return Health(True, "delivering")
        return Health(False, "connected" if broker.connected else "disconnected",
                      getattr(broker, "problem", None))

    def recovered(self, reason: Optional[str]) -> None:
        """A client that asked to recover got its verdict: recovered (``reason`` None),
        or not, for ``reason``."""
        self.recoveries[recovery_label(reason)] += 1

    def clientCount(self) -> int:
        """How many clients have joined (their subscriptions are not clients)."""
        return self.router.memberCount() - len(self._subscriptions)

    def info(self) -> dict[str, Any]:
        """What ``ws4tx.api.info`` gives of this node: its clients, channels and
        subscriptions, the versions it runs, when it started and for how long, its
        process, and the state of its Redis connection."""
        hub, now = self.router.hub, self.clock.seconds()
        started = self.started if self.started is not None else now
        return {
            "clients": self.clientCount(), "channels": len(hub.channels()),
            "subscriptions": sum(len(hub.channels_of(client)) for client in hub.clients()),
            "started": round(started, 3), "uptime": round(now - started, 3),
            "versions": _VERSIONS, "hostname": socket.gethostname(), "pid": os.getpid(),
            "redis": self.health().redis,
        }

    def channelCounts(self, pattern: str = "*") -> dict[str, int]:
        """This node's client channels whose names match ``pattern`` (``fnmatch``), with
        how many local clients each has."""
        hub = self.router.hub
        return {channel: len(hub.members(channel)) for channel in hub.channels()
                if fnmatchcase(channel, pattern)}

    # The site's commands

    def _listen(self, channel: str, receiver: Optional[Callable[[bytes], None]]) -> None:
        """What ServerAPI listens for answers with (see ``ServerAPI.__init__``)."""
        if receiver is None:
            self.router.unfollow(channel)
        else:
            self.router.pin(channel, receiver)

    def answer(self, query: control.Query) -> None:
        """Answer a query on its reply channel (only a reply channel: a command may not
        make a node publish on a client's channel)."""
        if not naming.is_reply_channel(self.config.prefix, query.reply):
            self.stats["control_invalid"] += 1
            self.log.warn("ignored a {op} query that asked for an answer on {reply}, not a "
                          "reply channel", op=query.op, reply=query.reply)
            return
        data = self.channelCounts(query.pattern) if query.op == control.CHANNELS \
            else self.info()
        self.broker.publish(query.reply, control.encode_answer(self.id, data)).addErrback(
            lambda f: self.log.warn("could not answer a {op} query: {error}", op=query.op,
                                    error=f.getErrorMessage()))

    def controlReceived(self, payload: bytes) -> None:
        """A message on the control channel: execute it, or log and ignore it when it is
        not a command this node understands (it never harms the node)."""
        try:
            command = control.decode(payload)
        except control.InvalidCommand as e:
            self.stats["control_invalid"] += 1
            self.log.warn("ignored a message of {size} bytes on {channel}: {error}",
                          size=len(payload), channel=self.control_channel, error=e)
            return
        self.stats["control_commands"] += 1
        if isinstance(command, control.Query):
            self.answer(command)
            return
        if isinstance(command, control.Unsubscribe):
            left = self.unsubscribe(command)
            self.log.info("{n} connections left channels at the site's command", n=left)
            return
        if isinstance(command, control.Subscribe):
            added = self.subscribe(command)
            self.log.info("{n} connections subscribed {facility} at the site's command",
                          n=added, facility=command.facility)
            return
        closed = self.disconnect(command)
        self.log.info("closed {n} connections with {code} at the site's command", n=closed,
                      code=command.code)

    def disconnect(self, command: control.Disconnect) -> int:
        """Close this node's connections that ``command`` matches; return how many."""
        # A subscription's match closes its connection (once).
        matching = list(dict.fromkeys(
            getattr(client, "connection", client) for client in tuple(self.router.hub.clients())
            if command.matches(client.identity, client.facility)))
        for client in matching:
            client.closeWith(command.code, command.reason)
        self.stats["closed_by_site"] += len(matching)
        return len(matching)

    def unsubscribe(self, command: control.Unsubscribe) -> int:
        """Make this node's connections that ``command`` matches leave its channels;
        return how many left any."""
        prefix, event = self.config.prefix, command.event()
        left = 0
        for client in tuple(self.router.hub.clients()):
            if command.matches(client.identity, client.facility) and client.leaveChannels(
                    command.channels(prefix, client.identity, client.facility), event):
                left += 1
        self.stats["unsubscribed_by_site"] += left
        return left

    def subscribe(self, command: control.Subscribe) -> int:
        """Make this node's event connections that ``command`` matches subscribe its
        channels (those they have not: a subscription each, as a ``subscribe`` frame
        would add); return how many subscribed any."""
        prefix = self.config.prefix
        connections = dict.fromkeys(getattr(client, "connection", client)
                                    for client in tuple(self.router.hub.clients()))
        added = 0
        for connection in connections:
            subscriptions = getattr(connection, "subscriptions", None)
            if (subscriptions is None or not getattr(connection, "speaks_events", False)
                    or not command.matches(connection.identity)):
                continue
            if subscriptions.subscribeBySite(
                    command, command.channels(prefix, connection.identity)):
                added += 1
        self.stats["subscribed_by_site"] += added
        return added

    # Drain

    def closeAll(self, code: int = closecodes.GOING_AWAY,
                 reason: str = "server shutting down") -> int:
        """Start the closing handshake with every client; return how many there are."""
        clients = [c for c in self.router.hub.clients() if c not in self._subscriptions]
        for client in clients:
            client.closeWith(code, reason)
        return len(clients)

    def dropAll(self) -> None:
        """Drop every client's connection at once."""
        for client in [c for c in self.router.hub.clients() if c not in self._subscriptions]:
            client.dropConnection(abort=True)  # type: ignore[attr-defined]

    def whenDrained(self) -> defer.Deferred[None]:
        """Fires once no client is connected."""
        if not self.router.memberCount():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    def clientLeft(self) -> None:
        """A client left (see :meth:`leave`): a drain may be over."""
        if self._drain_waiters and not self.router.memberCount():
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
