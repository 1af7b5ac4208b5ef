"""``python -m chatserver [--port 8000] [--redis-port 8379] [--debug] [--admin]``: run the
demo chat on http://127.0.0.1:PORT/.

Migrates the SQLite database (quietly), loads the demo users if they are missing, then
replaces itself with ``twistd ws4tx`` serving the Django site, the WebSockets, the event
handler and an embedded Redis on one port. The embedded Redis listens on a fixed port
(``--redis-port``, 8379 by default), so that ``WS4TX_REDIS_URL`` and the publish line it
prints (also in the README) stay valid across restarts; when that port is taken it takes a
free one and says so. Django's DEBUG is off unless ``--debug``; the admin is served at
/admin/ only with ``--admin`` (the demo users' password is "secret"). The settings read
both from the environment (``CHATSERVER_DEBUG``, ``CHATSERVER_ADMIN``).
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
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
#: The port of the demo's embedded Redis unless ``--redis-port`` says otherwise.
DEFAULT_REDIS_PORT = 8379
#: What the publish line sends, and where: the broadcast chat (/chat/) shows it.
SHELL_MESSAGE = "Hello from a shell"


def redis_url(port: int) -> str:
    """The URL of the demo's embedded Redis on ``port``."""
    return f"redis://127.0.0.1:{port}/0"


def publish_line(url: str, python: str = ".venv/bin/python") -> str:
    """A shell line that publishes :data:`SHELL_MESSAGE` to the broadcast chat through the
    Redis at ``url`` with ``python`` (the README prints it with the default)."""
    code = f'from ws4tx import api; api.publish("foobar", "{SHELL_MESSAGE}", broadcast=True)'
    return f"WS4TX_REDIS_URL={url} {shlex.quote(python)} -c {shlex.quote(code)}"


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


def twistd_argv(port: int, redis_port: Optional[int] = None) -> list[str]:
    """The ``twistd ws4tx`` command line of the demo server on ``port``, with an embedded
    Redis on ``redis_port`` (None: any free port)."""
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
        "--redis", "embedded" if redis_port is None else f"embedded:{redis_port}",
        "--handlers", "chatserver.handlers.EventChat",
        "--handlers", "chatserver.handlers.BroadcastChat",
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


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_redis_port(wanted: int, web_port: int) -> int:
    """``wanted`` if it is free (and not the web port), else a free port, with a warning
    on stderr (the README's publish line then misses the demo's Redis). 0: any free port."""
    if wanted and wanted != web_port and port_is_free(wanted):
        return wanted
    port = free_port()
    while port == web_port:
        port = free_port()
    if wanted:
        why = "is the web port" if wanted == web_port else "is in use"
        print(f"WARNING: port {wanted} {why}, so the demo's Redis listens on {port} "
              f"instead: the README's publish line ({redis_url(wanted)}) does not reach "
              f"it; use the one printed below, or pick a free port with --redis-port.",
              file=sys.stderr, flush=True)
    return port


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Prepare the database, then exec the server (never returns)."""
    parser = argparse.ArgumentParser(
        prog=os.environ.get("CHATSERVER_PROG", "python -m chatserver"),
        description="Run the ws4tx demo chat.")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port on 127.0.0.1 to serve on [default: 8000]")
    parser.add_argument("--redis-port", type=int, default=DEFAULT_REDIS_PORT,
                        help="TCP port on 127.0.0.1 of the demo's embedded Redis, where "
                             "publishers in other shells find it (0: any free port; a port "
                             "in use: a free one, with a warning) "
                             f"[default: {DEFAULT_REDIS_PORT}]")
    parser.add_argument("--debug", action="store_true",
                        help="turn Django's DEBUG on (error pages with tracebacks)")
    parser.add_argument("--admin", action="store_true",
                        help="serve the Django admin at /admin/ (password: secret!)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a TCP port")
    if not port_is_free(args.port):
        parser.error(f"port {args.port} is in use: pick another one with --port")
    if not 0 <= args.redis_port < 65536:
        parser.error(f"--redis-port {args.redis_port}: not a TCP port")
    redis_port = choose_redis_port(args.redis_port, args.port)

    os.environ.update(server_environment(args.debug, args.admin))
    prepare_database()
    # twistd must import chatserver from here, installed or not.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.chdir(ROOT)
    print(f"Open http://127.0.0.1:{args.port}/ and log in as john, mary or admin "
          f"(password: secret)", flush=True)
    print(f"The demo's Redis is {redis_url(redis_port)}. To see a message land in the open "
          f"page, paste this in a second shell:\n"
          f"    {publish_line(redis_url(redis_port), sys.executable)}", flush=True)
    if args.admin:
        print(ADMIN_WARNING, file=sys.stderr, flush=True)
    argv_ = twistd_argv(args.port, redis_port)
    os.execv(argv_[0], argv_)


if __name__ == "__main__":
    main()
