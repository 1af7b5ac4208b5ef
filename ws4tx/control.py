"""Commands from the site to every ws4tx node, on the control channel. Pure: no I/O, no
Django, no Twisted; both halves import it.

The Django side (:func:`ws4tx.api.disconnect`) and event handlers
(:meth:`ws4tx.server.handlers.ServerAPI.disconnect`) publish a command on
:func:`ws4tx.naming.control_channel`; every node subscribes to that channel and executes
the command against its own connections. A command is a small JSON object::

    {"v": 1, "op": "disconnect", "users": ["john"], "sessions": ["<session id>"],
     "facility": null, "code": 4001, "reason": "logged out"}

``sessions`` holds session channel ids (:func:`ws4tx.naming.session_channel_id`), never
session keys. A connection matches when its user is among ``users`` or its session among
``sessions``, and (when ``facility`` is not null) it is connected to ``facility``.

``unsubscribe`` (:func:`ws4tx.api.unsubscribe`) makes the matching connections leave some
of their channels without closing: those of ``audiences`` (``broadcast``, ``user``,
``group``, ``session``), the group channels only of ``groups`` when that is not null::

    {"v": 1, "op": "unsubscribe", "users": ["john"], "sessions": [], "facility": "chat",
     "audiences": ["group"], "groups": ["staff"], "reason": "left the group"}

``subscribe`` (:func:`ws4tx.api.subscribe`) makes the matching event connections (a user
among ``users``, a session among ``sessions``, or one of the identity's groups among
``groups``) subscribe ``facility``'s channels of ``audiences``: their own names, the group
channels only of ``groups`` when it names some::

    {"v": 1, "op": "subscribe", "users": ["john"], "sessions": [], "groups": [],
     "facility": "notes", "audiences": ["user"], "reason": "you follow this"}

``channels`` and ``info`` are queries: every node answers on the ``reply`` channel the
asker listens to (:func:`ws4tx.naming.reply_channel`; a node answers on no other)::

    {"v": 1, "op": "channels", "reply": "ws4tx:reply:<token>", "pattern": "*"}
    {"v": 1, "op": "info", "reply": "ws4tx:reply:<token>"}

with ``{"node": <node id>, "data": ...}``: for ``channels`` an object from each of its
channels whose name matches ``pattern`` (``fnmatch``) to its local clients, for ``info``
the node's :meth:`~ws4tx.server.node.Node.info`. The asker knows which nodes should answer
from the node registry (:func:`ws4tx.naming.nodes_keys`: every node keeps itself there,
expiring :data:`NODE_TTL` seconds after its last refresh), and from how many nodes got the
query (PUBLISH's answer): it stops waiting once they all answered, or after its timeout,
and reports the registered nodes that did not answer as missing (:func:`gathered`).

Whoever may PUBLISH on the control channel in Redis may close any connection: it is as
trusted as whoever may publish on a user's channels (give untrusted Redis users an ACL
without ``{prefix}:control``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from ws4tx import closecodes, naming
from ws4tx.naming import AUDIENCES, Identity

#: The version of the command format.
VERSION = 1

#: The operations of this version.
DISCONNECT = "disconnect"
UNSUBSCRIBE = "unsubscribe"
SUBSCRIBE = "subscribe"
CHANNELS = "channels"
INFO = "info"
#: The operations that are queries (answered on a reply channel).
QUERIES = (CHANNELS, INFO)

#: Seconds an asker waits for the nodes' answers by default.
DEFAULT_TIMEOUT = 1.0

#: Seconds a node stays in the registry after its last refresh (it refreshes every third
#: of it): a node killed that long ago is no longer expected to answer.
NODE_TTL = 15.0

#: Longest ``pattern`` or ``reply`` of a query.
MAX_QUERY_FIELD = 256

#: The close reason when the site gives none.
DEFAULT_REASON = "closed by the site"

#: Longest close reason, in UTF-8 bytes (a close frame's payload is at most 125 bytes, two
#: of which are the code; the server cuts reasons at 120).
MAX_REASON_BYTES = 120

#: Longest command a node accepts (a command naming thousands of users is still far below).
MAX_COMMAND_BYTES = 1024 * 1024


class InvalidCommand(ValueError):
    """A control message a node cannot execute (malformed, unknown operation, bad code)."""


@dataclass(frozen=True)
class Disconnect:
    """Close every matching connection with ``code`` and ``reason``."""

    users: frozenset[str] = frozenset()
    sessions: frozenset[str] = frozenset()
    facility: Optional[str] = None
    code: int = closecodes.CLOSED_BY_SITE
    reason: str = DEFAULT_REASON

    def matches(self, identity: Identity, facility: str) -> bool:
        """Whether a connection of ``identity`` to ``facility`` is to be closed."""
        return _matches(self.users, self.sessions, self.facility, identity, facility)


@dataclass(frozen=True)
class Unsubscribe:
    """Make every matching connection leave its channels of ``audiences`` (of ``groups``
    only, for the group audience, when not None), without closing it."""

    users: frozenset[str] = frozenset()
    sessions: frozenset[str] = frozenset()
    facility: Optional[str] = None
    audiences: frozenset[str] = frozenset(AUDIENCES)
    groups: Optional[frozenset[str]] = None
    reason: str = ""

    def matches(self, identity: Identity, facility: str) -> bool:
        """Whether a connection of ``identity`` to ``facility`` is to leave channels."""
        return _matches(self.users, self.sessions, self.facility, identity, facility)

    def channels(self, prefix: Optional[str], identity: Identity,
                 facility: str) -> list[str]:
        """The channels a connection of ``identity`` to ``facility`` is to leave (those
        it has among them: its own names only)."""
        if self.groups is not None:
            identity = Identity(identity.user, identity.groups & self.groups,
                                identity.session)
        return naming.audience_channels(prefix, facility, self.audiences, identity)

    def event(self) -> dict[str, Any]:
        """The data of the ``ws4tx.unsubscribed`` event the connections' event clients
        get."""
        data: dict[str, Any] = {"audiences": sorted(self.audiences), "reason": self.reason}
        if self.groups is not None:
            data["groups"] = sorted(self.groups)
        return data


@dataclass(frozen=True)
class Subscribe:
    """Make every matching event connection subscribe ``facility``'s channels of
    ``audiences`` (its own names; of the group audience only those of ``groups`` when it
    names some), without closing it."""

    facility: str
    users: frozenset[str] = frozenset()
    sessions: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    audiences: frozenset[str] = frozenset(AUDIENCES)
    reason: str = ""

    def matches(self, identity: Identity) -> bool:
        """Whether a connection of ``identity`` is to subscribe."""
        return _matches(self.users, self.sessions, None, identity, "") or bool(
            identity.user is not None and identity.groups & self.groups)

    def channels(self, prefix: Optional[str], identity: Identity) -> list[str]:
        """The channels a connection of ``identity`` is to subscribe (its own names
        only)."""
        if self.groups:
            identity = Identity(identity.user, identity.groups & self.groups,
                                identity.session)
        return naming.audience_channels(prefix, self.facility, self.audiences, identity)

    def event(self, channels: Iterable[str]) -> dict[str, Any]:
        """The data of the ``ws4tx.subscribed`` event a connection that subscribed
        ``channels`` gets."""
        return {"facility": self.facility, "audiences": sorted(self.audiences),
                "channels": list(channels), "reason": self.reason}


@dataclass(frozen=True)
class Query:
    """Ask every node (``op``: :data:`CHANNELS` or :data:`INFO`) to answer on ``reply``."""

    op: str
    reply: str
    pattern: str = "*"


#: What a node executes.
Command = Union[Disconnect, Unsubscribe, Subscribe, Query]


def _matches(users: frozenset[str], sessions: frozenset[str], only: Optional[str],
             identity: Identity, facility: str) -> bool:
    if only is not None and facility != only:
        return False
    return bool((identity.user is not None and identity.user in users)
                or (identity.session is not None and identity.session in sessions))


def check_close(code: Any, reason: Any) -> None:
    """Raise :class:`InvalidCommand` (a ValueError) unless ``code`` and ``reason`` may close
    a connection: see :func:`ws4tx.closecodes.may_send`, and a reason of at most
    :data:`MAX_REASON_BYTES` UTF-8 bytes."""
    if not closecodes.may_send(code):
        raise InvalidCommand(
            f"close code {code!r} may not be sent: use 1000, 1001, 1008, 1011 or 3000-4999 "
            f"(ws4tx's own for this: {closecodes.CLOSED_BY_SITE})")
    if not isinstance(reason, str):
        raise InvalidCommand(f"the close reason must be a string, not {reason!r}")
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise InvalidCommand(f"the close reason is longer than {MAX_REASON_BYTES} UTF-8 bytes")


def _names(value: Any, what: str) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, frozenset, set)):
        raise InvalidCommand(f"{what} must be a list of names")
    if not all(isinstance(name, str) and name for name in value):
        raise InvalidCommand(f"{what} must be non-empty strings")
    return frozenset(value)


def disconnect(
    *,
    users: Iterable[str] = (),
    sessions: Iterable[str] = (),
    facility: Optional[str] = None,
    code: int = closecodes.CLOSED_BY_SITE,
    reason: str = DEFAULT_REASON,
) -> Disconnect:
    """A checked :class:`Disconnect` (``InvalidCommand``, a ValueError, for bad arguments,
    or when neither ``users`` nor ``sessions`` names anybody)."""
    command = Disconnect(_names(list(users), "users"), _names(list(sessions), "sessions"),
                         facility, code, reason)
    _check(command)
    return command


def unsubscribe(
    *,
    users: Iterable[str] = (),
    sessions: Iterable[str] = (),
    facility: Optional[str] = None,
    audiences: Iterable[str] = AUDIENCES,
    groups: Optional[Iterable[str]] = None,
    reason: str = "",
) -> Unsubscribe:
    """A checked :class:`Unsubscribe` (``InvalidCommand``, a ValueError, for bad
    arguments, an unknown audience, or when neither ``users`` nor ``sessions`` names
    anybody)."""
    command = Unsubscribe(
        _names(list(users), "users"), _names(list(sessions), "sessions"), facility,
        _audiences([audiences] if isinstance(audiences, str) else list(audiences)),
        None if groups is None else _names(list(groups), "groups"),
        reason)
    _check(command)
    return command


def subscribe(
    facility: str,
    *,
    users: Iterable[str] = (),
    sessions: Iterable[str] = (),
    groups: Iterable[str] = (),
    audiences: Iterable[str] = AUDIENCES,
    reason: str = "",
) -> Subscribe:
    """A checked :class:`Subscribe` (``InvalidCommand``, a ValueError, for a bad facility
    or arguments, an unknown audience, or when none of ``users``, ``sessions`` and
    ``groups`` names anybody)."""
    command = Subscribe(
        facility, _names(list(users), "users"), _names(list(sessions), "sessions"),
        _names([groups] if isinstance(groups, str) else list(groups), "groups"),
        _audiences([audiences] if isinstance(audiences, str) else list(audiences)),
        reason)
    _check(command)
    return command


def _audiences(value: Any) -> frozenset[str]:
    found = _names(value, "audiences")
    unknown = found - frozenset(AUDIENCES)
    if unknown or not found:
        raise InvalidCommand(f"audiences must be some of {', '.join(AUDIENCES)}, not "
                             f"{sorted(unknown) or 'none'}")
    return found


def query(op: str, reply: str, pattern: str = "*") -> Query:
    """A checked :class:`Query` (``InvalidCommand``, a ValueError, for bad arguments)."""
    command = Query(op, reply, pattern)
    _check_query(command)
    return command


def _check_query(command: Query) -> None:
    if command.op not in QUERIES:
        raise InvalidCommand(f"unknown query {command.op!r}")
    for name, value in (("reply", command.reply), ("pattern", command.pattern)):
        if not isinstance(value, str) or not value or len(value) > MAX_QUERY_FIELD:
            raise InvalidCommand(f"{name} must be a string of 1 to {MAX_QUERY_FIELD} "
                                 "characters")


def encode_answer(node: str, data: Any) -> bytes:
    """A node's answer to a query."""
    return json.dumps({"node": node, "data": data}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def decode_answer(payload: bytes) -> tuple[str, Any]:
    """The node id and the data of an answer; :class:`InvalidCommand` for anything else."""
    try:
        answer = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise InvalidCommand(f"not JSON: {e}") from None
    if not (isinstance(answer, dict) and isinstance(answer.get("node"), str)
            and "data" in answer):
        raise InvalidCommand("not an answer")
    return answer["node"], answer["data"]


def gathered(op: str, answers: dict[str, Any], expected: Iterable[str]) -> dict[str, Any]:
    """What an asker returns from the ``answers`` it got (node id -> data) when the nodes
    of ``expected`` (the registry) should have answered:

    - :data:`CHANNELS`: ``{"channels": {channel: clients on all the nodes that answered},
      "nodes": [ids that answered], "missing": [ids that did not]}``;
    - :data:`INFO`: ``{"nodes": [each answer, with its "id"], "missing": [ids]}``.
    """
    missing = sorted(set(expected) - set(answers))
    if op == CHANNELS:
        merged: dict[str, int] = {}
        for data in answers.values():
            for channel, clients in (data if isinstance(data, dict) else {}).items():
                merged[channel] = merged.get(channel, 0) + int(clients)
        return {"channels": dict(sorted(merged.items())), "nodes": sorted(answers),
                "missing": missing}
    nodes = [{**(data if isinstance(data, dict) else {}), "id": node}
             for node, data in sorted(answers.items())]
    return {"nodes": nodes, "missing": missing}


def _check(command: Command) -> None:
    if isinstance(command, Query):
        _check_query(command)
        return
    if isinstance(command, Subscribe):
        if not (command.users or command.sessions or command.groups):
            raise InvalidCommand("subscribe whom? give users, sessions or groups")
        try:
            naming.check_facility(command.facility)
        except (naming.InvalidFacility, TypeError) as e:
            raise InvalidCommand(f"subscribe: {e}") from None
    elif not (command.users or command.sessions):
        raise InvalidCommand(f"{_op(command)} whom? give users or sessions")
    elif command.facility is not None and (not isinstance(command.facility, str)
                                         or not command.facility):
        raise InvalidCommand("facility must be a non-empty string or null")
    if isinstance(command, Disconnect):
        check_close(command.code, command.reason)
    elif not isinstance(command.reason, str) or \
            len(command.reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise InvalidCommand(f"the reason must be a string of at most {MAX_REASON_BYTES} "
                             "UTF-8 bytes")


def _op(command: Command) -> str:
    if isinstance(command, Query):
        return command.op
    if isinstance(command, Subscribe):
        return SUBSCRIBE
    return DISCONNECT if isinstance(command, Disconnect) else UNSUBSCRIBE


def encode(command: Command) -> bytes:
    """The control message of ``command``."""
    if isinstance(command, Query):
        return json.dumps({"v": VERSION, "op": command.op, "reply": command.reply,
                           "pattern": command.pattern}, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
    if isinstance(command, Subscribe):
        return json.dumps({
            "v": VERSION, "op": SUBSCRIBE, "users": sorted(command.users),
            "sessions": sorted(command.sessions), "groups": sorted(command.groups),
            "facility": command.facility, "audiences": sorted(command.audiences),
            "reason": command.reason}, separators=(",", ":"),
            ensure_ascii=False).encode("utf-8")
    data: dict[str, Any] = {
        "v": VERSION, "op": _op(command), "users": sorted(command.users),
        "sessions": sorted(command.sessions), "facility": command.facility}
    if isinstance(command, Disconnect):
        data.update(code=command.code, reason=command.reason)
    else:
        data.update(audiences=sorted(command.audiences),
                    groups=None if command.groups is None else sorted(command.groups),
                    reason=command.reason)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(payload: bytes) -> Command:
    """The command in a control message; :class:`InvalidCommand` for anything else."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise InvalidCommand(f"longer than {MAX_COMMAND_BYTES} bytes")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise InvalidCommand(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidCommand("not a JSON object")
    if data.get("v") != VERSION:
        raise InvalidCommand(f"unknown version {data.get('v')!r} (this node speaks {VERSION})")
    op = data.get("op")
    if op in QUERIES:
        return query(op, data.get("reply", ""), data.get("pattern", "*"))
    if op == UNSUBSCRIBE:
        groups = data.get("groups")
        unsubscribe = Unsubscribe(
            _names(data.get("users", []), "users"), _names(data.get("sessions", []), "sessions"),
            data.get("facility"), _audiences(data.get("audiences", list(AUDIENCES))),
            None if groups is None else _names(groups, "groups"), data.get("reason", ""))
        _check(unsubscribe)
        return unsubscribe
    if op == SUBSCRIBE:
        subscribe = Subscribe(
            data.get("facility", ""), _names(data.get("users", []), "users"),
            _names(data.get("sessions", []), "sessions"),
            _names(data.get("groups", []), "groups"),
            _audiences(data.get("audiences", list(AUDIENCES))), data.get("reason", ""))
        _check(subscribe)
        return subscribe
    if op != DISCONNECT:
        raise InvalidCommand(f"unknown operation {op!r}")
    command = Disconnect(_names(data.get("users", []), "users"),
                         _names(data.get("sessions", []), "sessions"),
                         data.get("facility"), data.get("code", closecodes.CLOSED_BY_SITE),
                         data.get("reason", DEFAULT_REASON))
    _check(command)
    return command
