"""``pip install ./sdk`` into a fresh virtualenv gives the clients and ``arkctl``.

Offline and fast: the SDK is built and installed from the working tree without its
dependencies (``--no-deps --no-build-isolation``); the virtualenv sees the suite's
installed packages through a path file, so the SDK's declared dependencies are
checked against those pinned in requirements.lock instead of being downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from servicekit.devstack import REPO_ROOT

pytestmark = pytest.mark.slow

CHECK = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
import agentready
from agentready import ConfigClient, ProvisionerClient, TenantClient, Session, ConfigWatcher
assert agentready.__file__.startswith(sys.prefix), agentready.__file__
missing = []
for text in md.requires("agentready") or []:
    requirement = Requirement(text)
    try:
        version = md.version(requirement.name)
    except md.PackageNotFoundError:
        missing.append(text)
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        missing.append(f"{text} (have {version})")
assert not missing, missing
print("ok")
"""


def test_pip_install_sdk_gives_the_clients_and_arkctl(tmp_path: Path) -> None:
    source = tmp_path / "sdk"
    # A copy, as a clean clone has it (no build folders, no egg-info of the editable
    # install).
    shutil.copytree(
        REPO_ROOT / "sdk",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".mypy_cache"),
    )
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The suite's packages (grpcio, click, rich, setuptools ...), not its agentready:
    # an editable install is activated by a path file this one does not process.
    (Path(site) / "suite.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    check = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    arkctl = target / "bin" / "arkctl"
    assert arkctl.exists()
    help_text = subprocess.run([str(arkctl), "--help"], capture_output=True, text=True, check=True)
    assert "Exit codes" in help_text.stdout
    version = subprocess.run([str(arkctl), "--version"], capture_output=True, text=True)
    assert "0.1.0" in version.stdout
