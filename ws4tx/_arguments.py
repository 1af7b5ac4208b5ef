"""The checks of what a caller asks of ws4tx, for both APIs: :mod:`ws4tx.api` on the Django
side and :class:`ws4tx.server.ServerAPI` in a handler. One place, so that both refuse the
same bad arguments with the same message (``ValueError``, or ``TypeError`` for a value of
the wrong kind). Pure: no Django, no Twisted, no I/O.

The commands (``disconnect``, ``unsubscribe``) and queries (``channels``, ``info``) are
checked where they are built, in :mod:`ws4tx.control`; event names in
:mod:`ws4tx.envelope`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from ws4tx import history as _history, naming, presence as _presence, schema


def audience(facility: str, broadcast: bool = False, users: Any = (), groups: Any = (),
             sessions: Any = ()) -> None:
    """A publish (or a history read) names a valid facility and at least one audience."""
    if not (broadcast or users or groups or sessions):
        raise ValueError("no audience: give broadcast=True, users, groups or sessions")
    naming.check_facility(facility)


def expire(value: Any) -> int:
    """``value`` as the seconds to store a message for (0: not stored)."""
    seconds: int = schema.get("expire").convert(value, "expire")
    return seconds


def history(rules: Sequence[_history.Rule], facility: str, channels: Sequence[str],
            since: Optional[int] = None, limit: Optional[int] = None) -> _history.Retention:
    """The retention of ``facility``, whose history is read from ``channels`` after
    ``since``, at most ``limit`` messages: the facility keeps a history (``rules``: setting
    ``HISTORY``), the audience is one channel and the range is one."""
    retention = _history.history_for(rules, facility)
    if retention is None:
        raise ValueError(f"the facility {facility!r} keeps no history (setting "
                         "WS4TX_HISTORY)")
    if len(channels) != 1:
        raise ValueError("history is read from one channel: give one audience "
                         "(broadcast=True, or one user, group or session), not "
                         f"{len(channels)} channels")
    _history.check_range(since, limit)
    return retention


def presence(globs: Iterable[str], facility: str, broadcast: bool = False,
             users: Iterable[str] = (), groups: Iterable[str] = (),
             sessions: Iterable[str] = ()) -> Optional[str]:
    """The presence audience to read (None: the whole facility): ``facility`` is valid
    and keeps a presence (``globs``: setting ``PRESENCE``), and at most one audience is
    named."""
    naming.check_facility(facility)
    if not _presence.has_presence(globs, facility):
        raise ValueError(f"the facility {facility!r} keeps no presence (setting "
                         "WS4TX_PRESENCE)")
    return _presence.audience_of(broadcast, users, groups, sessions)
