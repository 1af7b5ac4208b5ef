"""Every place where ws4tx reaches below Twisted's public API, in one module (those below
Autobahn's are in :mod:`ws4tx.server._internals`). Each is pinned by a test that fails if
Twisted changes under it (``test/test_internals.py``):

- :class:`QuietClientService`: a ``ClientService`` that logs warnings but not each retry.
- :func:`forget_exit_signal`: let ``twistd`` exit with 0 after a clean drain on SIGTERM.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.internet import ClientService
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)


class QuietClientService(ClientService):
    """A ClientService that logs its warnings but not each retry (its ``_log``): the
    Redis broker logs an outage once when it starts and once when it ends."""

    _log = Logger(observer=FilteringLogObserver(
        globalLogPublisher, [LogLevelFilterPredicate(LogLevel.warn)]))


def forget_exit_signal(reactor: Any) -> None:
    """After a clean drain on SIGTERM or SIGINT, make ``twistd`` exit with status 0
    instead of re-raising the signal (the reactor's ``_exitSignal``)."""
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None
