"""What a client sends, whatever carried it: a WebSocket frame, or the body of a ``POST``
to its URL (:mod:`ws4tx.server.posting`). One way in for both: the same rate limit, the
event envelope dispatched to the same handlers (:meth:`ws4tx.server.events.Events.dispatch`),
raw payloads published on the client's publish channels within the same storage rules.

:class:`Sender` is mixed into what carries a client's messages; that class gives it the
client's admission and says what happens past the rate limit and on a policy violation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ws4tx import closecodes, envelope
from ws4tx.history import Published
from ws4tx.naming import Identity
from ws4tx.server import admission
from ws4tx.server._log import observer
from ws4tx.server.broker import NotStored, publish_to
from ws4tx.server.handlers import EventRefused
from ws4tx.server.node import Node

_log = Logger(observer=observer)

#: How many of its own messages a client without ``echo`` may have in flight.
_MAX_UNECHOED = 256

#: What a client's append to a channel's history costs its storage budget beyond the
#: payload: an entry in an existing stream (Redis 7: about 16 bytes plus the payload, and
#: the metadata written with it), and the stream itself when the append made it (about
#: 4.5 KB for a new stream and its metadata key). A client can thus make at most
#: ``STORE_BUDGET / 4096`` new history streams a minute (16 by default), however many
#: facilities the ``HISTORY`` globs admit.
HISTORY_ENTRY_COST = 64
HISTORY_STREAM_COST = 4096


class Sender:
    """The handling of what one client sends (a WebSocket connection, or one POST)."""

    identity: Identity
    facility: str
    peer: Any
    speaks_events: bool
    #: What it was admitted to (None before its handshake was answered).
    _admitted: Optional[admission.Admission]
    #: The channels it listens to, and those it publishes to.
    _channels: tuple[str, ...]
    _publish_to: tuple[str, ...]
    #: Its own messages on its way back to it, which it must not get (no ``echo``).
    _unechoed: Counter[tuple[str, bytes]]
    _over_budget: bool
    #: The address it counts under (None: a trusted proxy that names none).
    _address: Optional[str]

    @property
    def node(self) -> Node:
        """The node it belongs to."""
        raise NotImplementedError

    # What the carrier decides

    def withinRate(self) -> bool:
        """Whether one more message is within the rate limit (and spend it)."""
        raise NotImplementedError

    def overLimit(self, text: Optional[bytes]) -> None:
        """A message over the rate limit was dropped (``text``: the envelope of an event
        client, None for anything else)."""
        raise NotImplementedError

    def closeWith(self, code: int, reason: str) -> None:
        """The client broke the protocol: end it, saying why."""
        raise NotImplementedError

    # What it sent

    def received(self, payload: bytes, isBinary: bool) -> Optional[defer.Deferred[Any]]:
        """Handle one message of this client: over the rate limit it is dropped
        (:meth:`overLimit`); an envelope of an event client is dispatched to its facility's
        handlers (the Deferred fires once it is answered); a raw payload that looks like an
        envelope is a policy violation (:meth:`closeWith`); anything else is published on
        its publish channels (the Deferred fires with the receivers, or fails). None when
        nothing is left to wait for."""
        if not self.withinRate():
            self.overLimit(payload if self.speaks_events and not isBinary else None)
            return None
        if self.speaks_events and not isBinary and envelope.is_envelope(payload):
            # A Sender is an EventClient once its carrier adds emit and the rest.
            return self.node.events.dispatch(self, payload)  # type: ignore[arg-type]
        if self._publish_to and envelope.is_envelope(payload):
            # Only the server speaks in envelopes to event clients; a raw payload that
            # they would read as one (an event, an acknowledgement) is never published.
            self.node.stats["raw_envelopes"] += 1
            self.closeWith(closecodes.POLICY_VIOLATION,
                           "raw messages may not look like ws4tx envelopes")
            return None
        return self.publish(payload)

    # Publishing

    def mayPublish(self) -> bool:
        """Whether this client has channels to publish to."""
        return bool(self._publish_to)

    def publish(self, payload: bytes) -> defer.Deferred[int]:
        """Publish ``payload`` on this client's publish channels (and store it for replay,
        within the site's rules); fires with the receivers."""
        if not self._publish_to:
            _log.debug("{peer} sent a message but has no publish flag", peer=self.peer)
            return defer.succeed(0)
        config = self.node.config
        retention = config.history_for(self.facility)
        expire, unstored = self._storage(payload, retention is not None)
        if unstored and retention is not None:
            # A message kept out of the history would reach the clients connected now
            # and never those that recover: it is not published at all.
            return defer.fail(EventRefused(
                f"{unstored}: not published (this facility keeps a history)"))
        if self._admitted is not None and not self._admitted.echo:
            for channel in self._publish_to:
                if channel in self._channels:
                    self._remember(channel, payload)
        appended = self._appended if retention is not None and \
            self.node.store_budgets is not None else None
        d = publish_to(self.node.broker, self._publish_to, payload, expire, retention,
                       appended=appended)
        if unstored:
            d.addCallback(_raiseNotStored, unstored)
        return d.addErrback(self._publishFailed, payload)

    def _storage(self, payload: bytes, history: bool) -> tuple[int, str]:
        """How long to store ``payload`` for replay (0: not at all), and why a message
        that should have been stored (for replay, or in its channels' ``history``) is
        not ("": it is, or it was never to be): over the identity's storage budget."""
        config, budgets = self.node.config, self.node.store_budgets
        if self._admitted is None:
            return 0, ""
        stores = self._admitted.stores
        if not stores and not history:
            return 0, ""
        # The payload once (a history facility's replay key is overwritten, its stream
        # grows), and what a history entry costs beyond it.
        cost = (len(payload) + (HISTORY_ENTRY_COST if history else 0)) * len(self._publish_to)
        if budgets is None or budgets.take(self._budgetKey(), cost):
            return (config.expire if stores else 0), ""
        self.node.stats["store_refused"] += 1
        if not self._over_budget:
            self._over_budget = True
            _log.warn("{peer} ({who}) is over its storage budget of {budget} bytes a "
                      "minute: its messages are {what}", peer=self.peer,
                      who=self.identity.user or "anonymous", budget=config.store_budget,
                      what="not published (a facility with history)" if history
                      else "delivered but not stored")
        return 0, f"over the storage budget of {config.store_budget} bytes a minute"

    def _budgetKey(self) -> Any:
        """Whose storage budget this client spends: its user's, or its address's."""
        return self.identity.user or ("@", self._address)

    def _appended(self, published: Published) -> None:
        """An append of this client made a new history stream (the first offset of an
        epoch): its cost goes on the budget (which may go into debt)."""
        budgets = self.node.store_budgets
        if budgets is not None and published.position.offset == 1:
            budgets.charge(self._budgetKey(), HISTORY_STREAM_COST)

    def _remember(self, channel: str, payload: bytes) -> None:
        if len(self._unechoed) >= _MAX_UNECHOED:
            self._unechoed.clear()
        self._unechoed[(channel, payload)] += 1

    def _publishFailed(self, failure: Failure, payload: bytes) -> Failure:
        error = failure.value
        if isinstance(error, NotStored):
            # Delivered (its echo, if any, is on the way): only the replay copy is missing.
            _log.info("the message of {peer} reached {receivers} subscribers but was not "
                      "stored: {reason}", peer=self.peer, receivers=error.receivers,
                      reason=error.reason)
            return failure
        for channel in self._publish_to:
            key = (channel, payload)
            if self._unechoed[key] > 1:
                self._unechoed[key] -= 1
            else:
                self._unechoed.pop(key, None)
        _log.warn("publishing for {peer} failed: {error}", peer=self.peer,
                  error=failure.value)
        return failure


def _raiseNotStored(receivers: int, reason: str) -> int:
    raise NotStored(receivers, reason)
