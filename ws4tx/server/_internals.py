"""Where ws4tx reaches below Autobahn's public API, in one place.

Cheaper connections: Autobahn's debug lines, formatted only when printed.

Autobahn's WebSocket protocol logs its options and the transport's details at debug level
on every connection, and builds those messages with ``pprint.pformat`` before the logger
decides to drop them: in the connect profile of the benchmark suite that was 22 % of the
server's CPU per connection, for lines that are printed only with debug logging on.
:func:`format_lazily` makes the formatting happen when (and only if) a line is printed;
the text of the lines does not change.
"""

from __future__ import annotations

import pprint
from typing import Any

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
    debug line is really emitted (idempotent)."""
    _protocol.pformat = _Pretty  # type: ignore[assignment]


def fail_connection(proto: WebSocketProtocol, code: int, reason: str) -> None:
    """Fail ``proto``'s connection as Autobahn does on a protocol violation: send a close
    frame with ``code`` and ``reason``, and ignore whatever the peer sends after it
    (Autobahn's public ``sendClose`` refuses codes below 3000 but 1000)."""
    proto._fail_connection(code, reason)
