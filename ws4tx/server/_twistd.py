"""What ``twistd ws4tx`` loads: :mod:`ws4tx.server.tap`'s options and service, with
start-up faults said in one line (:mod:`ws4tx.server._startup`) instead of twistd's whole
usage text or a traceback."""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.application import service
from twisted.python import usage

from ws4tx.server import _startup, tap


class Options(tap.Options):
    """:class:`ws4tx.server.tap.Options`; a usage error exits with its line and status 2."""

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _startup.usage_failed(str(e))


def makeService(options: Options) -> service.IService:
    """:func:`ws4tx.server.tap.makeService`; from here on a fault is said in one line."""
    _startup.install()
    return tap.makeService(options)
