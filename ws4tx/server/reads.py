"""The history reads of joining clients, batched per channel and reactor turn: now in
:mod:`ws4tx.server.streams` (the one home of channel streams); these names stay here."""

from ws4tx.server.streams import HistoryReads, SharedHistory

__all__ = ["HistoryReads", "SharedHistory"]
