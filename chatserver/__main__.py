"""``python -m chatserver [--port 8000] [--debug] [--admin]``: run the demo chat on
http://127.0.0.1:PORT/.

Migrates the SQLite database (quietly), loads the demo users if they are missing, then
replaces itself with ``twistd ws4tx`` serving the Django site, the WebSockets, the event
handler and an embedded Redis on one port. Django's DEBUG is off unless ``--debug``; the
admin is served at /admin/ only with ``--admin`` (the demo users' password is "secret").
The settings read both from the environment (``CHATSERVER_DEBUG``, ``CHATSERVER_ADMIN``).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
SETTINGS = "chatserver.settings"
FIXTURE = PACKAGE_DIR / "fixtures" / "data.json"
DEMO_USERS = ("admin", "john", "mary")
HEARTBEAT = "--heartbeat--"


def prepare_database() -> None:
    """Create or migrate the database and load the demo users unless they exist."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    if not get_user_model().objects.filter(username__in=DEMO_USERS).exists():
        call_command("loaddata", str(FIXTURE), verbosity=0)


def twistd_argv(port: int) -> list[str]:
    """The ``twistd ws4tx`` command line of the demo server on ``port``."""
    twistd = Path(sys.executable).parent / "twistd"
    if os.access(twistd, os.X_OK):
        command = [str(twistd)]
    else:  # an environment without the console script: the same entry point
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return command + [
        "-n", "--pidfile=", "ws4tx",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--django-settings", SETTINGS,
        "--wsgi", "chatserver.wsgi.application",
        "--redis", "embedded",
        "--handlers", "chatserver.handlers.EventChat",
        f"--heartbeat={HEARTBEAT}",
    ]


def server_environment(debug: bool, admin: bool) -> dict[str, str]:
    """The environment variables that tell ``chatserver.settings`` what was asked for."""
    return {"CHATSERVER_DEBUG": "1" if debug else "0",
            "CHATSERVER_ADMIN": "1" if admin else "0"}


ADMIN_WARNING = ("WARNING: --admin serves the Django admin at /admin/, and every demo user's "
                 "password is 'secret' (admin is a superuser): keep this server to yourself.")


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (connections of a server that just
    ended, in TIME_WAIT, do not count: twistd can listen all the same)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Prepare the database, then exec the server (never returns)."""
    parser = argparse.ArgumentParser(
        prog=os.environ.get("CHATSERVER_PROG", "python -m chatserver"),
        description="Run the ws4tx demo chat.")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port on 127.0.0.1 to serve on [default: 8000]")
    parser.add_argument("--debug", action="store_true",
                        help="turn Django's DEBUG on (error pages with tracebacks)")
    parser.add_argument("--admin", action="store_true",
                        help="serve the Django admin at /admin/ (password: secret!)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a TCP port")
    if not port_is_free(args.port):
        parser.error(f"port {args.port} is in use: pick another one with --port")

    os.environ.update(server_environment(args.debug, args.admin))
    prepare_database()
    # twistd must import chatserver from here, installed or not.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.chdir(ROOT)
    print(f"Open http://127.0.0.1:{args.port}/ and log in as john, mary or admin "
          f"(password: secret)", flush=True)
    if args.admin:
        print(ADMIN_WARNING, file=sys.stderr, flush=True)
    argv_ = twistd_argv(args.port)
    os.execv(argv_[0], argv_)


if __name__ == "__main__":
    main()
