"""The server's log level: ws4tx's own lines below it are dropped before any observer.

Every logger of the server writes through :data:`observer`, which passes on the events at
or above the level :func:`set_level` chose (info unless asked otherwise: ``--log-level``,
``WS4TX_LOG_LEVEL``). Autobahn's level (through txaio) follows it.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: The observer of every ws4tx logger: ``Logger(observer=observer)``.
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def set_level(name: str) -> None:
    """Print ws4tx's (and Autobahn's) lines at level ``name`` (one of
    :data:`ws4tx.schema.LOG_LEVELS`)
    and above."""
    import txaio

    _predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))
    # txaio binds its functions once Autobahn picked Twisted: mypy cannot see them.
    txaio.set_global_log_level(name)  # type: ignore[attr-defined]


def level() -> str:
    """The name of the level now in force."""
    return str(_predicate.logLevelForNamespace("").name)
