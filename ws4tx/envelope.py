"""The JSON envelope of ws4tx events. Pure: both halves and the browser client speak it.

A text frame whose JSON object has ``"ws4tx"`` as its FIRST key is an envelope; every other
frame is a raw ws4redis payload and is delivered unchanged. Kinds:

- ``{"ws4tx":"event","event":NAME,"data":DATA}``, with ``"id":N`` when the sender wants an
  acknowledgement;
- ``{"ws4tx":"ack","id":N,"data":DATA}`` or ``{"ws4tx":"ack","id":N,"error":MESSAGE}``.

Event names starting with ``ws4tx.`` are the server's own (``ws4tx.error``, ...).
A connection speaks envelopes when it asks for the :data:`SUBPROTOCOL` subprotocol.
See docs/protocol.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

#: The WebSocket subprotocol by which a client says it speaks the event envelope.
SUBPROTOCOL = "ws4tx.v1"

EVENT = "event"
ACK = "ack"

#: Sent to one client when its event could not be handled (``data``: ``{"message": ...}``).
ERROR_EVENT = "ws4tx.error"
#: Sent to every client when the server lost Redis: messages may be missed until
#: :data:`RESUMED_EVENT` (``data``: null). An application resyncs on resumption.
INTERRUPTED_EVENT = "ws4tx.interrupted"
#: Sent to every client that got :data:`INTERRUPTED_EVENT` once delivery is back.
RESUMED_EVENT = "ws4tx.resumed"
#: Sent when the server fell behind and dropped messages of this client's channels
#: (``data``: ``{"messages": n}``), once it has caught up. An application resyncs.
DROPPED_EVENT = "ws4tx.dropped"

_MARK = '{"ws4tx":'
_MAX_ID = 2**53 - 1  # what a JavaScript number holds exactly


class InvalidEnvelope(ValueError):
    """A frame that looks like an envelope (first key ``ws4tx``) but is not a valid one."""


@dataclass(frozen=True)
class Event:
    """An event: a name, JSON data, and the id of the acknowledgement the sender awaits."""

    event: str
    data: Any = None
    id: Optional[int] = None


@dataclass(frozen=True)
class Ack:
    """The answer to an event that carried an id: data, or an error message."""

    id: int
    data: Any = None
    error: Optional[str] = None


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: str, data: Any = None, id: Optional[int] = None) -> str:
    """The envelope of an event, as text."""
    obj: dict[str, Any] = {"ws4tx": EVENT, "event": event, "data": data}
    if id is not None:
        obj["id"] = id
    return _dumps(obj)


def encode_ack(id: int, data: Any = None, error: Optional[str] = None) -> str:
    """The envelope of an acknowledgement, as text."""
    obj: dict[str, Any] = {"ws4tx": ACK, "id": id}
    if error is None:
        obj["data"] = data
    else:
        obj["error"] = error
    return _dumps(obj)


def is_envelope(text: Union[str, bytes]) -> bool:
    """Whether ``text`` is meant as an envelope (a cheap test on its first bytes)."""
    if isinstance(text, bytes):
        return text.lstrip()[:9] == _MARK.encode()
    return text.lstrip()[:9] == _MARK


def decode(text: Union[str, bytes]) -> Union[Event, Ack, None]:
    """The envelope in ``text``; None when ``text`` is a raw payload.

    Raises :class:`InvalidEnvelope` for a frame that claims to be an envelope but is not
    a valid one.
    """
    if not is_envelope(text):
        return None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise InvalidEnvelope(f"not JSON: {e}") from None
    except RecursionError:
        raise InvalidEnvelope("nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidEnvelope("not a JSON object")
    kind = obj.get("ws4tx")
    msg_id = obj.get("id")
    if msg_id is not None and not (
        isinstance(msg_id, int) and not isinstance(msg_id, bool) and 0 <= msg_id <= _MAX_ID
    ):
        raise InvalidEnvelope("id must be a non-negative integer")
    if kind == EVENT:
        name = obj.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEnvelope("an event needs a non-empty string 'event'")
        return Event(name, obj.get("data"), msg_id)
    if kind == ACK:
        if msg_id is None:
            raise InvalidEnvelope("an ack needs an id")
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise InvalidEnvelope("an ack's error must be a string")
        return Ack(msg_id, obj.get("data"), error)
    raise InvalidEnvelope(f"unknown kind {kind!r}")
