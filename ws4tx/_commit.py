"""What ``ws4tx.api`` sends now, or once the database transaction commits: a checked
publish (through the outbox, :mod:`ws4tx._outbox`, when it waits for the commit) and a
control command. Shared by the synchronous functions and their asynchronous twins."""

from __future__ import annotations

from typing import Optional

from ws4tx import _ops, _prepare, control
from ws4tx._results import Sent
from ws4tx.redis_store import RedisStore


def send(prepared: _prepare.Publish) -> Sent:
    """Publish a checked publish now."""
    return prepared.publisher.publish_message(prepared.data, expire=prepared.expire,
                                              key=prepared.key)


def publish(prepared: _prepare.Publish, on_commit: bool) -> Optional[Sent]:
    """Publish now, or (``on_commit``) through the outbox: written in the transaction,
    sent after its commit (and by ``ws4tx_relay`` if it could not be)."""
    if not on_commit:
        return send(prepared)
    from ws4tx import _outbox

    _outbox.write(prepared)
    return None


def command(command: control.Command, on_commit: bool) -> Optional[int]:
    """Publish ``command`` on the control channel (now, or once the transaction commits):
    on the first shard of several, with SPUBLISH in the registry's slot of a cluster."""
    control.encode(command)  # a command that cannot be sent fails here, not after the commit

    def now() -> int:
        store = RedisStore()
        return _ops.run(_ops.command(command, store._cluster()), store._execute)

    if not on_commit:
        return now()
    from django.db import transaction

    transaction.on_commit(now)
    return None
