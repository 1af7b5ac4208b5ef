"""Channels an event client adds to its connection at run time (``subscribe`` and
``unsubscribe`` frames, see docs/protocol.md).

Each allowed subscribe is a :class:`Subscription`: a member of the node of its own (the
router's hub lists it with its channels, the streams keep its replay and recovery, the
presence its entry) that speaks through its connection. The connection keeps its
:class:`Subscriptions`, which authorizes each frame as the same channels in a URL would be
(:mod:`ws4tx.server.admission`, through the connection's authenticator), bounds how many
channels they add (``max_subscriptions``) and answers every frame once.
"""

from __future__ import annotations

from sys import intern
from typing import TYPE_CHECKING, AbstractSet, Any, Iterable, Iterator, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import control, envelope
from ws4tx.history import Position, parse_recover
from ws4tx.naming import GROUP, Identity, audience_channels, channels_for
from ws4tx.server import admission, deflate
from ws4tx.server._grants import granted_channels
from ws4tx.server._log import observer
from ws4tx.server.auth import HandshakeDenied
from ws4tx.server.streams import ClientStream

if TYPE_CHECKING:
    from ws4tx.server._runs import Run
    from ws4tx.server.protocol import PushProtocol

_log = Logger(observer=observer)

#: The positions of a subscribe that asks to recover nothing: one empty dict that every
#: such subscription's stream keeps (read, never written), not one each.
_NOTHING_TO_RECOVER: dict[str, Position] = {}


class Subscription:
    """One allowed subscribe: ``facility``'s ``channels`` on ``connection``, which it
    delivers to, paces and tells (a router member, a stream transport and a presence
    client of the node)."""

    # A connection may hold hundreds: no __dict__, and nothing but what it is (its
    # identity and peer are its connection's).
    __slots__ = ("channels", "connection", "facility", "stream")

    speaks_events = True

    def __init__(self, connection: PushProtocol, facility: str,
                 channels: tuple[str, ...]) -> None:
        self.connection = connection
        # Interned: the connections that subscribe the same facility and channels share
        # one copy of each name (the hub's, the router's) instead of one per frame.
        self.facility = intern(facility)
        self.channels = tuple(intern(c) for c in channels)
        #: Its streams (set when it joins the node).
        self.stream: Optional[ClientStream] = None

    @property
    def identity(self) -> Identity:
        return self.connection.identity

    @property
    def peer(self) -> Optional[str]:
        return self.connection.peer

    # What the router and the node's commands ask of a member

    def deliver(self, prepared: deflate.Message, channel: str, payload: bytes) -> None:
        assert self.stream is not None
        if prepared.position is None:
            # A channel without history: its events name the facility, anything else its
            # channel (a publication names its channel), so that the client knows whose
            # they are.
            prepared = prepared.tagged(self.facility, channel)
        self.connection.deliverFor(self.stream, prepared, channel, payload)

    def deliverRun(self, run: Run, channel: str) -> None:
        for prepared, payload in run.items:
            self.deliver(prepared, channel, payload)

    def deliveryInterrupted(self) -> None:
        self.connection.deliveryInterrupted()

    def deliveryResumed(self) -> None:
        self.connection.deliveryResumed()

    def messagesDropped(self, count: int) -> None:
        self.connection.messagesDropped(count)

    def closeWith(self, code: int, reason: str) -> None:
        self.connection.closeWith(code, reason)

    def leaveChannels(self, channels: Iterable[str], event: Any) -> bool:
        """The site made the connection leave ``channels`` (``ws4tx.api.unsubscribe``):
        those of them this subscription has; the client is told ``ws4tx.unsubscribed``."""
        if not self.connection.subscriptions.leave(self, frozenset(channels)):
            return False
        self.connection.emit(envelope.UNSUBSCRIBED_EVENT, event)
        return True

    # What its streams drive (ws4tx.server.streams.StreamTransport): the connection's

    @property
    def dropped(self) -> bool:
        return self.connection.dropped

    def sendStored(self, channel: str, payload: bytes) -> None:
        """A stored message names its channel, as the subscription's live ones do (a
        frame that names nothing could be any facility's)."""
        self.connection.sendRaw(envelope.encode_channel_message(channel, payload), False)

    def send(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        self.connection.send(channel, prepared, payload)

    def queue(self, channel: str, prepared: deflate.Message, payload: bytes) -> None:
        self.connection.queue(channel, prepared, payload)

    def sendEvent(self, event: str, data: Any) -> None:
        self.connection.sendEvent(event, data)

    def pace(self) -> None:
        self.connection.pace()

    def tooSlow(self, why: str) -> None:
        self.connection.tooSlow(why)

    def sendEnvelope(self, text: str) -> None:
        """Send an envelope (an acknowledgement of an event sent for it)."""
        self.connection.sendEnvelope(text)

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event of this subscription (its handler's, its presence, an error of
        an event sent for it): it names the facility."""
        if self.connection.speaks_events:
            self.connection.sendEnvelope(envelope.encode_event(event, data,
                                                               facility=self.facility))


class Subscriptions:
    """The subscriptions of one event connection, and the answers to its frames."""

    def __init__(self, connection: PushProtocol) -> None:
        self._connection = connection
        self._subscriptions: list[Subscription] = []
        #: How many channels they listen to (counted, not summed on every frame; no set
        #: of them is kept: it would cost each subscription 50 bytes).
        self._count = 0
        #: The subscribes being authorized, with how many channels each would add.
        self._authorizing: dict[defer.Deferred[Any], int] = {}

    def __iter__(self) -> Iterator[Subscription]:
        return iter(tuple(self._subscriptions))

    def of(self, facility: str) -> Optional[Subscription]:
        """A subscription of ``facility`` on this connection (the first), if any."""
        for subscription in self._subscriptions:
            if subscription.facility == facility:
                return subscription
        return None

    def channels(self) -> frozenset[str]:
        """Every channel the subscriptions listen to."""
        return frozenset(c for s in self._subscriptions for c in s.channels)

    def _holds(self, channel: str) -> bool:
        """Whether the connection listens to ``channel`` (by its URL or a subscription):
        scans of short tuples, at most max_subscriptions channels in all (a loop: a
        generator per call cost more than the scan)."""
        if channel in self._connection.channels:
            return True
        for subscription in self._subscriptions:  # noqa: SIM110 - any() costs a generator
            if channel in subscription.channels:
                return True
        return False

    def _add(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)
        self._count += len(subscription.channels)

    def streams(self) -> Iterator[ClientStream]:
        """The subscriptions' streams (the connection paces them too)."""
        return (s.stream for s in self._subscriptions if s.stream is not None)

    # Frames

    def subscribe(self, frame: envelope.Subscribe) -> None:
        """Authorize ``frame`` as the same channels in a URL would be; join them (with
        recovery from the positions it gives) and answer ``subscribed``, or answer
        ``refused`` with the reason and change nothing. A frame with a ``grant`` is
        authorized by it alone (:mod:`ws4tx.server._grants`: no authenticator work, no
        database), now.

        What costs nothing is checked first: a frame past the cap (counting the channels
        of the subscribes still being authorized) or for channels the connection has is
        refused before the authenticator is asked. An authorization still running when
        the connection closes is cancelled (:meth:`close`): it joins nothing."""
        connection = self._connection
        config = connection.factory.config
        handshake = connection.handshake
        groups = frame.audiences.groups
        chosen = list(groups) if isinstance(groups, tuple) else None
        try:
            if handshake is None:
                raise HandshakeDenied("this connection cannot subscribe")
            recover = _recover(frame, config.max_subscriptions)
            audiences = frame.audiences.names()
            request = admission.subscription_request(config, handshake, frame.facility,
                                                     audiences)
            wanted = self._wanted(request.facility, audiences, chosen)
            self._check(wanted, reserved=sum(self._authorizing.values()))
            if frame.grant is not None:
                self._join(frame, request.facility, granted_channels(
                    connection.factory.authenticator, frame.grant,
                    connection.factory.reactor.seconds(), config.prefix,
                    connection.identity, request.facility, audiences, chosen), recover,
                    checked=wanted)
                connection.node.stats["subscribes_granted"] += 1
                return
            answer = defer.maybeDeferred(admission.authenticate,
                                         connection.factory.authenticator, request)
        except HandshakeDenied as e:
            self._refuse(frame.id, e.reason)
            return
        node = connection.node
        if not answer.called:  # a channel reserved while the authenticator works
            self._authorizing[answer] = len(wanted)

        def admitted(answer: Any) -> None:
            decided = admission.admit(config, request, answer,
                                      handled=node.events.handles(request.facility),
                                      protocols=(envelope.SUBPROTOCOL,))
            channels = admission.subscription_channels(
                config, decided, connection.identity, audiences, chosen)
            self._join(frame, request.facility, channels, recover)

        def done(result: Any) -> Any:
            self._authorizing.pop(answer, None)
            return result

        answer.addBoth(done).addCallback(admitted).addErrback(self._failed, frame.id)

    def subscribeBySite(self, command: control.Subscribe, channels: Iterable[str]) -> bool:
        """The site made the connection subscribe ``channels`` of ``command``'s facility
        (``ws4tx.api.subscribe``): those it has not are a subscription, and once they are
        subscribed the client is told ``ws4tx.subscribed``. No authorization (the site
        decided) but the cap: past ``max_subscriptions`` nothing is added (logged).
        Whether it subscribed any."""
        connection = self._connection
        if not connection.isOpen():
            return False
        new = tuple(c for c in channels if not self._holds(c))
        if not new:
            return False
        cap = connection.factory.config.max_subscriptions
        if self._count + len(new) > cap:
            _log.warn("the site's subscribe of {peer} to {facility} was not done: it would "
                      "pass max_subscriptions ({cap} channels per connection)",
                      peer=connection.peer, facility=command.facility, cap=cap)
            return False
        subscription = Subscription(connection, command.facility, new)
        self._add(subscription)

        def subscribed() -> None:
            connection.emit(envelope.SUBSCRIBED_EVENT, command.event(new))

        subscription.stream = connection.node.joinSubscription(subscription,
                                                               _NOTHING_TO_RECOVER, subscribed)
        return True

    def _wanted(self, facility: str, audiences: frozenset[str],
                groups: Optional[list[str]]) -> tuple[str, ...]:
        """The channels a subscribe to ``facility``'s ``audiences`` (of ``groups`` only,
        when it names some) gives the connection's identity if it is allowed: what it
        counts against the cap before it is authorized."""
        connection = self._connection
        prefix, identity = connection.factory.config.prefix, connection.identity
        channels = audience_channels(prefix, facility, audiences, identity)
        if groups is None:
            return tuple(channels)
        every = frozenset(audience_channels(prefix, facility, (GROUP,), identity))
        chosen = frozenset(channels_for(prefix, facility, groups=tuple(groups)))
        return tuple(c for c in channels if c not in every or c in chosen)

    def _check(self, channels: tuple[str, ...], reserved: int = 0) -> None:
        """HandshakeDenied when the connection has one of ``channels`` already, or they
        would take it past ``max_subscriptions`` (with ``reserved`` channels of
        subscribes being authorized)."""
        taken = [c for c in channels if self._holds(c)]
        if taken:
            raise HandshakeDenied(f"already subscribed: {taken[0]}")
        cap = self._connection.factory.config.max_subscriptions
        if self._count + reserved + len(channels) > cap:
            raise HandshakeDenied(f"too many subscriptions: at most {cap} channels per "
                                  "connection")

    def _join(self, frame: envelope.Subscribe, facility: str, channels: tuple[str, ...],
              recover: dict[str, Position], checked: tuple[str, ...] = ()) -> None:
        """Join ``channels`` once they pass :meth:`_check`, unless they are ``checked``:
        the channels checked in this turn, before anything could change (a grant's,
        when it gives what the frame was counted for)."""
        connection = self._connection
        if not connection.isOpen():
            return
        if channels != checked:
            self._check(channels)
        subscription = Subscription(connection, facility, channels)
        self._add(subscription)

        def subscribed() -> None:
            connection.sendEnvelope(envelope.encode_subscribed(frame.id, facility,
                                                               list(channels)))

        connection.node.stats["subscribes"] += 1
        asked = {c: p for c, p in recover.items() if c in channels} if recover \
            else _NOTHING_TO_RECOVER
        subscription.stream = connection.node.joinSubscription(subscription, asked,
                                                               subscribed)

    def _failed(self, failure: Failure, ack_id: int) -> None:
        if not self._connection.isOpen():  # cancelled by close(), or answered too late
            return
        if failure.check(HandshakeDenied):
            self._refuse(ack_id, failure.value.reason)  # type: ignore[union-attr]
            return
        _log.failure("subscribe of {peer} failed", failure, peer=self._connection.peer)
        self._refuse(ack_id, "internal error")

    def _refuse(self, ack_id: int, reason: str) -> None:
        self._connection.node.stats["subscribes_refused"] += 1
        self._connection.sendEnvelope(envelope.encode_refused(ack_id, reason))

    def unsubscribe(self, frame: envelope.Unsubscribe) -> None:
        """Leave the channels of ``frame``'s facility and audiences that subscriptions
        added; answer ``unsubscribed`` with them, or ``refused`` when there were none."""
        connection = self._connection
        identity, prefix = connection.identity, connection.factory.config.prefix
        audiences = frame.audiences
        wanted = set(audience_channels(prefix, frame.facility,
                                       audiences.names() - {GROUP}, identity))
        if audiences.groups is True:
            wanted.update(audience_channels(prefix, frame.facility, (GROUP,), identity))
        elif audiences.groups:
            wanted.update(channels_for(prefix, frame.facility, groups=audiences.groups))
        left: set[str] = set()
        for subscription in self:
            if subscription.facility == frame.facility:
                gone = wanted & frozenset(subscription.channels)
                if self.leave(subscription, gone):
                    left |= gone
        if not left:
            self._refuse(frame.id, f"not subscribed to those channels of {frame.facility}")
            return
        connection.node.stats["unsubscribes"] += 1
        connection.sendEnvelope(envelope.encode_unsubscribed(frame.id, frame.facility,
                                                             sorted(left)))

    # Leaving

    def leave(self, subscription: Subscription, channels: AbstractSet[str]) -> bool:
        """``subscription`` leaves those of ``channels`` it has (all of them: it is over,
        out of the node's presence too); whether it had any."""
        gone = channels & frozenset(subscription.channels)
        if not gone or subscription not in self._subscriptions:
            return False
        node = self._connection.node
        self._connection.forgetPending(gone)
        self._count -= len(gone)
        subscription.channels = tuple(c for c in subscription.channels if c not in gone)
        if subscription.channels:
            node.leaveChannels(subscription, gone)
        else:
            self._subscriptions.remove(subscription)
            node.leaveSubscription(subscription)
        return True

    def close(self) -> None:
        """The connection went away: the authorizations under way are cancelled (one
        waiting for the authentication gate leaves its queue; the answer of one running
        in a thread is ignored) and every subscription leaves the node."""
        authorizing, self._authorizing = self._authorizing, {}
        for answer in authorizing:
            answer.cancel()
        subscriptions, self._subscriptions = self._subscriptions, []
        self._count = 0
        for subscription in subscriptions:
            self._connection.node.leaveSubscription(subscription)


def _recover(frame: envelope.Subscribe, most: int) -> dict[str, Position]:
    """The positions a subscribe asks to recover from (HandshakeDenied when malformed or
    more than ``most``)."""
    if len(frame.recover) > most:
        raise HandshakeDenied(f"invalid recover: more than {most} positions")
    try:
        return parse_recover([f"{channel}:{position}" for channel, position in
                              frame.recover])
    except ValueError as e:
        raise HandshakeDenied(f"invalid recover: {e}") from None
