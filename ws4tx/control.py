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

Whoever may PUBLISH on the control channel in Redis may close any connection: it is as
trusted as whoever may publish on a user's channels (give untrusted Redis users an ACL
without ``{prefix}:control``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ws4tx import closecodes
from ws4tx.naming import Identity

#: The version of the command format.
VERSION = 1

#: The one operation of this version.
DISCONNECT = "disconnect"

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
        if self.facility is not None and facility != self.facility:
            return False
        return bool((identity.user is not None and identity.user in self.users)
                    or (identity.session is not None and identity.session in self.sessions))


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


def _check(command: Disconnect) -> None:
    if not (command.users or command.sessions):
        raise InvalidCommand("disconnect whom? give users or sessions")
    if command.facility is not None and (not isinstance(command.facility, str)
                                         or not command.facility):
        raise InvalidCommand("facility must be a non-empty string or null")
    check_close(command.code, command.reason)


def encode(command: Disconnect) -> bytes:
    """The control message of ``command``."""
    return json.dumps({
        "v": VERSION, "op": DISCONNECT, "users": sorted(command.users),
        "sessions": sorted(command.sessions), "facility": command.facility,
        "code": command.code, "reason": command.reason,
    }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(payload: bytes) -> Disconnect:
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
    if data.get("op") != DISCONNECT:
        raise InvalidCommand(f"unknown operation {data.get('op')!r}")
    command = Disconnect(_names(data.get("users", []), "users"),
                         _names(data.get("sessions", []), "sessions"),
                         data.get("facility"), data.get("code", closecodes.CLOSED_BY_SITE),
                         data.get("reason", DEFAULT_REASON))
    _check(command)
    return command
