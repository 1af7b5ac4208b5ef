"""Channel streams, in one home: where each channel with history stands, the history
reads, the merge of stored, history and live messages, and recovery — when a client joins,
when a live message shows a gap, after an outage of one shard or of all.

- :class:`ChannelStreams` (the router's, in :mod:`.channel_recovery`): each positioned
  channel's position, and its recovery from the history once for all its local clients
  after a skip, a new epoch or an outage (:meth:`ChannelStreams.recoverAfterOutage` gets
  only the channels of the Redis that came back), handing what it recovers back to the
  router's fan-out.
- :class:`ClientStream` (one per client, in :mod:`.client_stream`): the join's replay
  (stored messages, the history since the positions asked, held live messages merged in
  order), the catch-ups the node hands it after a long gap, and what it is told. It drives
  its client through :class:`StreamTransport`: the connection frames, writes and paces;
  the stream decides.
- :class:`HistoryReads` (in :mod:`.batched_reads`): the reads asked for in one reactor
  turn, one per channel, each message framed once (:class:`SharedHistory`).
- :class:`StoredReads` (in :mod:`.stored_reads`): the stored messages joining clients
  ask for in one reactor turn, read together, each channel once.
- :class:`CatchUp` (in :mod:`.catchup`): one client's recovery of one channel, a page at
  a time.
- :class:`Streams` (the node's, in :mod:`.node_streams`): all of them together;
  :meth:`ws4tx.server.node.Node.join` is the client's way in.

A recovery that wrote everything missed in one reactor turn would trip the slow-client
bound (``max_queue_bytes``) as soon as it passed a megabyte, and cost memory for all of it
at once. Here a recovery reads ``COUNT``-limited pages (:func:`ws4tx.history.step` says
what each gives), hands their messages to the client's paced queue, and reads the next
page only once the client's queue has drained below :data:`LOW_MARK`: its CPU and memory
follow what is delivered, never what was asked.

The names below are imported from their modules when first used (PEP 562): the package
face imports none of its parts, so no part imports a package that imports it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ws4tx import _lazy

if TYPE_CHECKING:
    from ws4tx.server.streams._retry import READ_ATTEMPTS, READ_RETRY_DELAY, retried
    from ws4tx.server.streams._text import is_text
    from ws4tx.server.streams.batched_reads import (
        FIRST_PAGE,
        KEPT_PAGES,
        PAGE_BYTES,
        HistoryReads,
        SharedHistory,
    )
    from ws4tx.server.streams.catchup import LOW_MARK, CatchUp, ReadPage, Send, next_limit
    from ws4tx.server.streams.channel_recovery import (
        MAX_SUSPECTS,
        QUIET,
        QUIET_MAX,
        ChannelStreams,
        HandOn,
        ReadHistory,
        StreamClient,
    )
    from ws4tx.server.streams.client_stream import ClientStream, StreamTransport
    from ws4tx.server.streams.node_streams import Streams
    from ws4tx.server.streams.stored_reads import StoredReads

#: Where each public name is defined.
_WHERE = {
    "READ_ATTEMPTS": "ws4tx.server.streams._retry",
    "READ_RETRY_DELAY": "ws4tx.server.streams._retry",
    "retried": "ws4tx.server.streams._retry",
    "is_text": "ws4tx.server.streams._text",
    "FIRST_PAGE": "ws4tx.server.streams.batched_reads",
    "HistoryReads": "ws4tx.server.streams.batched_reads",
    "KEPT_PAGES": "ws4tx.server.streams.batched_reads",
    "PAGE_BYTES": "ws4tx.server.streams.batched_reads",
    "SharedHistory": "ws4tx.server.streams.batched_reads",
    "CatchUp": "ws4tx.server.streams.catchup",
    "LOW_MARK": "ws4tx.server.streams.catchup",
    "ReadPage": "ws4tx.server.streams.catchup",
    "Send": "ws4tx.server.streams.catchup",
    "next_limit": "ws4tx.server.streams.catchup",
    "ChannelStreams": "ws4tx.server.streams.channel_recovery",
    "HandOn": "ws4tx.server.streams.channel_recovery",
    "MAX_SUSPECTS": "ws4tx.server.streams.channel_recovery",
    "QUIET": "ws4tx.server.streams.channel_recovery",
    "QUIET_MAX": "ws4tx.server.streams.channel_recovery",
    "ReadHistory": "ws4tx.server.streams.channel_recovery",
    "StreamClient": "ws4tx.server.streams.channel_recovery",
    "ClientStream": "ws4tx.server.streams.client_stream",
    "StreamTransport": "ws4tx.server.streams.client_stream",
    "Streams": "ws4tx.server.streams.node_streams",
    "StoredReads": "ws4tx.server.streams.stored_reads",
}

__all__ = [
    "FIRST_PAGE",
    "KEPT_PAGES",
    "LOW_MARK",
    "MAX_SUSPECTS",
    "PAGE_BYTES",
    "QUIET",
    "QUIET_MAX",
    "READ_ATTEMPTS",
    "READ_RETRY_DELAY",
    "CatchUp",
    "ChannelStreams",
    "ClientStream",
    "HandOn",
    "HistoryReads",
    "ReadHistory",
    "ReadPage",
    "Send",
    "SharedHistory",
    "StoredReads",
    "StreamClient",
    "StreamTransport",
    "Streams",
    "is_text",
    "next_limit",
    "retried",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from where it is defined on first use (then kept here)."""
    return _lazy.attribute(__name__, _WHERE, globals(), name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), __all__)
