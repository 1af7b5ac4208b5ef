"""Start-up faults of ``twistd ws4tx`` as one line on stderr that names the fix.

A usage error (an unknown option, a bad value) is said with a pointer to ``--help`` and
exit status 2 (:func:`usage_failed`). Any other fault of the start (a bad setting, a
module that does not import, a port in use, no embedded Redis) is an exception that
escapes twistd: :func:`install` makes Python print it as one line instead of a traceback
(exit status 1); other exceptions keep their traceback.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import NoReturn, Optional

from twisted.internet.error import CannotListenError
from twisted.python import usage

from ws4tx.server.embedded import EmbeddedRedisError

#: The exit status of a usage error (as getopt-style tools use).
USAGE_STATUS = 2


class StartupError(Exception):
    """A fault that stops the start; its text is the one line to print."""


def one_line(error: BaseException) -> Optional[str]:
    """The line that says ``error`` and its fix, or None for an error that is a bug (it
    keeps its traceback)."""
    if isinstance(error, CannotListenError):
        where = f"{error.interface or '*'}:{error.port}"
        why = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return (f"cannot listen on {where}: {why}; stop what holds it or choose another "
                f"--listen")
    if isinstance(error, (StartupError, usage.UsageError, EmbeddedRedisError)):
        return str(error)
    return None


def _say(line: str) -> None:
    # sys.stderr may be twistd's log by now: the terminal's is sys.__stderr__.
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"ws4tx: {line}\n")
    stream.flush()


def usage_failed(message: str) -> NoReturn:
    """Say a usage error and where the options are told, and exit with status 2."""
    _say(message)
    _say("see `twistd ws4tx --help` for the options")
    raise SystemExit(USAGE_STATUS)


_installed = False


def install() -> None:
    """Print an uncaught start-up fault as its one line (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException,
             traceback: Optional[TracebackType]) -> None:
        line = one_line(error)
        if line is None:
            previous(kind, error, traceback)
        else:
            _say(line)

    sys.excepthook = hook
