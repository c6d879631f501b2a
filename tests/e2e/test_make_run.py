"""`make run` from a clean clone: installs, starts everything healthy, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.devstack import REPO_ROOT, free_port, port_open


def wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = path.read_text(errors="replace")
        if text in output:
            return output
        if process.poll() is not None:
            raise AssertionError(f"make run exited with {process.returncode}:\n{output}")
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{path.read_text(errors='replace')}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_run_from_a_clean_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    ports = {name: free_port() for name in ("tenant", "config", "provisioner")}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("VIRTUAL_ENV", None)
    for name, port in ports.items():
        env[f"{name.upper()}_GRPC_PORT"] = str(port)
        env[f"{name.upper()}_METRICS_PORT"] = str(free_port())
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        # Its own process group: the test sends Ctrl-C to it as a terminal would.
        process = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        output = wait_for(log, "agent-ready is up", process, timeout=780)
        assert "embedded PostgreSQL" in output
        assert "embedded Redis" in output
        for name, port in ports.items():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub: Any = health_pb2_grpc.HealthStub(channel)  # its stubs list no methods
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        token = subprocess.run(
            ["make", "-s", "token", "ORG=demo"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert token.count(".") == 2
        # The first steps it printed work as printed: sign up, log in, create an
        # organization (ACTIVE), set a value (the stream at the end is left out).
        printed = output.split("First steps", 1)[1].split("Ctrl-C stops everything", 1)[0]
        commands = [line.strip() for line in printed.splitlines()[1:] if line.strip()]
        assert commands[-1].endswith("ConfigService/WatchConfig")
        steps = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(commands[:-1])],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert steps.returncode == 0, (
            steps.stderr
            + "\n--- servers ---\n"
            + "\n".join(
                line
                for line in log.read_text(errors="replace").splitlines()
                if any(mark in line for mark in ("ERROR", "WARNING", "Traceback", "Error"))
            )
        )
        assert '"state": "STATE_ACTIVE"' in steps.stdout, steps.stdout
        assert '"revision": "1"' in steps.stdout, steps.stdout
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        output = log.read_text(errors="replace")
        assert "agent-ready: stopped" in output
        assert "Traceback" not in output
        for port in ports.values():
            assert not port_open("127.0.0.1", port)
        assert not (clone / ".data" / "postgres" / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
