"""The contracts: buf lint clean, generated code fresh, the SDK installable on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicekit.devstack import REPO_ROOT

SDK_SRC = REPO_ROOT / "sdk" / "src"
PROTOS = sorted(
    str(p.relative_to(REPO_ROOT / "protos")) for p in REPO_ROOT.glob("protos/**/*.proto")
)
BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.glob("agentready/*/v1/*_pb2*.py*"))
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO_ROOT / "protos"),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *PROTOS,
        ],
        cwd=REPO_ROOT / "protos",
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        check=True,
        capture_output=True,
    )
    fresh = generated_files(tmp_path)
    committed = generated_files(SDK_SRC)
    assert fresh, "protoc generated nothing"
    assert sorted(committed) == sorted(fresh), "generated files differ: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"stale generated code, run `make proto`: {stale}"


def test_bench_etcd_stubs_are_fresh(tmp_path: Path) -> None:
    # The benchmark's etcd v3 API subset: generated beside its protos by `make proto`.
    bin_dir = Path(sys.executable).parent
    folder = Path("tests") / "bench" / "etcdv3"
    protos = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / folder).glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO_ROOT),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        check=True,
        capture_output=True,
    )

    def stubs(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((root / folder).glob("*_pb2*.py*"))}

    fresh, committed = stubs(tmp_path), stubs(REPO_ROOT)
    assert fresh, "protoc generated nothing"
    assert sorted(committed) == sorted(fresh), "generated files differ: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"stale generated code, run `make proto`: {stale}"


def test_every_package_has_messages_and_a_service() -> None:
    for package in ("tenant", "config", "provisioner"):
        folder = REPO_ROOT / "protos" / "agentready" / package / "v1"
        assert (folder / f"{package}.proto").is_file()
        assert (folder / f"{package}_service.proto").is_file()


def test_buf_lint_is_clean() -> None:
    if not BUF.exists():
        pytest.fail("buf is not installed: `make test` installs it with `npm ci`")
    result = subprocess.run(
        [str(BUF), "lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.slow
def test_sdk_installs_into_a_fresh_virtualenv(tmp_path: Path) -> None:
    # A copy, so nothing of the repository is importable by accident.
    sdk = shutil.copytree(
        REPO_ROOT / "sdk", tmp_path / "sdk", ignore=shutil.ignore_patterns("*.egg-info", "build")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(sdk)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import agentready, grpc\n"
        "from agentready.config.v1 import config_pb2, config_service_pb2_grpc\n"
        "from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2_grpc\n"
        "from agentready.provisioner.v1 import provisioner_pb2, provisioner_service_pb2_grpc\n"
        "request = config_pb2.GetConfigRequest(organization='acme', service='ai', key='k')\n"
        "assert config_pb2.GetConfigRequest.FromString(request.SerializeToString()) == request\n"
        "config_service_pb2_grpc.ConfigServiceStub(grpc.insecure_channel('127.0.0.1:1'))\n"
        "import pathlib\n"
        "root = pathlib.Path(agentready.__file__).parent\n"
        "assert (root / 'py.typed').is_file() and (root / 'config/v1/config_pb2.pyi').is_file()\n"
        "print(agentready.__file__)\n"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(venv))
