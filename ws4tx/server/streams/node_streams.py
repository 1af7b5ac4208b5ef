"""A node's channel streams together: the channels' positions and recovery, the
history reads its clients share, and each client's stream state."""

from __future__ import annotations

from functools import partial
from typing import AbstractSet, Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ws4tx.history import Position
from ws4tx.server.broker import IBroker
from ws4tx.server.streams._turn import SentAtTurnEnd
from ws4tx.server.streams.batched_reads import HistoryReads
from ws4tx.server.streams.channel_recovery import ChannelStreams
from ws4tx.server.streams.client_stream import ClientStream, StreamTransport
from ws4tx.server.streams.stored_reads import StoredReads


class Streams:
    """A node's channel streams: where each channel stands and its recovery
    (:class:`ChannelStreams`, the router's), the history reads its clients share, and
    each client's stream state (:class:`ClientStream`), which the channels' recoveries
    drive. ``barrier(at_once=False)`` fires once every message published before now has
    reached the node's clients (sent on the next turn; ``at_once``: now);
    ``verdict`` counts a recovery's outcome (its reason, None: recovered)."""

    def __init__(self, config: Any, broker: IBroker, clock: IReactorTime,
                 channels: ChannelStreams, barrier: Callable[..., defer.Deferred[None]],
                 verdict: Callable[[Optional[str]], None]) -> None:
        self.config = config
        self.broker = broker
        self.channels = channels
        self.barrier = barrier
        self.verdict = verdict
        #: Joining and catching-up clients' history reads, batched per channel and turn.
        self.reads = HistoryReads(broker, clock)
        #: Joining clients' stored-message reads, batched per turn.
        self.stored = StoredReads(broker, clock)
        #: Who waits for the barrier sent right after this turn's reads, and the batches
        #: of reads it waits to follow.
        self._after_reads: list[defer.Deferred[None]] = []
        self._awaited: list[SentAtTurnEnd] = []
        self._clients: dict[Any, ClientStream] = {}
        channels.client_of = lambda member: self._clients.get(member, member)

    def barrierAfterReads(self) -> defer.Deferred[None]:
        """A barrier (see ``barrier``) whose PUBLISH follows the commands sent so far and
        the stored-message and history reads asked for in this turn on each Redis
        server's command connection, without waiting for their answers: Redis runs it
        after them, so when it comes back through the subscriber every message published
        before the reads has arrived, and reads and barrier together take one round trip.
        One for all the clients of a turn."""
        pending = [batch for batch in (self.stored, self.reads)
                   if batch.pending and batch not in self._awaited]
        if not pending and not self._after_reads:
            # No read waits for this turn (the commands are sent): the barrier of the turn.
            return self.barrier()
        d: defer.Deferred[None] = defer.Deferred()
        self._after_reads.append(d)
        for batch in pending:
            # After every batch of the turn, whichever is sent last.
            self._awaited.append(batch)
            batch.afterSending(partial(self._sent, batch))
        return d

    def _sent(self, batch: SentAtTurnEnd) -> None:
        self._awaited.remove(batch)
        if not self._awaited:
            self._barrierNow()

    def _barrierNow(self) -> None:
        waiting, self._after_reads = self._after_reads, []

        def release(result: Any) -> None:
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        self.barrier(at_once=True).addBoth(release)

    def join(self, client: StreamTransport, facility: str, channels: tuple[str, ...],
             recover: dict[str, Position]) -> ClientStream:
        """The stream state of a client that joins ``channels`` (its replay starts once
        its :attr:`ClientStream.subscribed` fires)."""
        stream = self._clients[client] = ClientStream(client, self, facility, channels,
                                                      recover)
        return stream

    def leave(self, client: StreamTransport) -> None:
        """The client went away."""
        stream = self._clients.pop(client, None)
        if stream is not None:
            stream.close()

    def leaveChannels(self, client: StreamTransport, gone: AbstractSet[str]) -> None:
        """The client left ``gone`` (and stays)."""
        stream = self._clients.get(client)
        if stream is not None:
            stream.leaveChannels(gone)
