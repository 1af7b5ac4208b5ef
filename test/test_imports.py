"""What importing a module costs: the light faces load no heavy framework, and no two
ws4tx modules import each other (directly or round a longer circle)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: The WebSocket library, the Twisted Redis client, the metrics library, Django.
HEAVY = ("autobahn", "txredisapi", "prometheus_client", "django")
#: Heavy, and also Twisted itself and redis-py: what a pure module must not load.
FRAMEWORKS = (*HEAVY, "twisted", "zope", "redis")

#: module -> the top-level packages that importing it alone must leave unloaded.
LIGHT: dict[str, tuple[str, ...]] = {
    # The package face exports lazily: importing it, or any one part, loads no node.
    "ws4tx.server": FRAMEWORKS,
    "ws4tx.server.hub": FRAMEWORKS,
    "ws4tx.server._origin": FRAMEWORKS,
    "ws4tx.server._forwarded": FRAMEWORKS,
    "ws4tx.server.admission": HEAVY,
    # The pure modules both halves share.
    "ws4tx.naming": FRAMEWORKS,
    "ws4tx.schema": FRAMEWORKS,
    "ws4tx.envelope": FRAMEWORKS,
    "ws4tx.history": FRAMEWORKS,
    "ws4tx._arguments": FRAMEWORKS,
    # twistd imports its plugins on every run, and Twisted imports every endpoint plugin
    # when it parses a description whose prefix is not built in.
    "twisted.plugins.ws4tx_plugin": HEAVY,
    "twisted.plugins.ws4tx_endpoints": HEAVY,
    "ws4tx.server.reuseport": HEAVY,
    # The brokers speak Redis, not WebSocket.
    "ws4tx.server.redis_broker": ("autobahn", "prometheus_client", "django"),
    "ws4tx.server.sentinel": ("autobahn", "txredisapi", "prometheus_client", "django"),
    "ws4tx.server.sharded_broker": ("autobahn", "prometheus_client", "django"),
    "ws4tx.server.cluster": ("autobahn", "prometheus_client", "django"),
}


def loaded_after_import(module: str) -> set[str]:
    """The top-level packages in ``sys.modules`` of a fresh interpreter that imported
    ``module`` alone (with the reactor, when one got installed)."""
    code = ("import json, sys\n"
            f"import {module}\n"
            "found = {m.split('.')[0] for m in sys.modules}\n"
            "if 'twisted.internet.reactor' in sys.modules: found.add('twisted.internet.reactor')\n"
            "print(json.dumps(sorted(found)))\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise AssertionError(f"import {module} failed:\n{result.stderr}")
    return set(json.loads(result.stdout))


class LightImportTests(SynchronousTestCase):
    """Each light module, imported alone in a fresh interpreter, loads none of what it
    must not."""

    def test_lightModulesLoadNoHeavyFramework(self):
        """The package face, the hub, the pure modules, the twistd plugins and the brokers
        load no Autobahn, txredisapi, prometheus_client or Django (the pure ones no
        Twisted or redis-py either)."""
        wrong = {}
        for module, forbidden in LIGHT.items():
            loaded = loaded_after_import(module) & set(forbidden)
            if loaded:
                wrong[module] = sorted(loaded)
        self.assertEqual(wrong, {})

    def test_pluginsInstallNoReactor(self):
        """Loading the twistd plugins installs no reactor (twistd chooses it later)."""
        for module in ("twisted.plugins.ws4tx_plugin", "twisted.plugins.ws4tx_endpoints"):
            self.assertNotIn("twisted.internet.reactor", loaded_after_import(module), module)

    def test_theCheckSeesTheHeavyModules(self):
        """The check can fail: the service does load them all."""
        loaded = loaded_after_import("ws4tx.server.service")
        self.assertLessEqual({"autobahn", "txredisapi", "prometheus_client"}, loaded)


def _modules() -> dict[str, Path]:
    """Every module of the ws4tx package, by dotted name."""
    found = {}
    for path in sorted((ROOT / "ws4tx").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _typeCheckingOnly(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(body: list[ast.stmt], inFunctions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run: at the top level (under ``if``, ``try``, ...; never
    under ``if TYPE_CHECKING``), and with ``inFunctions`` those in function bodies too."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _typeCheckingOnly(node):
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if inFunctions:
                yield from _imports(node.body, inFunctions)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _imports(inner, inFunctions)


def import_graph(inFunctions: bool = False) -> dict[str, set[str]]:
    """Which ws4tx modules each ws4tx module imports. Importing ``a.b.c`` runs ``a.b``
    first, so a module also depends on every package above it and above what it imports."""
    modules = _modules()

    def withPackages(name: str) -> set[str]:
        names = set()
        while name:
            if name in modules:
                names.add(name)
            name = name.rpartition(".")[0]
        return names

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = withPackages(package)
        for node in _imports(ast.parse(path.read_text()).body, inFunctions):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
                targets.append(base)
            for target in targets:
                found |= withPackages(target)
        found.discard(name)
        graph[name] = found
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


class ImportCircleTests(SynchronousTestCase):
    """No ws4tx module imports, directly or round a circle, a module that imports it."""

    def test_noCircleAtTheTopLevel(self):
        """Imports that run when a module is loaded (a package runs before its modules)
        form no circle."""
        self.assertEqual(circles(import_graph()), [])

    def test_noCircleThroughDeferredImports(self):
        """Nor with the imports deferred into function bodies: deferring an import
        hides a circle from Python, not from the design."""
        self.assertEqual(circles(import_graph(inFunctions=True)), [])

    def test_theWalkFindsACircle(self):
        """The check can fail: a circle of three is found, a chain is not."""
        self.assertEqual(circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}),
                         [["a", "b", "c"]])
        self.assertEqual(circles({"a": {"b"}, "b": {"c"}, "c": set()}), [])

    def test_theGraphSeesWhatModulesImport(self):
        """The walk reads ``from ws4tx.server import x`` as an import of that module, and
        an import deferred into a function only when asked to."""
        graph = import_graph()
        self.assertIn("ws4tx.server._internals", graph["ws4tx.server.protocol"])
        self.assertIn("ws4tx.server", graph["ws4tx.server.hub"])
        self.assertNotIn("ws4tx.server._django", graph["ws4tx.server.tap"])
        self.assertIn("ws4tx.server._django", import_graph(inFunctions=True)["ws4tx.server.tap"])
