"""The broker interface: how the server reaches the message bus (Redis, or memory in tests).

A broker carries messages between ws4tx nodes and the Django publishers. It is told which
channels to subscribe to by the router, calls its listener for every message on them, and
stores the last message of a channel under the channel's name (ws4redis's replay). A
channel of a facility with history (setting ``HISTORY``) is published to with
:meth:`IBroker.publishWithHistory` (``ws4tx/lua/publish.lua`` on Redis), which also numbers
the message and keeps it in the channel's stream, and read with :meth:`IBroker.history`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from ws4tx.history import (
    History,
    HistoryRead,
    NotStored as NotStored,  # the one class of both halves
    Published,
    Retention,
)
from ws4tx.naming import PresenceKeys


class BrokerUnavailable(ConnectionError):
    """The broker cannot carry out a command now (Redis is down or does not answer)."""


class SubscriptionRefused(Exception):
    """The broker refused to subscribe a channel (a Redis ACL without it: NOPERM). Only
    that channel is affected."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"Redis refused to subscribe {channel}: {reason}")
        self.channel = channel
        self.reason = reason


class CommandRefused(Exception):
    """Redis refused a command because its ACL does not permit it (NOPERM): a PUBLISH to
    a channel, a write to a key the server's Redis user may not touch. Retrying does not
    help; the operator widens the ACL or the client stops."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not permitted by Redis ACL: {reason}")
        self.reason = reason


def is_acl_refusal(message: str) -> bool:
    """Whether a Redis error message is an ACL refusal (``NOPERM ...``; inside a script,
    the same error is what the script call answers)."""
    return message.startswith("NOPERM") or " NOPERM " in message


#: A refusal the operator mends by widening the Redis user's ACL.
PERMISSION = "permission"
#: A refusal that passes by itself (the cluster down or migrating, the dataset loading):
#: the subscription is tried again, with backoff.
TRANSIENT = "transient"
#: Any other refusal: said with Redis's own reason.
OTHER = "other"

#: What each transient reply means, by its first word.
_TRANSIENT = {
    "CLUSTERDOWN": "the Redis Cluster is down or does not serve this slot; it resumes once "
                   "every slot is served (redis-cli --cluster check)",
    "TRYAGAIN": "the slot is being migrated; it resumes when the migration ends",
    "LOADING": "Redis is loading its dataset; it resumes when loading ends",
    "MOVED": "the slot moved to another node; it resumes once the slot map is read again",
    "ASK": "the slot is being migrated to another node; it resumes when the migration ends",
}


def refusal_kind(message: str) -> str:
    """How a Redis error answering a SUBSCRIBE (or SSUBSCRIBE) is mended:
    :data:`PERMISSION` (NOPERM, or another ACL refusal), :data:`TRANSIENT` (CLUSTERDOWN,
    TRYAGAIN, LOADING, MOVED, ASK) or :data:`OTHER`."""
    text = message.strip()
    if is_acl_refusal(text) or re.search(r"\bACL\b", text):
        return PERMISSION
    if text.split(" ", 1)[0] in _TRANSIENT:
        return TRANSIENT
    return OTHER


def refusal_meaning(message: str) -> str:
    """What a refusal means and how it is mended, in a few words (for the log)."""
    kind = refusal_kind(message)
    if kind == PERMISSION:
        return ("the Redis user's ACL does not allow the channel; allow it to this user "
                "(ACL SETUSER <user> &<channel>)")
    if kind == TRANSIENT:
        return _TRANSIENT[message.strip().split(" ", 1)[0]]
    return "an answer ws4tx does not know; see Redis's reason"


class IBrokerListener(Interface):
    """What a broker reports to (the router)."""

    def messageReceived(channel: str, payload: bytes) -> None:
        """A message arrived on a subscribed channel."""

    def wantedChannels() -> Iterable[str]:
        """The channels to (re)subscribe after the broker (re)connects."""

    def subscriptionRefused(channel: str, reason: str) -> None:
        """The broker refused to subscribe ``channel`` when it resubscribed after
        (re)connecting; the other channels are subscribed."""

    def brokerConnected() -> None:
        """The broker's subscriber is connected and subscribed to the wanted channels."""

    def brokerDisconnected() -> None:
        """The broker's subscriber lost its connection; messages may be missed until
        :meth:`brokerConnected`."""


class IReadListener(IBrokerListener):
    """A listener told where each read of the broker begins and ends, so that it can hand
    on what one read holds together (the router writes each client all its messages of a
    read at once). A broker calls both around every read of its subscriber connection,
    the second whatever happened in between; reads may nest (a composite's)."""

    def readStarted() -> None:
        """The messages (and other reports) of one read follow."""

    def readEnded() -> None:
        """The read is over."""


class IShardListener(IBrokerListener):
    """A listener that can be told of an outage of some channels only: a broker sharded
    over several Redis servers (:mod:`ws4tx.server.sharded_broker`) reports the loss of one
    server to the clients of its channels alone."""

    def channelsInterrupted(channels: Iterable[str]) -> None:
        """The broker lost the server of ``channels``: their messages may be missed until
        :meth:`channelsResumed`."""

    def channelsResumed(channels: Iterable[str], interrupted: Callable[[str], bool]) -> None:
        """The server of ``channels`` is back and they are resubscribed: delivery goes on
        for every client none of whose channels is still ``interrupted``, and what was
        published on ``channels`` meanwhile is recovered from their histories (theirs
        only: the other servers' channels missed nothing)."""


class IBroker(Interface):
    """A message bus with per-channel subscriptions and a last-message store."""

    connected = Attribute("True while the subscriber is connected and subscribed.")
    delivering = Attribute(
        "True while messages are known to flow (a probe made the whole trip lately).")

    def start(listener: IBrokerListener) -> None:
        """Connect, and report to ``listener`` from now on."""

    def stop() -> Deferred[None]:
        """Disconnect; fires when every connection is closed."""

    def subscribe(channel: str) -> Deferred[None]:
        """Start receiving ``channel``; fires once the subscription is in place, fails
        with :class:`SubscriptionRefused` if the broker refuses it, or with
        :class:`BrokerUnavailable` (the channel is then subscribed with the listener's
        wanted channels once the broker is back)."""

    def unsubscribe(channel: str) -> Deferred[None]:
        """Stop receiving ``channel``."""

    def publish(channel: str, payload: bytes, expire: int = 0) -> Deferred[int]:
        """Publish ``payload`` on ``channel`` and, when ``expire`` > 0, store it under the
        channel's name for ``expire`` seconds. Fires with the number of receivers, or fails
        with :class:`BrokerUnavailable` within a bounded time; fails with
        :class:`NotStored` when the message was published but not stored (it is stored
        only once published)."""

    def barrier() -> Deferred[None]:
        """Fires once every message published (by anyone) before this call has been
        handed to the listener: messages on all channels arrive in the order they were
        published, and this marks a point in that order. Fails with
        :class:`BrokerUnavailable` when the broker cannot tell (disconnected, or within a
        bounded time)."""

    def fetch(key: str) -> Deferred[Optional[bytes]]:
        """The message stored under ``key``, or None."""

    def fetchMany(keys: Sequence[str]) -> list[Deferred[Optional[bytes]]]:
        """What :meth:`fetch` gives of each of ``keys``, one Deferred per key in their
        order, in one round trip: one ``MGET`` per Redis server (per slot on a Redis
        Cluster, sent together to each node; at most :data:`BATCH` keys each). A server
        that cannot answer fails its keys only."""

    def publishWithHistory(
        channel: str, payload: bytes, retention: Retention, expire: int = 0,
    ) -> Deferred[Published]:
        """Publish ``payload`` on ``channel`` of a facility with history, atomically: its
        next offset (a new epoch when the channel has none), an entry in the channel's
        stream (under the keys the broker names for it: :func:`ws4tx.naming.history_keys`,
        or :func:`ws4tx.naming.cluster_history_keys` on a Redis Cluster, as the Django side
        names them) that keeps the last ``retention.size`` messages for ``retention.ttl``
        seconds, the replay store when ``expire`` > 0, and the PUBLISH of the payload
        behind its position (:func:`ws4tx.history.with_position`). Everything or nothing:
        fires with a :class:`~ws4tx.history.Published`, or fails (:class:`BrokerUnavailable`
        within a bounded time) having delivered nothing."""

    def history(
        channel: str, retention: Retention, since: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> Deferred[History]:
        """The history of ``channel`` (a channel of a facility with history, read from the
        keys the broker names for it; see :func:`ws4tx.history.history_args` for ``since``
        and ``limit``): a :class:`~ws4tx.history.History`."""

    def histories(reads: Sequence[HistoryRead]) -> list[Deferred[History]]:
        """What :meth:`history` gives of each of ``reads``, one Deferred per read in
        their order, in one round trip: one call of ``ws4tx/lua/histories.lua`` per Redis
        server (per slot on a Redis Cluster, sent together to each node; at most
        :data:`BATCH` channels each). A bad read (``ValueError``) or a server that cannot
        answer fails its reads only."""

    def updatePresence(
        keys: PresenceKeys, ttl: float, changes: list[tuple[str, str, Optional[str], str]],
        audiences: Optional[dict[str, tuple[str, ...]]] = None,
    ) -> Deferred[list[str]]:
        """Apply ``changes`` (op, connection id, user, entry JSON; see
        :func:`ws4tx.presence.update_args`) to the presence whose ``keys`` are given, each
        joined or refreshed connection expiring ``ttl`` seconds from now, in the presence
        of its ``audiences`` too (connection id -> audience names); trim expired
        connections. Fires with the ids of the connections trimmed."""

    def readPresence(keys: PresenceKeys, what: str,
                     audience: Optional[str] = None) -> Deferred[Any]:
        """Read the presence whose ``keys`` are given (of its ``audience`` only, when
        given), its unexpired connections only: ``what`` "list" fires with their entries
        (JSON texts, see :func:`ws4tx.presence.parse_entries`), "stats" with
        (connections, distinct users) (see :func:`ws4tx.presence.parse_stats`)."""


#: At most this many keys or channels in one batched command (an ``MGET``, a call of the
#: histories script): more are split into several, sent together.
BATCH = 100

T = TypeVar("T")
R = TypeVar("R")


def spread(d: Deferred[list[R]], count: int) -> list[Deferred[R]]:
    """``count`` Deferreds, the i-th firing with the i-th item of what ``d`` fires with
    (all failing with its failure)."""
    parts: list[Deferred[R]] = [Deferred() for _ in range(count)]

    def answered(reply: list[R]) -> None:
        for part, item in zip(parts, reply, strict=True):
            part.callback(item)

    def failed(failure: Failure) -> None:
        for part in parts:
            part.errback(failure)

    d.addCallbacks(answered, failed)
    return parts


def batched(items: Sequence[T], call: Callable[[list[T]], Deferred[list[R]]],
            group: Callable[[T], Hashable] = lambda _: None,
            check: Optional[Callable[[T], object]] = None) -> list[Deferred[R]]:
    """One Deferred per item of ``items``, in their order, from ``call`` made once per
    ``group`` (the items of one group, at most :data:`BATCH` a call, in their order; it
    fires with a result per item). An item that ``check`` (or ``group``) refuses with
    ``ValueError`` fails alone."""
    results: list[Optional[Deferred[R]]] = [None] * len(items)
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        try:
            if check is not None:
                check(item)
            key = group(item)
        except ValueError:
            results[index] = defer.fail()
            continue
        groups.setdefault(key, []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            sent = defer.maybeDeferred(call, [items[i] for i in chunk])
            for index, part in zip(chunk, spread(sent, len(chunk)), strict=True):
                results[index] = part
    return [d for d in results if d is not None]


def routed(items: Sequence[T], memberOf: Callable[[T], Hashable],
           call: Callable[[Hashable, list[T]], list[Deferred[R]]]) -> list[Deferred[R]]:
    """One Deferred per item of ``items``, in their order, from ``call`` made once per
    member (the items ``memberOf`` places on it, in their order; it gives a Deferred per
    item)."""
    members: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        members.setdefault(memberOf(item), []).append(index)
    results: list[Optional[Deferred[R]]] = [None] * len(items)
    for member, indices in members.items():
        answers = call(member, [items[i] for i in indices])
        for index, answer in zip(indices, answers, strict=True):
            results[index] = answer
    return [d for d in results if d is not None]


def publish_to(
    broker: IBroker, channels: Iterable[str], payload: bytes, expire: int = 0,
    retention: Optional[Retention] = None, *,
    appended: Optional[Callable[[Published], None]] = None,
) -> defer.Deferred[int]:
    """Publish ``payload`` on each of ``channels`` (channels of a facility with history,
    ``retention``, through :meth:`IBroker.publishWithHistory`, each append told to
    ``appended``); fires with the total number of
    receivers, or fails with the first failure that is not :class:`NotStored`
    (BrokerUnavailable, say), or, when every channel got it but some did not store it,
    with a :class:`NotStored` of the total receivers."""
    if retention is None:
        sent = [broker.publish(c, payload, expire) for c in channels]
    else:
        def receivers(published: Published) -> int:
            if appended is not None:
                appended(published)
            return published.receivers

        sent = [broker.publishWithHistory(c, payload, retention, expire)
                .addCallback(receivers)
                for c in channels]
    d = defer.DeferredList(sent, consumeErrors=True)

    def combine(results: list[tuple[bool, Any]]) -> int:
        receivers, not_stored = 0, None
        for ok, result in results:
            if ok:
                receivers += result
            elif result.check(NotStored):
                receivers += result.value.receivers
                not_stored = not_stored or result.value
            else:
                result.raiseException()
        if not_stored is not None:
            raise NotStored(receivers, not_stored.reason)
        return receivers

    return d.addCallback(combine)
