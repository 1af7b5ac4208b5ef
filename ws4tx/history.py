"""Channel history: which facilities keep one, how a published message carries its
position, and what a history read returns. Pure (no Django, no Twisted); both halves use it.

A facility with history (setting ``HISTORY``) keeps, per channel, a Redis stream of its last
``size`` messages for ``ttl`` seconds, each at an *offset* (1, 2, 3, ... per channel) within
an *epoch* (a random name that changes whenever Redis lost the channel's history: a restart
without persistence, the keys expired or evicted, FLUSHDB). ``(offset, epoch)`` is a message's
:class:`Position`: a client that knows the position of the last message it got can tell
whether it missed some.

Every publish to such a channel runs one Lua script, ``ws4tx/lua/publish.lua``, the same file
for both halves (:func:`script`): next offset, epoch, XADD, EXPIRE, the replay SET, PUBLISH.
It publishes the payload behind a position prefix (:func:`with_position`), which the server
strips (:func:`strip_position`) before it writes the payload to any client: raw clients get
exactly what was published.

A message that was delivered but could not be stored raises :class:`NotStored` on both
halves.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, NamedTuple, Optional, Sequence

#: The scripts, in ``ws4tx/lua/``.
PUBLISH_SCRIPT = "publish.lua"
HISTORY_SCRIPT = "history.lua"
#: The server's: the histories of several channels in one call (``history.lua`` for each).
HISTORIES_SCRIPT = "histories.lua"
#: The Django side's: a keyed publish on a facility without history, and a channel's
#: position without its messages.
PUBLISH_ONCE_SCRIPT = "publish_once.lua"
POSITION_SCRIPT = "position.lua"

#: Seconds an idempotency key is remembered on a facility without history (on one with
#: history: its ``ttl``).
KEY_TTL = 86400


class NotStored(Exception):
    """A message was delivered to ``receivers`` subscribers but was not stored for replay,
    because ``reason``: Redis refused the write (out of memory under ``maxmemory`` with
    ``noeviction``, say) or a storage budget was exhausted. Not a failure to publish (not
    a ``PublishError`` nor a ``BrokerUnavailable``): retrying would deliver it twice.

    The one class of both halves: :class:`ws4tx.api.NotStored`,
    ``ws4tx.redis_store.NotStored``, :class:`ws4tx.server.NotStored` and
    ``ws4tx.server.broker.NotStored`` are this object."""

    def __init__(self, receivers: int, reason: str) -> None:
        super().__init__(f"delivered to {receivers} subscribers but not stored: {reason}")
        self.receivers = receivers
        self.reason = reason


class Retention(NamedTuple):
    """How much history a facility keeps: the last ``size`` messages of each channel,
    for ``ttl`` seconds after the last publish."""

    size: int
    ttl: int


class Rule(NamedTuple):
    """One entry of the ``HISTORY`` setting: facilities matching ``pattern`` (a glob,
    ``chat*``) keep ``retention``."""

    pattern: str
    retention: Retention


def history_for(rules: Sequence[Rule], facility: str) -> Optional[Retention]:
    """The history ``facility`` keeps under ``rules`` (the ``HISTORY`` setting, in its
    order: the first pattern that matches wins), or None when it keeps none."""
    for pattern, retention in rules:
        if fnmatch.fnmatchcase(facility, pattern):
            return retention
    return None


@dataclass(frozen=True)
class Position:
    """Where a message is in its channel's history: its offset within an epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class Published:
    """What publishing to a channel with history did: the message's position, and how many
    Redis subscribers got it."""

    receivers: int
    position: Position
    #: Whether the publish was a repeat of an idempotency key (nothing stored nor
    #: delivered; ``position`` is the first publish's).
    repeated: bool = False


@dataclass(frozen=True)
class Publication:
    """One message of a channel's history."""

    offset: int
    payload: bytes


@dataclass(frozen=True)
class History:
    """A read of one channel's history: its current ``epoch``, the ``offset`` of its last
    message (0 when none was published in this epoch), and the messages read, oldest
    first."""

    epoch: str
    offset: int
    publications: list[Publication] = field(default_factory=list)


class HistoryRead(NamedTuple):
    """One channel's part of a batched history read (see :func:`history_args` for
    ``since`` and ``limit``)."""

    channel: str
    retention: Retention
    since: Optional[int] = None
    limit: Optional[int] = None


# The published form: "__ws4tx_p1:<offset>:<epoch>__<payload>" (see docs/protocol.md).

_OPENING = b"__ws4tx_p1:"
_POSITION = re.compile(rb"__ws4tx_p1:([0-9]{1,19}):([0-9A-Za-z]{1,64})__")


def with_position(payload: bytes, position: Position) -> bytes:
    """``payload`` in the form publish.lua publishes it: behind its position."""
    return b"%s%d:%s__%s" % (_OPENING, position.offset, position.epoch.encode("ascii"),
                             payload)


def strip_position(message: bytes) -> tuple[Optional[Position], bytes]:
    """The position and the payload of a message published with :func:`with_position`
    (``publish.lua``); ``(None, message)`` for one without."""
    if not message.startswith(_OPENING):
        return None, message
    found = _POSITION.match(message)
    if found is None:
        return None, message
    position = Position(int(found.group(1)), found.group(2).decode("ascii"))
    return position, message[found.end():]


def new_epoch() -> str:
    """A fresh random epoch (16 hex digits), offered to a script for a channel that has
    none."""
    return secrets.token_hex(8)


# The scripts


@cache
def script(name: str) -> bytes:
    """The text of the Lua script ``name`` (:data:`PUBLISH_SCRIPT`,
    :data:`HISTORY_SCRIPT`), from the package's ``lua`` directory."""
    return resources.files("ws4tx").joinpath("lua").joinpath(name).read_bytes()


@cache
def script_sha(name: str) -> str:
    """The SHA1 Redis knows the script ``name`` by (EVALSHA)."""
    return hashlib.sha1(script(name)).hexdigest()


def publish_args(channel: str, last_message_key: str, stream: str, meta: str,
                 payload: bytes, retention: Retention, expire: int,
                 epoch: Optional[str] = None,
                 sharded: bool = False,
                 once: Optional[str] = None) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of :data:`PUBLISH_SCRIPT` (``sharded``: it publishes with
    SPUBLISH, on a Redis Cluster; ``once``: the record of an idempotency key,
    :func:`ws4tx.naming.once_key`)."""
    args = [channel, payload, retention.size, retention.ttl, epoch or new_epoch(), expire]
    if sharded:
        args.append("SPUBLISH")
    keys = [stream, meta, last_message_key]
    if once is not None:
        keys.append(once)
    return keys, args


def parse_published(reply: Sequence[Any]) -> Published:
    """:data:`PUBLISH_SCRIPT`'s reply as a :class:`Published`."""
    offset, epoch, receivers = reply[:3]
    repeated = len(reply) > 3 and int(reply[3]) == 1
    return Published(int(receivers), Position(int(offset), _text(epoch)), repeated)


def publish_once_args(channel: str, last_message_key: str, once: str, payload: bytes,
                      expire: int, ttl: int = KEY_TTL,
                      sharded: bool = False) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of :data:`PUBLISH_ONCE_SCRIPT`."""
    return ([once, last_message_key],
            [channel, payload, expire, ttl, "SPUBLISH" if sharded else ""])


def parse_published_once(reply: Sequence[Any]) -> tuple[int, bool]:
    """:data:`PUBLISH_ONCE_SCRIPT`'s reply: (receivers, repeated)."""
    receivers, repeated = reply
    return int(receivers), int(repeated) == 1


def position_args(stream: str, meta: str, retention: Retention,
                  epoch: Optional[str] = None) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of :data:`POSITION_SCRIPT`."""
    return [stream, meta], [retention.ttl, epoch or new_epoch()]


def parse_position(reply: Sequence[Any]) -> Position:
    """:data:`POSITION_SCRIPT`'s reply as a :class:`Position`."""
    epoch, offset = reply
    return Position(int(offset), _text(epoch))


def check_range(since: Optional[int], limit: Optional[int]) -> None:
    """``ValueError`` unless ``since`` is None or an offset (a whole number >= 0) and
    ``limit`` None or a whole number >= 1."""
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or since < 0):
        raise ValueError(f"since must be an offset (a whole number >= 0), not {since!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1, not {limit!r}")


def history_args(stream: str, meta: str, retention: Retention, since: Optional[int],
                 limit: Optional[int], epoch: Optional[str] = None
                 ) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of :data:`HISTORY_SCRIPT` (``ValueError`` for a negative
    ``since`` or a ``limit`` below 1)."""
    check_range(since, limit)
    return ([stream, meta],
            ["" if since is None else since, limit or 0, retention.ttl, epoch or new_epoch()])


def parse_history(reply: Sequence[Any]) -> History:
    """:data:`HISTORY_SCRIPT`'s reply as a :class:`History`."""
    epoch, top, entries = reply
    publications = []
    for entry_id, fields in entries or ():
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        payload = values.get(b"d", values.get("d", b""))
        offset = int(_text(entry_id).split("-", 1)[0])
        publications.append(Publication(offset, payload if isinstance(payload, bytes)
                                        else str(payload).encode("utf-8")))
    return History(_text(epoch), int(top), publications)


def histories_args(reads: Sequence[tuple[list[Any], list[Any]]]
                   ) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of :data:`HISTORIES_SCRIPT`: those of :func:`history_args`
    of each channel, in turn."""
    keys: list[Any] = []
    args: list[Any] = []
    for read_keys, read_args in reads:
        keys.extend(read_keys)
        args.extend(read_args)
    return keys, args


def parse_histories(reply: Sequence[Any]) -> list[History]:
    """:data:`HISTORIES_SCRIPT`'s reply: a :class:`History` per channel, in turn."""
    return [parse_history(one) for one in reply]


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


# Recovery: what a reconnecting client missed

#: Why a recovery failed (``ws4tx.recovered``'s ``reason``; docs/protocol.md).
EPOCH_CHANGED = "epoch"
TRIMMED = "trimmed"
UNKNOWN_POSITION = "position"
GAP = "gap"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Merge:
    """What to send a client that asked to recover a channel from a position.

    ``recovered``: whether ``publications`` (from the history) followed by the live
    messages that ``live`` keeps (True at their index) are exactly every message after the
    client's position, once each, in order; else ``reason`` says why not, nothing of the
    history is to be sent and every live message is kept (the client resynchronises).
    """

    recovered: bool
    reason: Optional[str]
    publications: tuple[Publication, ...]
    live: tuple[bool, ...]


def merge(position: Position, history: History,
          live: Sequence[Optional[Position]]) -> Merge:
    """Merge a history read since ``position`` (taken after the live subscription was in
    place) with the positions of the live messages held meanwhile (None: a message without
    a position, sent as it came): drop what the client already has or what came both ways
    (by offset), and fail, rather than send part of what was missed, on a changed epoch,
    a trimmed history, a position the stream never reached, or a hole."""
    def failed(reason: str) -> Merge:
        return Merge(False, reason, (), (True,) * len(live))

    # The whole read is a paged recovery's first page, and its last.
    read = step(position.epoch, position.offset + 1, history,
                len(history.publications) + 1, first=True)
    if read.reason is not None:
        return failed(read.reason)
    following = read.following
    keep = []
    for seen in live:
        if seen is None:
            keep.append(True)
            continue
        if seen.epoch != history.epoch:
            return failed(EPOCH_CHANGED)
        if seen.offset > following:
            return failed(GAP)
        keep.append(seen.offset == following)
        if seen.offset == following:
            following += 1
    return Merge(True, None, read.publications, tuple(keep))


@dataclass(frozen=True)
class Page:
    """What one page of a paged recovery gives: the ``publications`` to send (in order),
    the offset that must come next (``following``), whether the recovery is ``done``,
    and, when it failed, why (``reason``; nothing more is to be sent then)."""

    publications: tuple[Publication, ...]
    following: int
    done: bool
    reason: Optional[str] = None


def step(epoch: str, following: int, page: History, limit: int, first: bool) -> Page:
    """The next step of a recovery in ``epoch`` that needs ``following`` next, given a page
    of the history read after ``following - 1`` with ``COUNT limit`` (``first``: the
    first page, read after the client's own position). As :func:`merge` for a whole read:
    a changed epoch, a position the stream never reached, a trimmed stream or a hole
    fail; the page is the last one when it is short or reaches the stream's last
    offset. Entries below ``following`` (a page shared with clients further behind) are
    skipped."""
    def failed(reason: str) -> Page:
        return Page((), following, True, reason)

    if page.epoch != epoch:
        return failed(EPOCH_CHANGED)
    if first and following - 1 > page.offset:
        return failed(UNKNOWN_POSITION)
    publications: list[Publication] = []
    for publication in page.publications:
        if publication.offset < following:
            continue
        if publication.offset > following:
            return failed(TRIMMED if not publications else GAP)
        publications.append(publication)
        following += 1
    done = len(page.publications) < limit or following > page.offset
    if done and following <= page.offset:
        # The stream ends (or is empty) before its last offset: entries were trimmed.
        return failed(TRIMMED)
    return Page(tuple(publications), following, done)


# Positioning: whether a live message follows the last one delivered

#: What :func:`follow` says of a live message.
IN_SEQUENCE = "next"
DUPLICATE = "duplicate"
SKIPPED = "skipped"
NEW_EPOCH = "epoch"


def follow(last: Optional[Position], got: Position) -> str:
    """Whether a live message at ``got`` comes right after ``last`` (the position of the
    last message of its channel handed on; None when none was):
    :data:`IN_SEQUENCE` (hand it on), :data:`DUPLICATE` (its offset was handed on
    already: drop it), :data:`SKIPPED` (messages between were lost: recover them from the
    history first) or :data:`NEW_EPOCH` (the channel's history was lost)."""
    if last is None:
        return IN_SEQUENCE
    if got.epoch != last.epoch:
        return NEW_EPOCH
    if got.offset <= last.offset:
        return DUPLICATE
    if got.offset == last.offset + 1:
        return IN_SEQUENCE
    return SKIPPED


def start_of(history: History, live: Sequence[Optional[Position]]) -> Position:
    """The position to go on from after ``history`` was read (its last offset in its
    epoch), lowered to just before the first of the ``live`` messages held meanwhile that
    belongs to that epoch: every message after it is then among those held or to come."""
    offset = history.offset
    for seen in live:
        if seen is not None and seen.epoch == history.epoch:
            offset = min(offset, seen.offset - 1)
            break
    return Position(max(offset, 0), history.epoch)


def parse_recover(values: Sequence[str]) -> dict[str, Position]:
    """The positions a client asks to recover from (query parameters
    ``recover=<channel>:<epoch>:<offset>``), by channel; ``ValueError`` for a malformed
    one."""
    positions = {}
    for value in values:
        channel, _, rest = value.rpartition(":")
        channel, _, epoch = channel.rpartition(":")
        if not channel or not re.fullmatch(r"[0-9A-Za-z]{1,64}", epoch) \
                or not re.fullmatch(r"[0-9]{1,19}", rest):
            raise ValueError(f"recover is <channel>:<epoch>:<offset>, not {value[:80]!r}")
        positions[channel] = Position(int(rest), epoch)
    return positions


def fingerprint(rules: Sequence[Rule]) -> str:
    """``HISTORY`` as one canonical text, the same on both halves for the same setting
    (``chat*=100:600 news=10:60``, in order: the first glob that matches wins; ``""``
    for none). Each node puts it in its node registry entry; the Django side compares its
    own with it before it publishes (:mod:`ws4tx._history_check`)."""
    return " ".join(f"{pattern}={size}:{ttl}" for pattern, (size, ttl) in rules)
