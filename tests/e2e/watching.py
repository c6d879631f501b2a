"""Test helpers for WatchConfig: a recording client that resumes like the SDK does,
and config server replicas as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

Response = config_pb2.WatchConfigResponse


def channel_for(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


class Recorder:
    """Reads one organization's stream in the background, resuming on failure.

    ``ports`` are tried in turn: when a stream ends with an error, the recorder
    reconnects to the next port with ``start_revision`` = the last revision received,
    as a pod's SDK does. ``messages`` keeps everything received; ``errors`` the codes
    and ErrorInfo reasons streams ended with.
    """

    def __init__(
        self,
        ports: Sequence[int],
        organization: str,
        token: str,
        *,
        services: Sequence[str] = (),
        start_revision: int = 0,
        resume: bool = True,
    ) -> None:
        self.ports = list(ports)
        self.organization = organization
        self.token = token
        self.services = list(services)
        self.revision = start_revision  # where a resumed stream starts
        self.seen = -1  # the highest revision of any message received
        self.resume = resume
        self.messages: list[Any] = []
        self.errors: list[tuple[grpc.StatusCode, str]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from tests.rpcerrors import error_info

        attempt = 0
        while True:
            port = self.ports[attempt % len(self.ports)]
            async with channel_for(port) as channel:
                stub = config_service_pb2_grpc.ConfigServiceStub(channel)
                call = stub.WatchConfig(
                    config_pb2.WatchConfigRequest(
                        organization=self.organization,
                        services=self.services,
                        start_revision=self.revision,
                    ),
                    metadata=(("authorization", f"Bearer {self.token}"),),
                )
                try:
                    async for message in call:
                        await self._record(message)
                    return
                except grpc.aio.AioRpcError as error:
                    reason = ""
                    with contextlib.suppress(AssertionError):
                        reason = error_info(error).reason
                    self.errors.append((error.code(), reason))
                    async with self._changed:
                        self._changed.notify_all()
                    if not self.resume:
                        return
            attempt += 1
            await asyncio.sleep(0.05)

    async def _record(self, message: Any) -> None:
        self.messages.append(message)
        self.seen = max(self.seen, message.revision)
        if message.type != Response.EVENT_TYPE_SNAPSHOT or not message.reset:
            self.revision = max(self.revision, message.revision)
        else:
            self.revision = message.revision
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, revision: int, timeout: float = 10.0) -> None:
        """Until a message at or above ``revision`` has arrived."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.seen >= revision)

    async def wait_for_error(self, timeout: float = 10.0) -> None:
        """Until a stream has ended with an error."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: bool(self.errors))

    def changes(self) -> list[Any]:
        """The CHANGE messages received."""
        return [m for m in self.messages if m.type == Response.EVENT_TYPE_CHANGE]

    def change_revisions(self) -> list[int]:
        """The revisions of the CHANGE messages, in arrival order."""
        return [m.revision for m in self.changes()]


class Replica:
    """A server replica (ConfigService unless ``module`` says otherwise) as a real
    process, killed or stopped at will."""

    def __init__(self, env: dict[str, str], module: str = "config_service") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module],
            env={"PATH": os.environ["PATH"], **env, "LOG_LEVEL": "INFO"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[dict[str, Any]] = []
        self._serving = threading.Event()
        self.port = 0
        self.metrics_port = 0
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._serving.wait(60):
            self.kill()
            raise AssertionError(f"replica did not start: {self.log}")

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.rstrip()}
            self.log.append(entry)
            if entry.get("message") == "serving":
                self.port = int(entry["grpc_port"])
                self.metrics_port = int(entry["metrics_port"] or 0)
                self._serving.set()

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric on the replica's /metrics."""
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Waits until ``check()`` is true (sync or async predicate)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
