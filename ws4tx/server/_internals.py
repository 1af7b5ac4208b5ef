"""Every place where ws4tx reaches below Autobahn's public API, in one module (those below
Twisted's are in :mod:`ws4tx.server._twisted_internals`, so that what needs only Twisted,
the Redis broker say, does not load Autobahn).

Each reach is small, says why it is needed, and is pinned by a test that fails if the
dependency changes under it (``test/test_internals.py``):

- :func:`format_lazily`: Autobahn's per-connection debug lines are built with
  ``pprint.pformat`` before the logger drops them (22 % of the server's CPU per connection
  in the benchmark's connect profile); they are formatted only when printed.
- :func:`write_frame`: fan-out writes a frame built once (:class:`ws4tx.server.deflate.Message`)
  straight to the transport, without ``sendPreparedMessage``'s per-frame debug-argument
  building (a large share of fan-out CPU), behind whatever Autobahn's send queue holds.
  ``PushProtocol.deliver`` and ``deliverFor`` do the same inline (the fan-out's hot path,
  once per client and message: a call saved), reading the same ``send_queue``.
- :func:`share_send_queue` and :func:`own_send_queue`: Autobahn gives every connection an
  empty deque for writes it delays (``send_queue``, 760 bytes, the largest object of an
  idle connection after its own attributes), which only ``sendData`` with ``sync`` or
  ``chopsize`` ever fills: ws4tx never asks for either, so an idle connection shares one
  empty tuple, and gets a deque of its own again before such a ``sendData``.
- :func:`compression_window` and :func:`forget_inflater`: which compressed frame a
  connection takes, and no zlib inflater kept between a compressing client's messages.
- :func:`fail_connection`: fail a connection with any close code, as Autobahn does on a
  protocol violation (its public ``sendClose`` refuses codes below 3000 but 1000).
- :func:`end_message`: a message's end without firing Autobahn's ``message`` observable
  when nothing observes it (ws4tx never does): its empty gathered future and callbacks
  were made for every frame a client sent (3 % of the server's CPU per ``subscribe``).
"""

from __future__ import annotations

import pprint
from collections import deque
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as _protocol
from autobahn.websocket.protocol import WebSocketProtocol


class _Pretty:
    """``pprint.pformat(value)``, computed when it is formatted into a log line."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def format_lazily() -> None:
    """Make Autobahn's WebSocket protocol pretty-print its debug values only when a
    debug line is really emitted (idempotent). Autobahn's module global ``pformat``."""
    _protocol.pformat = _Pretty  # type: ignore[attr-defined,assignment]


def write_frame(proto: WebSocketServerProtocol, frame: bytes) -> None:
    """Write a whole ``frame`` to ``proto``'s connection, which must be open: straight to
    the transport (what ``sendPreparedMessage`` ends up doing), unless Autobahn's send
    queue (``send_queue``) holds bytes the frame must not overtake."""
    transport = proto.transport
    if transport is not None and not proto.send_queue:
        transport.write(frame)
    else:
        proto.sendData(frame)


#: The ``send_queue`` of the connections that have no delayed writes (read, never written).
_NO_QUEUE: tuple[()] = ()


def share_send_queue(proto: WebSocketProtocol) -> None:
    """Drop ``proto``'s empty ``send_queue`` for the one empty tuple every such connection
    shares (call it once Autobahn made the connection, and make it call
    :func:`own_send_queue` before any ``sendData`` that may queue)."""
    if not proto.send_queue:
        proto.send_queue = _NO_QUEUE  # type: ignore[assignment]


def own_send_queue(proto: WebSocketProtocol) -> None:
    """Give ``proto`` a deque of its own for its delayed writes, if it shares the empty
    tuple: before a ``sendData`` with ``sync`` or ``chopsize``, which appends to it."""
    queue: Any = proto.send_queue  # Autobahn annotates it as always a deque
    if queue is _NO_QUEUE:
        proto.send_queue = deque()


def compression_window(proto: WebSocketProtocol) -> Optional[int]:
    """The deflate window (``server_max_window_bits``) of the frames ``proto``'s client
    takes, or None if it does not compress (Autobahn's ``_perMessageCompress``)."""
    pmce: Any = proto._perMessageCompress  # Autobahn annotates it as always None
    if pmce is None:
        return None
    return int(pmce.server_max_window_bits)


def forget_inflater(proto: WebSocketProtocol) -> None:
    """Once a compressed message is in, drop its zlib inflater (about 40 KB with a
    15-bit window) when the client compresses without context takeover: Autobahn keeps it
    (``_decompressor``) until the next message, and makes a new one then anyway."""
    pmce: Any = proto._perMessageCompress  # Autobahn annotates it as always None
    if pmce is not None and pmce.client_no_context_takeover:
        pmce._decompressor = None


def fail_connection(proto: WebSocketProtocol, code: int, reason: str) -> None:
    """Fail ``proto``'s connection as Autobahn does on a protocol violation: send a close
    frame with ``code`` and ``reason``, and ignore whatever the peer sends after it.
    Autobahn's ``_fail_connection``."""
    proto._fail_connection(code, reason)


def end_message(proto: WebSocketProtocol) -> None:
    """Autobahn's ``onMessageEnd``: hand the message to ``onMessage``, then fire the
    ``message`` observable, only when something observes it (``on("message", ...)``):
    else that fire makes a future of an empty list and adds callbacks to it, for each
    message a client sends, to notify no one."""
    reached: Any = proto  # the adapter's _onMessage; Autobahn types message_data as a list
    if reached._listeners:
        WebSocketProtocol.onMessageEnd(proto)
        return
    if not reached.failedByMe:
        payload = b"".join(reached.message_data)
        if reached.trackedTimings:
            reached.trackedTimings.track("onMessage")
        reached._onMessage(payload, reached.message_is_binary)
    reached.message_data = None
