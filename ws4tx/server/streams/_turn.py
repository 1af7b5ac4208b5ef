"""What the reads batched per reactor turn share: whether a batch waits to be sent, and
what to send right after it on the broker's connections."""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall


class SentAtTurnEnd:
    """A batch of commands sent at the end of the reactor turn (``_flush_call``); a
    subclass's flush calls :meth:`_sent` right after it sent them."""

    _flush_call: Optional[IDelayedCall]
    _after: list[Callable[[], None]]

    @property
    def pending(self) -> bool:
        """Whether reads wait to be sent at the end of this turn."""
        return self._flush_call is not None

    def afterSending(self, then: Callable[[], None]) -> None:
        """Call ``then`` right after the reads asked for in this turn are sent (now when
        none waits): what it sends on the broker's connections follows them."""
        if self._flush_call is None:
            then()
        else:
            self._after.append(then)

    def _sent(self) -> None:
        after, self._after = self._after, []
        for then in after:
            then()
