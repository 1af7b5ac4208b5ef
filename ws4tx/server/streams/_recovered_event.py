"""The data of the ``ws4tx.recovered`` event a joining client is sent."""

from __future__ import annotations

from typing import Any, Optional

from ws4tx.history import UNKNOWN_POSITION, Merge


def recovered_event(merges: dict[str, Merge],
                    outcomes: dict[str, tuple[bool, Optional[str], int]]) -> dict[str, Any]:
    """The data of the ``ws4tx.recovered`` event: recovered only when every channel the
    client asked for (and may listen to) was; the first failure's reason otherwise
    (``outcomes``: the messages each channel's catch-up sent)."""
    failed = [m.reason for m in merges.values() if not m.recovered]
    if not merges:
        failed = [UNKNOWN_POSITION]
    data: dict[str, Any] = {"recovered": not failed}
    if failed:
        data["reason"] = failed[0]
    data["channels"] = {
        channel: {"recovered": True, "messages": outcomes[channel][2]} if m.recovered
        else {"recovered": False, "reason": m.reason} for channel, m in merges.items()}
    return data
