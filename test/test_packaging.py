"""What the distributions carry: the MIT LICENSE that setup.py and js/package.json declare
is inside the sdist, the wheel built from it, and the npm tarball."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
LICENSE = (ROOT / "LICENSE").read_bytes()


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=300)


@pytest.mark.system
class LicenseTests(SynchronousTestCase):
    def test_licenseIsMIT(self) -> None:
        """The LICENSE is the MIT license of the ws4tx authors, as the metadata says."""
        text = LICENSE.decode()
        self.assertTrue(text.startswith("MIT License\n"))
        self.assertIn("Copyright (c) 2026 the ws4tx authors", text)
        self.assertIn('license="MIT"', (ROOT / "setup.py").read_text(encoding="utf-8"))
        package = json.loads((ROOT / "js" / "package.json").read_text(encoding="utf-8"))
        self.assertEqual(package["license"], "MIT")

    def test_sdistAndWheelCarryTheLicense(self) -> None:
        """The sdist has LICENSE at its root, and the wheel built from that sdist has it
        in its .dist-info: the same bytes as the repository's; the wheel carries every
        module of the package."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            # egg_info's --egg-base keeps the build's files out of the repository.
            _run(sys.executable, "setup.py", "-q", "egg_info", "--egg-base", tmp,
                 "sdist", "-d", tmp, cwd=ROOT)
            [sdist] = out.glob("ws4tx-*.tar.gz")
            with tarfile.open(sdist) as archive:
                root = archive.getnames()[0].split("/")[0]
                member = archive.extractfile(f"{root}/LICENSE")
                assert member is not None
                self.assertEqual(member.read(), LICENSE)
                archive.extractall(out / "unpacked", filter="data")
            _run(sys.executable, "setup.py", "-q", "bdist_wheel", "-d", str(out / "wheel"),
                 cwd=out / "unpacked" / root)
            [wheel] = (out / "wheel").glob("ws4tx-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                # .dist-info/LICENSE, or .dist-info/licenses/LICENSE (PEP 639)
                [name] = [n for n in archive.namelist()
                          if ".dist-info/" in n and n.endswith("/LICENSE")]
                self.assertEqual(archive.read(name), LICENSE)
                metadata = next(n for n in archive.namelist()
                                if n.endswith(".dist-info/METADATA"))
                self.assertIn(b"License-File: LICENSE", archive.read(metadata))
                # Every module of the tree, those of subpackages too: an installed ws4tx
                # without one fails only where the source tree is not on the path (twistd
                # started elsewhere), which the tests run from the tree may never see.
                modules = {str(path.relative_to(ROOT)) for path in
                           [*(ROOT / "ws4tx").rglob("*.py"),
                            *(ROOT / "twisted" / "plugins").glob("*.py")]}
                self.assertEqual(modules - set(archive.namelist()), set())

    def test_npmTarballCarriesTheLicense(self) -> None:
        """``npm pack`` of js/ lists LICENSE, the same text as the repository's (a
        missing npm skips the test here and fails it under CI, as a missing Node does)."""
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("CI"):
                raise RuntimeError("npm is not installed (.ci/run installs it)")
            raise unittest.SkipTest("npm is not installed")
        listed = subprocess.run(
            [npm, "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=ROOT / "js",
            check=True, capture_output=True, text=True, timeout=120).stdout
        [pack] = json.loads(listed)
        self.assertIn("LICENSE", [f["path"] for f in pack["files"]])
        self.assertEqual((ROOT / "js" / "LICENSE").read_bytes(), LICENSE)


class InstallInstructionTests(SynchronousTestCase):
    def test_readmeNeverInstallsFromPyPI(self) -> None:
        """ws4tx is not on PyPI: every ``pip install`` of ws4tx in the README (the Quick
        start's and the migration guide's) installs from a clone, not by name."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        installs = re.findall(r"pip install ([^`\n]*ws4tx[^`\n]*|'?\.\[[^`\n]*)", readme)
        self.assertGreaterEqual(len(installs), 2, installs)
        for line in installs:
            self.assertNotRegex(line, r"(^|\s)'?ws4tx\b", line)
