"""The suite's virtualenvs (``bench/.venvs/<name>``), each from a pinned requirements file
in ``bench/requirements/``; rebuilt when that file (or, for ws4tx, setup.py) changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from typing import Optional

from benchlib.procs import BenchError

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(BENCH)
VENVS = os.path.join(BENCH, ".venvs")
REQUIREMENTS = os.path.join(BENCH, "requirements")

#: venv name -> what else it installs beyond its requirements file.
VENV_NAMES = ("ws4tx", "channels", "socketio", "loadgen")


class Venv:
    def __init__(self, name: str, python: str, managed: bool) -> None:
        self.name = name
        self.python = python
        self.managed = managed

    @property
    def bin(self) -> str:
        return os.path.dirname(self.python)

    def script(self, name: str) -> Optional[str]:
        path = os.path.join(self.bin, name)
        return path if os.access(path, os.X_OK) else None

    def freeze(self) -> dict[str, str]:
        """Installed distributions and versions (asked of each interpreter once: with
        ``--venvs current`` every venv is this one)."""
        found = _FROZEN.get(self.python)
        if found is None:
            out = subprocess.run([self.python, "-m", "pip", "list", "--format=freeze",
                                  "--disable-pip-version-check"],
                                 capture_output=True, text=True, timeout=120)
            found = _FROZEN[self.python] = {}
            for line in out.stdout.splitlines():
                name, sep, version = line.partition("==")
                if sep:
                    found[name.lower()] = version
        return dict(found)


#: Interpreter -> what :meth:`Venv.freeze` found in it.
_FROZEN: dict[str, dict[str, str]] = {}


def _fingerprint(name: str) -> str:
    h = hashlib.sha256()
    with open(os.path.join(REQUIREMENTS, name + ".txt"), "rb") as f:
        h.update(f.read())
    h.update(sys.version.encode())
    if name == "ws4tx":
        with open(os.path.join(REPO, "setup.py"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def ensure(name: str, refresh: bool = False, log=print) -> Venv:
    """The venv ``name``, created or rebuilt if its pins changed (bounded pip calls)."""
    path = os.path.join(VENVS, name)
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, ".bench-stamp")
    want = _fingerprint(name)
    if not refresh and os.path.exists(stamp) and os.access(python, os.X_OK):
        with open(stamp) as f:
            if f.read().strip() == want:
                return Venv(name, python, True)
    log(f"bench: setting up virtualenv {os.path.relpath(path, REPO)} "
        f"(pinned in bench/requirements/{name}.txt)")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(VENVS, exist_ok=True)

    def run(argv: list[str]) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise BenchError(f"venv {name}: {' '.join(argv[2:6])}... failed:\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    run([sys.executable, "-m", "venv", path])
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    requirements = os.path.join(REQUIREMENTS, name + ".txt")
    run(pip + ["install", "-r", requirements])
    if name == "ws4tx":
        # Editable from this checkout, in the mode that lets `twistd` see the plugin.
        run(pip + ["install", "-e", REPO + "[django,hiredis]", "-c", requirements,
                   "--config-settings", "editable_mode=compat"])
    with open(stamp, "w") as f:
        f.write(want + "\n")
    return Venv(name, python, True)


NODE_DIR = os.path.join(BENCH, "servers", "node")


class NodeEnv(Venv):
    """Node.js and the npm packages of ``bench/servers/node`` (its package-lock.json);
    ``python`` is this interpreter, for the publisher (which needs only the standard
    library to feed a floor)."""

    def __init__(self, node: str) -> None:
        super().__init__("node", sys.executable, True)
        self.node = node

    def freeze(self) -> dict[str, str]:
        found = {"node": subprocess.run([self.node, "--version"], capture_output=True,
                                        text=True, timeout=30).stdout.strip().lstrip("v")}
        try:
            import json

            with open(os.path.join(NODE_DIR, "node_modules", "ws", "package.json")) as f:
                found["ws"] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            pass
        return found


def node_available() -> bool:
    """Whether ``node`` and ``npm`` are on PATH (the floor-node system needs both)."""
    return bool(shutil.which("node") and shutil.which("npm"))


def ensure_node(refresh: bool = False, log=print) -> NodeEnv:
    """``node`` on PATH and ``npm ci`` in bench/servers/node, again when its lockfile
    changed (bounded)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise BenchError("the floor-node system needs node and npm on PATH")
    stamp = os.path.join(NODE_DIR, "node_modules", ".bench-stamp")
    h = hashlib.sha256()
    with open(os.path.join(NODE_DIR, "package-lock.json"), "rb") as f:
        h.update(f.read())
    want = h.hexdigest()
    if not refresh and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == want:
                return NodeEnv(node)
    log("bench: npm ci in bench/servers/node (pinned in its package-lock.json)")
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise BenchError(f"npm ci failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    with open(stamp, "w") as f:
        f.write(want + "\n")
    return NodeEnv(node)


def current(name: str) -> Venv:
    """This interpreter standing in for venv ``name`` (smoke mode: nothing installed)."""
    return Venv(name, sys.executable, False)
