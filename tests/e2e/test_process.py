"""A server as a process: start-up errors, JSON logs, and graceful SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.devstack import free_port


def spawn(env: dict[str, str], module: str = "config_service") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def log_lines(stream: Iterator[str], until: str, timeout: float = 30) -> list[dict[str, object]]:
    """Reads JSON log lines until one whose message is ``until``."""
    lines: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    for raw in stream:
        entry = json.loads(raw)  # every line a JSON object, or this raises
        lines.append(entry)
        if entry["message"] == until or time.monotonic() > deadline:
            return lines
    raise AssertionError(f"the process ended before logging {until!r}: {lines}")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL: scheme 'mysql' is not postgresql://"),
        ("CONFIG_GRPC_PORT", "123456", "CONFIG_GRPC_PORT='123456': out of range 0..65535"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(
    variable: str, value: str, expected: str
) -> None:
    process = spawn({variable: value})
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"config: configuration error: {expected}")
    assert "Traceback" not in stderr + stdout


def test_unreachable_postgres_is_a_clear_error(server_env: dict[str, str]) -> None:
    env = {
        **server_env,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "DB_CONNECT_TIMEOUT_SECONDS": "0.5",
    }
    process = spawn(env)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("config: cannot start: PostgreSQL at postgresql://postgres@127.0.0.1:")
    assert "Traceback" not in stderr


def test_sigterm_turns_health_not_serving_then_exits_cleanly(server_env: dict[str, str]) -> None:
    env = {**server_env, "LOG_LEVEL": "INFO", "SHUTDOWN_DRAIN_SECONDS": "0.5"}
    process = spawn(env)
    try:
        assert process.stderr is not None
        serving = log_lines(process.stderr, "serving")[-1]
        assert serving["service"] == "config"
        port = serving["grpc_port"]
        assert isinstance(port, int)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs list no methods
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            statuses: list[int] = []

            def read_updates() -> None:
                with contextlib.suppress(grpc.RpcError):  # the stream ends with the server
                    statuses.extend(update.status for update in watch)

            reader = threading.Thread(target=read_updates, daemon=True)
            reader.start()
            deadline = time.monotonic() + 10
            while not statuses and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            reader.join(timeout=10)
        assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        assert process.returncode == 0
        rest = [json.loads(line)["message"] for line in process.stderr.read().splitlines()]
        assert "shutting down" in rest
        assert rest[-1] == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
