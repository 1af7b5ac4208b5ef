"""What a page shows of a channel's history: its newest messages within a count and a size.

A channel keeps up to its ``HISTORY`` size of messages of any size its publishers sent (up to
the server's ``MAX_MESSAGE_SIZE``): rendering them all into every page view would let one
person who fills the history make every anonymous GET of the page cost megabytes. So a page
carries at most :data:`SHOWN` messages and :data:`BUDGET` bytes of them, newest first; a
message longer than :data:`MESSAGE_BYTES` is carried as its offset and size only (the page
says it is too long to show). The history is read in pages of :data:`PAGE`, newest first,
and the reading stops where the page is full, so that what one view reads from Redis is
bounded too.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from ws4tx.history import History

#: Messages a page shows of each of its channels, at most.
SHOWN = 200
#: Bytes of messages a page carries per channel, at most (as they appear in the page).
BUDGET = 256 * 1024
#: A message longer than this (UTF-8 bytes) is shown as its size only.
MESSAGE_BYTES = 8 * 1024
#: Messages read from Redis at a time.
PAGE = 25

#: ``read(since, limit)``: ``api.history`` of the channel (``since`` None: the newest).
Reader = Callable[[Optional[int], int], History]


def entry(offset: int, payload: bytes) -> dict[str, Any]:
    """A message as the page gets it: its offset and text, or its size when too long."""
    if len(payload) > MESSAGE_BYTES:
        return {"offset": offset, "omitted": len(payload)}
    return {"offset": offset, "data": payload.decode("utf-8", "replace")}


def cost(item: dict[str, Any]) -> int:
    """The bytes ``item`` takes in a page: its JSON, plus the escapes of ``<``, ``>`` and
    ``&`` (``json_script`` writes each as six characters)."""
    text = json.dumps(item)
    return len(text) + 5 * sum(text.count(c) for c in "<>&")


def recent(read: Reader, shown: int = SHOWN, budget: int = BUDGET,
           page: int = PAGE) -> tuple[History, list[dict[str, Any]]]:
    """The channel's position (the first read's epoch and offset) and its newest messages
    within ``shown`` and ``budget``, oldest first."""
    first = read(None, min(page, shown))
    taken: list[dict[str, Any]] = []  # newest first
    batch = first.publications
    while batch:
        for publication in reversed(batch):
            item = entry(publication.offset, publication.payload)
            spent = cost(item)
            if len(taken) >= shown or spent > budget:
                return first, taken[::-1]
            budget -= spent
            taken.append(item)
        oldest = batch[0].offset
        since = max(0, oldest - 1 - page)
        if oldest <= 1 or len(taken) >= shown:
            break
        more = read(since, oldest - 1 - since)
        if more.epoch != first.epoch:  # a new epoch meanwhile: what is older is gone
            break
        batch = [p for p in more.publications if p.offset < oldest]
    return first, taken[::-1]
