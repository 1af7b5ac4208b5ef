"""Presence (setting ``PRESENCE``): who is connected to a facility, kept in Redis by every
node. Pure: the entries, the scripts' arguments and replies, for both halves.

Each node writes its own clients (``ws4tx/lua/presence.lua``): a join or a leave at once
(batched per facility and per turn of at most :data:`BATCH_DELAY`), and every client again
every third of ``PRESENCE_TTL`` with a new expiry. A node that dies stops refreshing: its
clients expire within ``PRESENCE_TTL`` seconds and the next refresh of any node trims them
(and announces them as gone). Readers (``ws4tx/lua/presence_read.lua``) count only entries
whose expiry is ahead, in Redis's own time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping, Optional, Sequence

from ws4tx import naming
from ws4tx.history import script, script_sha
from ws4tx.naming import PresenceKeys

__all__ = ["BATCH_DELAY", "JOIN", "LEAVE", "MAX_INFO_BYTES", "MAX_INFO_DEPTH", "READ_SCRIPT",
           "UPDATE_SCRIPT", "Entry", "Stats", "audience_of", "check_info", "gone_ids",
           "has_presence", "parse_entries", "parse_stats", "read_args", "script",
           "script_sha", "update_args"]

UPDATE_SCRIPT = "presence.lua"
READ_SCRIPT = "presence_read.lua"

#: Seconds a node gathers joins and leaves of one facility before it writes them (one
#: script call) and announces them (one event).
BATCH_DELAY = 0.1

#: Longest site info of an entry, in bytes of its UTF-8 JSON (longer info is left out,
#: logged).
MAX_INFO_BYTES = 4096

#: Deepest nesting of a site info (the object itself is 1); deeper info is left out,
#: logged. Deep enough for any real record, shallow enough for every JSON parser.
MAX_INFO_DEPTH = 32

JOIN = "+"
LEAVE = "-"


@dataclass(frozen=True)
class Entry:
    """One connection in a facility's presence: its ``id`` (unique across nodes), its
    ``user`` (None when anonymous), when it connected (``since``, Unix seconds) and the
    site's ``info`` about it (a JSON object the facility's handler gave, or None)."""

    id: str
    user: Optional[str]
    since: float
    info: Optional[dict[str, Any]] = None

    def to_json(self) -> str:
        """The entry as it is stored and announced."""
        return _json(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The entry as ``ws4tx.api.presence`` and the events give it (``info`` only when
        the site gave some)."""
        data: dict[str, Any] = {"id": self.id, "user": self.user, "since": self.since}
        if self.info is not None:
            data["info"] = self.info
        return data


def check_info(info: Any) -> dict[str, Any]:
    """``info`` (a site's info about a connection) as a plain JSON object that every
    reader can take: a dict with string keys whose values are strings, finite numbers,
    booleans, None, lists and such objects, at most :data:`MAX_INFO_DEPTH` deep and
    :data:`MAX_INFO_BYTES` bytes of UTF-8 JSON; ``ValueError`` saying why not. Walked
    without recursion, so no nesting makes it raise anything else."""
    if not isinstance(info, dict):
        raise ValueError(f"it is a {type(info).__name__}, not a dict (a JSON object)")
    stack: list[tuple[Any, int]] = [(info, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
            if not all(isinstance(key, str) for key in value):
                raise ValueError("an object has a key that is not a string")
        elif isinstance(value, list):
            children = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"it holds {value!r}, which JSON cannot carry")
            continue
        elif value is None or isinstance(value, (str, int)):
            continue
        else:
            raise ValueError(f"it holds a {type(value).__name__}, which is not JSON")
        if depth >= MAX_INFO_DEPTH and value:
            raise ValueError(f"it is nested more than {MAX_INFO_DEPTH} deep")
        stack.extend((child, depth + 1) for child in children)
    size = len(_json(info).encode("utf-8"))
    if size > MAX_INFO_BYTES:
        raise ValueError(f"it is {size} bytes of JSON, over {MAX_INFO_BYTES}")
    return dict(info)


def _json(value: Any) -> str:
    """Compact JSON as stored and announced (UTF-8, never NaN or Infinity)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Stats:
    """How many connections a facility's presence has, and how many distinct users."""

    clients: int
    users: int


def audience_of(broadcast: bool = False, users: Iterable[str] = (),
                groups: Iterable[str] = (), sessions: Iterable[str] = ()) -> Optional[str]:
    """The presence audience (:func:`ws4tx.naming.presence_audience`) that ONE of
    ``broadcast``, a user, a group or a session names, or None when none is named (the
    whole facility); ValueError for several."""
    named = ([naming.presence_audience(naming.BROADCAST)] if broadcast else [])
    for audience, names in ((naming.USER, users), (naming.GROUP, groups),
                            (naming.SESSION, sessions)):
        named += [naming.presence_audience(audience, name) for name in names]
    if len(named) > 1:
        raise ValueError("presence is read for the whole facility or for ONE audience "
                         f"(broadcast, a user, a group or a session), not {len(named)}")
    return named[0] if named else None


def has_presence(globs: Iterable[str], facility: str) -> bool:
    """Whether ``facility`` matches one of the ``PRESENCE`` globs."""
    return any(fnmatchcase(facility, glob) for glob in globs)


Change = tuple[str, str, Optional[str], str]


def update_args(keys: PresenceKeys, ttl: float, changes: Iterable[Change],
                audiences: Optional[Mapping[str, Sequence[str]]] = None,
                ) -> tuple[list[str], list[Any]]:
    """The keys and arguments of :data:`UPDATE_SCRIPT` for ``changes``: (op, connection
    id, user, entry JSON or "") with op :data:`JOIN` (or refresh) or :data:`LEAVE`; a
    joining connection is also in the presence of its ``audiences`` (connection id ->
    :func:`ws4tx.naming.presence_audience` names), a leaving one leaves all of its."""
    args: list[Any] = [int(ttl * 1000), keys.user_prefix, keys.audience_prefix]
    mine = audiences or {}
    for op, conn, user, info in changes:
        args += [op, conn, user or "", info, " ".join(mine.get(conn, ())) if op == JOIN else ""]
    return [keys.connections, keys.info, keys.users, keys.audiences], args


def read_args(keys: PresenceKeys, what: str,
              audience: Optional[str] = None) -> tuple[list[str], list[str]]:
    """The keys and arguments of :data:`READ_SCRIPT` (``what``: "list" or "stats"), of the
    facility's whole presence or of one ``audience`` of it
    (:func:`ws4tx.naming.presence_audience`)."""
    args = [what] if audience is None else [what, keys.audience(audience)]
    return [keys.connections, keys.info, keys.users], args


def parse_entries(reply: Sequence[Any]) -> list[Entry]:
    """:data:`READ_SCRIPT`'s "list" reply, oldest connection first."""
    entries = []
    for raw in reply:
        data = json.loads(raw)
        info = data.get("info")
        entries.append(Entry(str(data["id"]), data.get("user"), float(data["since"]),
                             info if isinstance(info, dict) else None))
    return sorted(entries, key=lambda e: (e.since, e.id))


def parse_stats(reply: Sequence[Any]) -> Stats:
    """:data:`READ_SCRIPT`'s "stats" reply."""
    return Stats(int(reply[0]), int(reply[1]))


def gone_ids(reply: Sequence[Any]) -> list[str]:
    """:data:`UPDATE_SCRIPT`'s reply: the ids of the connections trimmed as expired."""
    return [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
