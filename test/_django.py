"""Django for the tests: :func:`setup_django` configures it once per process."""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_done = False


def setup_django() -> None:
    """Set Django up (``test.settings`` unless ``DJANGO_SETTINGS_MODULE`` names other
    settings) and create the tables of the in-memory database. Idempotent."""
    global _done
    with _lock:
        if _done:
            return
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "test.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)
        _done = True
