"""The JSON envelope of ws4tx events. Pure: both halves and the browser client speak it.

A text frame whose JSON object has ``"ws4tx"`` as its FIRST key is an envelope; every other
frame is a raw ws4redis payload and is delivered unchanged. Kinds:

- ``{"ws4tx":"event","event":NAME,"data":DATA}``, with ``"id":N`` when the sender wants an
  acknowledgement;
- ``{"ws4tx":"ack","id":N,"data":DATA}`` or ``{"ws4tx":"ack","id":N,"error":MESSAGE}``;
- ``{"ws4tx":"pub","channel":C,"offset":N,"epoch":E,"data":TEXT}`` (``"data64"``: base64,
  for a binary payload): from the server only, a message of a channel with history;
- ``{"ws4tx":"subscribe","id":N,"facility":F,"audiences":{...},"recover":{C:"E:O"},
  "grant":G}`` (``grant`` optional: a signed grant of the site, :mod:`ws4tx.grants`) and
  ``{"ws4tx":"unsubscribe","id":N,"facility":F,"audiences":{...}}`` from a client, answered
  by the server with ``{"ws4tx":"subscribed","id":N,"facility":F,"channels":[...]}``,
  ``{"ws4tx":"unsubscribed","id":N,"facility":F,"channels":[...]}`` or
  ``{"ws4tx":"refused","id":N,"reason":R}``.

Event names starting with ``ws4tx.`` are the server's own (``ws4tx.error``, ...), and
acknowledgements and publications come only from the server, on the connection that
asked: no publisher may speak with that voice (:func:`check_event_name`, :func:`server_voice`).
A connection speaks envelopes when it asks for the :data:`SUBPROTOCOL` subprotocol.
See docs/protocol.md.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Union

#: The WebSocket subprotocol by which a client says it speaks the event envelope.
SUBPROTOCOL = "ws4tx.v1"

EVENT = "event"
ACK = "ack"
#: A message of a channel with history, with its position, as event clients get it.
PUBLICATION = "pub"
#: A client's request to listen to more channels on its connection, or to stop.
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
#: The server's answers to them (``subscribed``/``unsubscribed`` with the channels, or
#: ``refused`` with the reason): every subscribe and unsubscribe gets exactly one.
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
REFUSED = "refused"
#: The kinds only the server sends: one met on a channel is forged.
_SERVER_KINDS = frozenset({ACK, PUBLICATION, SUBSCRIBED, UNSUBSCRIBED, REFUSED})
#: The audiences a subscribe may name (``groups``: true for all the identity's groups,
#: or a list of some of them).
SUBSCRIBE_AUDIENCES = ("broadcast", "user", "groups", "session")
#: Most group names one subscribe may list.
MAX_SUBSCRIBE_GROUPS = 256

#: Longest ``grant`` a subscribe may carry (as :data:`ws4tx.grants.MAX_GRANT_LENGTH`).
MAX_GRANT_LENGTH = 2048

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
#: Sent to the event clients of a facility with presence (setting ``PRESENCE``) when
#: clients came or went (``data``: ``{"joined": [{"id", "user", "since"}, ...], "left":
#: [id, ...]}``), one event for all that came or went at once.
PRESENCE_EVENT = "ws4tx.presence"

#: Sent to a client whose connection left some of its channels at the site's command
#: (``ws4tx.api.unsubscribe``): ``{"audiences": [...], "groups": [...], "reason": ...}``
#: (``groups`` only when the command named some); the connection stays open.
UNSUBSCRIBED_EVENT = "ws4tx.unsubscribed"
#: Sent to an event client the site made subscribe channels (``ws4tx.api.subscribe``).
SUBSCRIBED_EVENT = "ws4tx.subscribed"

#: Sent to an event client whose connection's token expires soon (``data``: ``{"expires":
#: <Unix seconds>}``); the client answers with the same event, ``{"token": <a fresh
#: token>}`` and an id, acknowledged with ``{"expires": ...}`` or an error. Unless a fresh
#: token comes, the connection is closed with 4002 at ``expires``.
REFRESH_EVENT = "ws4tx.refresh"

#: Sent to an event client of an authenticated user once its connection is open, and
#: again before the token expires: ``{"resume": <token>, "expires": <Unix seconds>}``.
#: Presenting the latest token on reconnect (``resume=`` in the URL) reopens the same
#: channels without authenticating anew (see ws4tx._resume).
SESSION_EVENT = "ws4tx.session"

#: Sent once to a client that asked to recover missed messages (``recover=`` in its URL),
#: after the recovered messages and before any live one: ``{"recovered": true}``, or
#: ``{"recovered": false, "reason": ...}`` (docs/protocol.md, Recovery); also when the node
#: recovered a channel after a Redis outage, or could not recover one.
RECOVERED_EVENT = "ws4tx.recovered"
#: Sent to an event client of a facility with history with the positions of its channels
#: that it has none for yet (it just subscribed, or its position's history is gone):
#: ``{"channels": {channel: {"epoch": ..., "offset": n}}}``, before any live message of
#: them, so that it can recover what it misses after a reconnect even if it got nothing.
POSITIONS_EVENT = "ws4tx.positions"

#: The prefix of the server's own event names.
RESERVED_PREFIX = "ws4tx."

_MARK = '{"ws4tx":'
_MARK_BYTES = _MARK.encode()
#: How an event envelope the server encoded begins (:func:`encode_event`).
_EVENT_MARK = b'{"ws4tx":"event",'
_MAX_ID = 2**53 - 1  # what a JavaScript number holds exactly
#: What a browser's ``trimStart()`` removes before ws4tx.js looks for the mark
#: (ECMAScript's WhiteSpace and LineTerminator): the two sides agree on what an envelope is.
_SPACES = ("\t\n\x0b\x0c\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
           + "\u2028\u2029\u202f\u205f\u3000\ufeff")
_ASCII_SPACES = _SPACES[:6].encode()
#: ``\uD800``-``\uDFFF`` escapes: JSON can spell lone surrogates, which no UTF-8 text holds.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidEnvelope(ValueError):
    """A frame that looks like an envelope (first key ``ws4tx``) but is not a valid one;
    ``id`` is the acknowledgement id it asked for, when it could be read, and ``kind``
    its kind (a subscribe or unsubscribe is answered ``refused``, anything else with an
    ack)."""

    def __init__(self, message: str, id: Optional[int] = None,
                 kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.id = id
        self.kind = kind


@dataclass(frozen=True)
class Event:
    """An event: a name, JSON data, and the id of the acknowledgement the sender awaits."""

    event: str
    data: Any = None
    id: Optional[int] = None
    #: The facility it is for, when a client names one (a subscription's event: None for
    #: the facility of the connection's URL).
    facility: Optional[str] = None


@dataclass(frozen=True)
class Ack:
    """The answer to an event that carried an id: data, or an error message."""

    id: int
    data: Any = None
    error: Optional[str] = None


@dataclass(frozen=True)
class Audiences:
    """The audiences a subscribe or unsubscribe names: ``groups`` None for none, ``True``
    for all the identity's groups, else those names."""

    broadcast: bool = False
    user: bool = False
    session: bool = False
    groups: Union[bool, tuple[str, ...], None] = None

    def names(self) -> frozenset[str]:
        """The URL audiences (flags) they are: ``broadcast``, ``user``, ``group``,
        ``session``."""
        chosen = {name for name, on in (("broadcast", self.broadcast), ("user", self.user),
                                        ("session", self.session)) if on}
        if self.groups:
            chosen.add("group")
        return frozenset(chosen)


@dataclass(frozen=True)
class Subscribe:
    """A client asks to listen to ``facility``'s channels of ``audiences`` on its
    connection, recovering from ``recover`` (channel -> ``"<epoch>:<offset>"``)."""

    id: int
    facility: str
    audiences: Audiences
    recover: tuple[tuple[str, str], ...] = ()
    #: A signed grant of the site for these channels (None: the server authorizes them).
    grant: Optional[str] = None


@dataclass(frozen=True)
class Unsubscribe:
    """A client stops listening to ``facility``'s channels of ``audiences``."""

    id: int
    facility: str
    audiences: Audiences


def _dumps(obj: dict[str, Any]) -> str:
    """Compact JSON, as the browser's JSON.parse reads it: no NaN or Infinity (ValueError)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def is_reserved(event: str) -> bool:
    """Whether ``event`` is one of the server's own event names (``ws4tx.*``)."""
    return event.startswith(RESERVED_PREFIX)


def check_event_name(event: Any) -> str:
    """``event`` if an application may emit it; ``ValueError`` for an empty name or one of
    the server's own ``ws4tx.*`` names."""
    if not isinstance(event, str) or not event:
        raise ValueError(f"an event name is a non-empty string, not {event!r}")
    if is_reserved(event):
        raise ValueError(f"event names starting with {RESERVED_PREFIX!r} are the server's: "
                         f"{event!r}")
    return event


def encode_event(event: str, data: Any = None, id: Optional[int] = None,
                 facility: Optional[str] = None) -> str:
    """The envelope of an event, as text; with ``facility``, for one of a connection's
    subscriptions (its ``facility`` field names it)."""
    obj: dict[str, Any] = {"ws4tx": EVENT, "event": event, "data": data}
    if id is not None:
        obj["id"] = id
    if facility is not None:
        obj["facility"] = facility
    return _dumps(obj)


def tag_event(payload: bytes, facility: str) -> Optional[bytes]:
    """An event envelope met on a channel of ``facility`` as a subscription of that
    facility gets it: with ``facility`` in its ``facility`` field; None for anything else
    (a raw payload is delivered as it is)."""
    if not payload.startswith(_EVENT_MARK):
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("ws4tx") != EVENT:
        return None
    obj["facility"] = facility
    return _dumps(obj).encode("utf-8")


def encode_ack(id: int, data: Any = None, error: Optional[str] = None) -> str:
    """The envelope of an acknowledgement, as text."""
    obj: dict[str, Any] = {"ws4tx": ACK, "id": id}
    if error is None:
        obj["data"] = data
    else:
        obj["error"] = error
    return _dumps(obj)


def encode_publication(channel: str, offset: int, epoch: str, payload: bytes) -> bytes:
    """The envelope in which an event client gets a message of a channel with history:
    the payload (as ``data``, text; as ``data64``, base64, for a binary one) with the
    channel's name and the message's position."""
    return _with_data({"ws4tx": PUBLICATION, "channel": channel, "offset": offset,
                       "epoch": epoch}, payload)


def encode_channel_message(channel: str, payload: bytes) -> bytes:
    """The envelope in which a subscription gets a raw message that has no position (live
    on a channel without history, or a channel's stored message): a publication envelope
    without ``offset`` and ``epoch``, so that the client knows whose it is."""
    return _with_data({"ws4tx": PUBLICATION, "channel": channel}, payload)


def _with_data(obj: dict[str, Any], payload: bytes) -> bytes:
    try:
        obj["data"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        obj["data64"] = base64.b64encode(payload).decode("ascii")
    return _dumps(obj).encode("utf-8")


def encode_subscribed(id: int, facility: str, channels: list[str]) -> str:
    """The answer to a subscribe that was allowed: the channels it added."""
    return _dumps({"ws4tx": SUBSCRIBED, "id": id, "facility": facility,
                   "channels": channels})


def encode_unsubscribed(id: int, facility: str, channels: list[str]) -> str:
    """The answer to an unsubscribe: the channels the connection left."""
    return _dumps({"ws4tx": UNSUBSCRIBED, "id": id, "facility": facility,
                   "channels": channels})


def encode_refused(id: int, reason: str) -> str:
    """The answer to a subscribe or unsubscribe that was refused (nothing changed)."""
    return _dumps({"ws4tx": REFUSED, "id": id, "reason": reason})


def is_envelope(text: Union[str, bytes]) -> bool:
    """Whether ``text`` is meant as an envelope (a cheap test on its first bytes), as
    ws4tx.js decides it: its first key is ``ws4tx``, after any white space."""
    if isinstance(text, bytes):
        start = text.lstrip(_ASCII_SPACES)
        if not start or start[0] < 0x80:
            return start.startswith(_MARK_BYTES)
        text = text.decode("utf-8", "replace")  # rare: non-ASCII (white space?) first
    return text.lstrip(_SPACES).startswith(_MARK)


def server_voice(payload: bytes) -> Optional[str]:
    """Why ``payload``, met on a channel, would speak with the server's voice to ws4tx.js
    clients (an acknowledgement, a ``ws4tx.*`` event, or an envelope ws4tx.js might read
    differently from this module), or None when it may be delivered. Only the server
    sends those, directly to one connection: one that arrives through the broker is
    forged."""
    if not is_envelope(payload):
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return "an envelope that is not valid JSON"
    if not isinstance(obj, dict):
        return None
    kind, name = obj.get("ws4tx"), obj.get("event")
    if kind == ACK:
        return "an acknowledgement"
    if kind == PUBLICATION:
        return "a publication envelope"
    if kind in _SERVER_KINDS:
        return f"a {kind} answer"
    if kind == EVENT and isinstance(name, str) and is_reserved(name):
        return f"the server event {name!r}"
    if kind == EVENT and "facility" in obj:
        return "an event naming its facility"
    return None


def decode(text: Union[str, bytes]) -> Union[Event, Ack, Subscribe, Unsubscribe, None]:
    """The envelope in ``text``; None when ``text`` is a raw payload.

    Raises :class:`InvalidEnvelope` for a frame that claims to be an envelope but is not
    a valid one.
    """
    if not is_envelope(text):
        return None
    huge: list[str] = []
    try:
        obj = json.loads(text, parse_constant=_no_constant,
                         parse_float=partial(_finite_float, huge),
                         parse_int=partial(_finite_int, huge))
        if _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode()):
            _dumps(obj).encode("utf-8")  # a lone surrogate cannot be encoded
    except UnicodeEncodeError:
        raise InvalidEnvelope("a string holds a lone surrogate (\\ud800-\\udfff)") from None
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
        raise InvalidEnvelope("id must be a non-negative integer",
                              kind=kind if isinstance(kind, str) else None)
    if huge:
        raise InvalidEnvelope(
            f"the number {huge[0][:20]} is out of range: JSON numbers must be finite "
            "(at most about 1.8e308)", msg_id, kind if isinstance(kind, str) else None)
    if kind == EVENT:
        name = obj.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEnvelope("an event needs a non-empty string 'event'")
        facility = obj.get("facility")
        if facility is not None and (not isinstance(facility, str) or not facility):
            raise InvalidEnvelope("an event's 'facility' must be a non-empty string",
                                  msg_id, kind)
        return Event(name, obj.get("data"), msg_id, facility)
    if kind == ACK:
        if msg_id is None:
            raise InvalidEnvelope("an ack needs an id")
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise InvalidEnvelope("an ack's error must be a string")
        return Ack(msg_id, obj.get("data"), error)
    if kind in (SUBSCRIBE, UNSUBSCRIBE):
        return _subscription(obj, kind, msg_id)
    raise InvalidEnvelope(f"unknown kind {kind!r}")


def _subscription(obj: dict[str, Any], kind: str,
                  msg_id: Optional[int]) -> Union[Subscribe, Unsubscribe]:
    """A subscribe or unsubscribe frame, checked: an id, a facility (a string), audiences
    (an object of known names), and for a subscribe optional recovery positions."""
    def invalid(message: str) -> InvalidEnvelope:
        return InvalidEnvelope(f"{kind}: {message}", msg_id, kind)

    if msg_id is None:
        raise invalid("needs an id (every one is answered)")
    facility = obj.get("facility")
    if not isinstance(facility, str) or not facility:
        raise invalid("'facility' must be a non-empty string")
    unknown = set(obj) - {"ws4tx", "id", "facility", "audiences", "recover", "grant"}
    only_subscribe = sorted({"recover", "grant"} & set(obj))
    if unknown or (kind == UNSUBSCRIBE and only_subscribe):
        raise invalid(f"unknown field {min(unknown or only_subscribe)!r}")
    audiences = obj.get("audiences")
    if not isinstance(audiences, dict) or not audiences:
        raise invalid("'audiences' must be a non-empty object, of "
                      + ", ".join(SUBSCRIBE_AUDIENCES))
    for name, value in audiences.items():
        if name not in SUBSCRIBE_AUDIENCES:
            raise invalid(f"unknown audience {name!r} (known: "
                          f"{', '.join(SUBSCRIBE_AUDIENCES)})")
        if name == "groups":
            if isinstance(value, list):
                if len(value) > MAX_SUBSCRIBE_GROUPS or not all(
                        isinstance(g, str) and g for g in value):
                    raise invalid("'groups' must be true or a list of at most "
                                  f"{MAX_SUBSCRIBE_GROUPS} group names")
            elif not isinstance(value, bool):
                raise invalid("'groups' must be true or a list of group names")
        elif not isinstance(value, bool):
            raise invalid(f"audience {name!r} must be true or false")
    groups = audiences.get("groups")
    chosen = Audiences(broadcast=audiences.get("broadcast", False),
                       user=audiences.get("user", False),
                       session=audiences.get("session", False),
                       groups=tuple(dict.fromkeys(groups)) if isinstance(groups, list)
                       else (groups or None))
    if not chosen.names():
        raise invalid("no audience chosen")
    if kind == UNSUBSCRIBE:
        return Unsubscribe(msg_id, facility, chosen)
    recover = obj.get("recover", {})
    if not isinstance(recover, dict) or not all(
            isinstance(v, str) for v in recover.values()):
        raise invalid("'recover' must be an object of channel: \"<epoch>:<offset>\"")
    grant = obj.get("grant")
    if grant is not None and (not isinstance(grant, str) or not grant
                              or len(grant) > MAX_GRANT_LENGTH):
        raise invalid(f"'grant' must be a string of at most {MAX_GRANT_LENGTH} characters")
    return Subscribe(msg_id, facility, chosen, tuple(recover.items()), grant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Digits of the largest whole number a double (a JavaScript number) holds without
#: becoming Infinity: 1.8e308 has 309.
_MAX_INT_DIGITS = 309


def _finite_float(huge: list[str], text: str) -> float:
    """A JSON number with a fraction or an exponent; one that overflows to infinity
    (``1e999``, ``-2e400``) is noted in ``huge`` (the envelope is then refused, with its
    id known) and read as 0."""
    value = float(text)
    if math.isinf(value):
        huge.append(text)
        return 0.0
    return value


def _finite_int(huge: list[str], text: str) -> int:
    """A JSON whole number; one a double cannot hold (it would be Infinity in a browser)
    is noted in ``huge`` and read as 0."""
    if len(text.lstrip("-")) >= _MAX_INT_DIGITS and math.isinf(float(text)):
        huge.append(text)
        return 0
    return int(text)
