"""``manage.py ws4tx_relay``: send the outbox's pending messages (see
:mod:`ws4tx._outbox`); ``--once`` sends what is pending and exits, else it goes on, looking
every ``--interval`` seconds (longer, up to 30 s, while Redis cannot be reached).
``--retry-failed`` first puts back the messages set aside as failed for good. Run it beside
the site."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from ws4tx import _outbox


class Command(BaseCommand):
    help = ("Send the messages published with on_commit=True that could not be sent at "
            "their commit (Redis down, the process killed), in order per channel, each once.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="send what is pending, then exit (status 1 if Redis "
                                 "could not be reached)")
        parser.add_argument("--interval", type=float, default=1.0,
                            help="seconds between two looks at the outbox (default 1)")
        parser.add_argument("--retry-failed", action="store_true",
                            help="put the messages set aside as failed back in the queue "
                                 "first (once the cause is mended)")

    def handle(self, *args: Any, once: bool = False, interval: float = 1.0,
               retry_failed: bool = False, **options: Any) -> None:
        if interval <= 0:
            raise CommandError(f"--interval must be > 0, not {interval}")
        if retry_failed:
            self.stdout.write(f"{_outbox.retry_failed()} failed outbox message(s) put back")
        if once:
            done = _outbox.send_pending()
            if done.error is not None:
                raise CommandError(f"outbox not sent ({done}): {done.error}")
            self.stdout.write(str(done))
            return
        _outbox.Relay(interval, time.sleep, self.stderr.write,
                      between=close_old_connections).run()
