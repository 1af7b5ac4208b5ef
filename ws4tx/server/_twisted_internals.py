"""Every place where ws4tx reaches below Twisted's public API, in one module (those below
Autobahn's are in :mod:`ws4tx.server._internals`). Each is pinned by a test that fails if
Twisted changes under it (``test/test_internals.py``):

- :class:`QuietClientService`: a ``ClientService`` that logs warnings but not each retry.
- :class:`QuietHTTPChannel`: an ``HTTPChannel`` that says at debug, not info, that it
  closed an idle keep-alive connection (every ``HTTP_IDLE_TIMEOUT`` per idle browser
  connection).
- :func:`forget_exit_signal`: let ``twistd`` exit with 0 after a clean drain on SIGTERM.
- :func:`request_path`: the path of the request an ``HTTPChannel`` is reading, known from
  its request line, before its body (a body over the cap is refused as it comes).
"""

from __future__ import annotations

import signal
from typing import Any, Optional

from twisted.application.internet import ClientService
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.web.http import HTTPChannel

from ws4tx.server._log import observer


class QuietClientService(ClientService):
    """A ClientService that logs its warnings but not each retry (its ``_log``): the
    Redis broker logs an outage once when it starts and once when it ends."""

    _log = Logger(observer=FilteringLogObserver(
        globalLogPublisher, [LogLevelFilterPredicate(LogLevel.warn)]))


class _DebugLogger(Logger):
    """A Logger whose info lines are debug lines."""

    def emit(self, level: LogLevel, format: Optional[str] = None, **kwargs: object) -> None:
        super().emit(LogLevel.debug if level == LogLevel.info else level, format, **kwargs)


class QuietHTTPChannel(HTTPChannel):
    """An HTTPChannel whose own lines (its ``_log``: ``Timing out client: …`` each time
    it closes an idle keep-alive connection, ``Forcibly timing out client: …`` when the
    peer does not let go) go to ws4tx's log at debug: closing an idle connection is
    routine, and at info it filled the log with a line per idle browser connection every
    ``HTTP_IDLE_TIMEOUT``."""

    _log = _DebugLogger(observer=observer)


def forget_exit_signal(reactor: Any) -> None:
    """After a clean drain on SIGTERM or SIGINT, make ``twistd`` exit with status 0
    instead of re-raising the signal (the reactor's ``_exitSignal``)."""
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None


def request_path(channel: Any) -> bytes:
    """The path (with its query) of the request ``channel`` is reading: its request line's
    target, known once that line is in (the channel's ``_path``)."""
    path = getattr(channel, "_path", b"")
    return path if isinstance(path, bytes) else b""
