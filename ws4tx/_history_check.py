"""The Django side checks that its ``HISTORY`` is the servers' before it publishes.

Both halves read ``HISTORY`` through :mod:`ws4tx.schema`, but from two configurations (the
site's settings; the server's command line or ``--django-settings``). When they differ,
messages the site publishes on a facility the servers keep a history of carry no position
(or one the servers do not expect), and clients recover the wrong things. So every node
puts its ``HISTORY`` (:func:`ws4tx.history.fingerprint`) in its node registry entry, and
before its first publish a Django process reads the registry's live nodes and compares:
a difference raises ``ImproperlyConfigured`` saying how they differ (and every publish
raises it until the settings agree). A process that finds no live node, or cannot read
the registry (its Redis is down), checks again at its next publish after
:data:`RECHECK` seconds; once a node agreed, it does not check again
while its ``HISTORY`` stays the same.

A process without Django settings (a script, a shell: every setting at its default) has no
``HISTORY`` of its own to compare: it takes the live nodes' when they all keep the same,
so that ``api.publish`` from a script positions its messages as the site's would.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from django.core.exceptions import ImproperlyConfigured

from ws4tx import _django_settings, history, naming, presence as _presence, schema

#: Seconds after which a process that found no live node looks again.
RECHECK = 15.0

#: The fingerprint that live nodes agreed with, and when the registry was last found empty.
_agreed: Optional[str] = None
_empty_at: dict[str, float] = {}


def check(connection: Any) -> None:
    """Compare this site's ``HISTORY`` with the live nodes' (on ``connection``, the
    registry's Redis); ImproperlyConfigured when one differs."""
    mine = pending()
    if mine is None:
        return
    script = connection.register_script(_presence.script(_presence.READ_SCRIPT))
    keys, args = read_args()
    judge(mine, script(keys=keys, args=args))


def pending() -> Optional[str]:
    """This site's ``HISTORY`` fingerprint when the registry must be read to check it
    (then :func:`judge` its read), else None."""
    mine = history.fingerprint(_django_settings.history())
    if mine == _agreed:
        return None
    seen = _empty_at.get(mine)
    if seen is not None and time.monotonic() - seen < RECHECK:
        return None
    return mine


def read_args() -> tuple[list[Any], list[Any]]:
    """The keys and arguments of the registry read (``presence_read.lua``)."""
    return _presence.read_args(naming.nodes_keys(_django_settings.prefix()), "list")


def judge(mine: str, reply: Any) -> None:
    """Compare ``mine`` (:func:`pending`) with the nodes of a registry read;
    ImproperlyConfigured when one differs."""
    global _agreed
    nodes = [e for e in _presence.parse_entries(reply)
             if e.info is not None and "history" in e.info]
    if not nodes:
        _empty_at[mine] = time.monotonic()
        return
    kept = {node.info["history"] for node in nodes if node.info is not None}
    if not _django_settings.configured() and len(kept) == 1:
        theirs = kept.pop()
        _django_settings.adopt_history(schema.history_from_fingerprint(theirs))
        _agreed = theirs
        return
    for node in nodes:
        theirs = node.info["history"] if node.info is not None else ""
        if theirs != mine:
            raise ImproperlyConfigured(
                f"HISTORY differs between this site and ws4tx node {node.id}: the node "
                f"keeps {_shown(theirs)}, this site {_shown(mine)}; give both the same "
                "WS4TX_HISTORY (the server reads it with --django-settings, or --history)")
    _agreed = mine


def unanswered(mine: str) -> None:
    """The registry could not be read: check again after :data:`RECHECK` seconds, as
    when it held no live node (a publish is not refused for another shard's outage)."""
    _empty_at[mine] = time.monotonic()


def _shown(text: Any) -> str:
    return f"{text!r}" if text else "no history"


def forget() -> None:
    """Check again at the next publish (tests, settings changes)."""
    global _agreed
    _agreed = None
    _empty_at.clear()
    _django_settings.adopt_history(None)
