"""``manage.py ws4tx_relay``: send the outbox's pending messages (see
:mod:`ws4tx._outbox`); ``--once`` sends what is pending and exits, else it goes on, looking
every ``--interval`` seconds. Run it beside the site."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from ws4tx import _outbox
from ws4tx.redis_store import PublishError


class Command(BaseCommand):
    help = ("Send the messages published with on_commit=True that could not be sent at "
            "their commit (Redis down, the process killed), in order, each once.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="send what is pending, then exit (status 1 if Redis "
                                 "could not be reached)")
        parser.add_argument("--interval", type=float, default=1.0,
                            help="seconds between two looks at the outbox (default 1)")

    def handle(self, *args: Any, once: bool = False, interval: float = 1.0,
               **options: Any) -> None:
        if interval <= 0:
            raise CommandError(f"--interval must be > 0, not {interval}")
        while True:
            close_old_connections()
            try:
                sent = _outbox.send_pending()
            except PublishError as e:
                if once:
                    raise CommandError(f"outbox not sent: {e}") from e
                self.stderr.write(f"outbox not sent, trying again in {interval} s: {e}")
            else:
                if once:
                    self.stdout.write(f"{sent} outbox message(s) sent")
                    return
            time.sleep(interval)
