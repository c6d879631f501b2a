"""A database restart under load answers UNAVAILABLE, never INTERNAL, loses nothing
acknowledged, and the SDK's retried writes ride it out without the caller noticing.

PostgreSQL here is a cluster of the test's own (the binaries ``pgserver`` ships), so
the test can restart it (``pg_ctl restart -m fast``, as a failover looks to a client)
without disturbing anything else."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentready import ConfigClient
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

from config_service.app import SPEC as CONFIG
from servicekit.devstack import EmbeddedPostgres
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, eventually
from tests.rpcerrors import error_info

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    embedded = EmbeddedPostgres(tmp_path / "pg")
    url = embedded.start()
    try:
        yield url, embedded
    finally:
        embedded.stop()


def restart(embedded: Any) -> None:
    """``pg_ctl restart -m fast``: every connection is cut, the server comes back.

    Started with posix_spawn, not fork: forking this process (it runs gRPC's threads)
    can crash the child before it gets to exec.
    """
    import pgserver

    server = embedded._server
    pg_ctl = str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl")
    command = [pg_ctl, "-D", str(server.pgdata), "-w", "restart", "-m", "fast"]
    if server.system_user:  # pgserver runs PostgreSQL as its own user under root
        command = [
            shutil.which("runuser") or "/usr/sbin/runuser",
            "-u",
            server.system_user,
            "--",
            *command,
        ]
    with open(os.devnull, "wb") as devnull:
        pid = os.posix_spawn(
            command[0],
            command,
            dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull.fileno(), 1)],
        )
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"pg_ctl restart failed: {status}"


@pytest.fixture
async def config(
    server_env: dict[str, str], own_postgres: tuple[str, Any]
) -> AsyncIterator[RunningServer]:
    url, _ = own_postgres
    env = {**server_env, "DATABASE_URL": url, "METRICS_PORT": "off"}
    env.pop("PLATFORM_TOKEN_FILE")  # no platform watcher: this server stands alone
    running = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    yield running
    await running.stop()


async def test_a_restart_answers_unavailable_and_loses_nothing(
    config: RunningServer, own_postgres: tuple[str, Any], keys: Keys
) -> None:
    _, embedded = own_postgres
    org = f"f{uuid.uuid4().hex[:10]}"
    token = keys.token(org)
    target = f"127.0.0.1:{config.port}"
    acknowledged: list[int] = []
    codes: list[grpc.StatusCode] = []
    reasons: list[str] = []
    restarted = asyncio.Event()
    sdk_errors: list[BaseException] = []

    async def raw_writer(channel: grpc.aio.Channel, name: str) -> None:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        for i in range(400):
            try:
                entry = await stub.SetConfig(
                    config_pb2.SetConfigRequest(
                        organization=org,
                        service="raw",
                        key=name,
                        value=config_pb2.Value(int_value=i),
                        request_id=str(uuid.uuid4()),
                    ),
                    metadata=bearer(token),
                    timeout=10,
                )
                acknowledged.append(entry.revision)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                reasons.append(error_info(exc).reason)
            if restarted.is_set() and i >= 20 and codes:
                return
            await asyncio.sleep(0)

    async def sdk_writer() -> None:
        async with ConfigClient(target, org, token=token) as client:
            i = 0
            while not (restarted.is_set() and i >= 40):
                try:
                    await client.set("sdk", "n", i)
                except Exception as exc:  # the caller must not notice the failover
                    sdk_errors.append(exc)
                    return
                i += 1

    async with grpc.aio.insecure_channel(target) as channel:
        writers = [asyncio.create_task(raw_writer(channel, f"k{n}")) for n in range(4)]
        writers.append(asyncio.create_task(sdk_writer()))
        await eventually(lambda: asyncio.sleep(0, len(acknowledged)), lambda n: n >= 20, 60)
        await asyncio.to_thread(restart, embedded)
        restarted.set()
        await asyncio.wait_for(asyncio.gather(*writers), 120)

        assert sdk_errors == []
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, codes
        assert set(reasons) <= {"DATABASE_UNAVAILABLE"}
        # Every acknowledged write is in the history, under the revision it was given.
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        recorded: set[int] = set()
        page_token = ""
        while True:
            page = await stub.ListConfigHistory(
                config_pb2.ListConfigHistoryRequest(
                    organization=org, page_size=1000, page_token=page_token
                ),
                metadata=bearer(token),
                timeout=10,
            )
            recorded |= {entry.revision for entry in page.history_entries}
            page_token = page.next_page_token
            if not page_token:
                break
        assert acknowledged
        assert set(acknowledged) <= recorded
