"""The SDK's ConfigWatcher against real servers: hot values, changes, failover,
staleness and the last-known-good file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentready import AsyncConfigWatcher, ConfigEvent, ConfigWatcher, WatcherState
from agentready.config.v1 import config_pb2

from servicekit.devstack import free_port
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.test_config_watch import Client
from tests.e2e.watching import Replica, eventually


def new_org() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}"


def state_of(watcher: AsyncConfigWatcher) -> WatcherState:
    """The watcher's state, read afresh (it changes behind the type checker's back)."""
    return watcher.state


async def test_values_are_hot_and_listeners_see_every_revision(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    organization = new_org()
    port = servers["config"].port
    writer = Client(port, organization, keys.token(organization))
    events: list[ConfigEvent] = []
    try:
        await writer.set("threshold", 5)
        await writer.set_text("model", "large")
        watcher = AsyncConfigWatcher(
            f"127.0.0.1:{port}",
            organization,
            token=keys.token(organization, "viewer"),
            on_change=events.append,
        )
        async with watcher:
            assert state_of(watcher) is WatcherState.LIVE
            assert watcher.revision == 2
            assert watcher.get_int("ai", "threshold") == 5
            assert watcher.get_str("ai", "model") == "large"
            assert watcher.get_int("ai", "missing", 7) == 7
            assert watcher.get_int("ai", "model", -1) == -1  # wrong type: the default
            await writer.set("threshold", 6)
            await writer.batch(a=1, b=2)
            await eventually(lambda: watcher.revision == 4)
            assert watcher.get_int("ai", "threshold") == 6
            assert watcher.get_float("ai", "b") == 2.0
        assert state_of(watcher) is WatcherState.STOPPED
        assert [(e.revision, e.snapshot, len(e.changes)) for e in events] == [
            (2, True, 0),
            (3, False, 1),
            (4, False, 2),
        ]
    finally:
        await writer.close()


async def test_flags_are_evaluated_from_memory(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    organization = new_org()
    port = servers["config"].port
    writer = Client(port, organization, keys.token(organization))
    try:
        await writer.stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=organization,
                service="ai",
                key="new-model",
                value=config_pb2.Value(
                    flag_value=config_pb2.FeatureFlag(
                        enabled=True, rollout_percent=0, allow_list=["user-1"]
                    )
                ),
            ),
            metadata=writer.metadata,
        )
        async with AsyncConfigWatcher(
            f"127.0.0.1:{port}", organization, token=keys.token(organization, "viewer")
        ) as watcher:
            assert watcher.flag("ai", "new-model", "user-1").enabled
            assert not watcher.flag("ai", "new-model", "user-2").enabled
            assert watcher.flag("ai", "absent", "user-1").reason == "missing"
    finally:
        await writer.close()


@pytest.fixture
async def two_replicas(server_env: dict[str, str]) -> AsyncIterator[list[Replica]]:
    env = {**server_env, "CONFIG_CHANNEL_PREFIX": f"sdk-{uuid.uuid4().hex[:6]}"}
    replicas = list(await asyncio.gather(*(asyncio.to_thread(Replica, env) for _ in range(2))))
    yield replicas
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in replicas))


@pytest.mark.slow
async def test_the_watcher_fails_over_and_resumes_without_loss(
    two_replicas: list[Replica], keys: Keys
) -> None:
    organization = new_org()
    first, second = two_replicas
    writer = Client(second.port, organization, keys.token(organization))
    events: list[ConfigEvent] = []
    # One target naming both replicas, as a Kubernetes Service would spread them.
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    try:
        async with AsyncConfigWatcher(
            target,
            organization,
            token=keys.token(organization, "viewer"),
            on_change=events.append,
            backoff_initial=0.05,
        ) as watcher:
            for i in range(1, 6):
                await writer.set("k", i)
            await eventually(lambda: watcher.revision == 5)
            await asyncio.to_thread(first.kill)
            for i in range(6, 21):
                await writer.set("k", i)
            await eventually(lambda: watcher.revision == 20, timeout=15)
            assert watcher.get_int("ai", "k") == 20
            assert watcher.last_error is not None  # the stream did break
        changes = [e.revision for e in events if not e.snapshot]
        assert changes == list(range(1, 21))  # every revision once, in order
    finally:
        await writer.close()


@pytest.mark.slow
async def test_values_go_stale_when_the_stream_is_lost_and_live_when_back(
    server_env: dict[str, str], keys: Keys, tmp_path: Path
) -> None:
    organization = new_org()
    port = free_port()
    env = {**server_env, "GRPC_PORT": str(port)}
    replica = await asyncio.to_thread(Replica, env)
    writer = Client(port, organization, keys.token(organization))
    lkg = tmp_path / "config.json"
    try:
        await writer.set("k", 1)
        watcher = AsyncConfigWatcher(
            f"127.0.0.1:{port}",
            organization,
            token=keys.token(organization, "viewer"),
            stale_after=0.5,
            backoff_initial=0.05,
            backoff_max=0.2,
            last_known_good=lkg,
        )
        async with watcher:
            assert state_of(watcher) is WatcherState.LIVE
            await asyncio.to_thread(replica.kill)
            await eventually(lambda: state_of(watcher) is WatcherState.STALE)
            assert watcher.get_int("ai", "k") == 1  # stale, but still served
            replica = await asyncio.to_thread(Replica, env)  # back on the same port
            await writer.set("k", 2)
            await eventually(lambda: watcher.get_int("ai", "k") == 2, timeout=15)
            assert state_of(watcher) is WatcherState.LIVE
            assert watcher.age is not None
        # A cold start with no server at all: the last known good values, marked stale.
        await asyncio.to_thread(replica.stop)
        cold = AsyncConfigWatcher(
            f"127.0.0.1:{port}",
            organization,
            token=keys.token(organization, "viewer"),
            last_known_good=lkg,
        )
        await cold.start(timeout=1)
        try:
            assert state_of(cold) is WatcherState.STALE
            assert (cold.revision, cold.get_int("ai", "k")) == (2, 2)
        finally:
            await cold.stop()
    finally:
        await writer.close()
        await asyncio.to_thread(replica.stop)


async def test_the_thread_backed_watcher_serves_plain_code(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    organization = new_org()
    port = servers["config"].port
    writer = Client(port, organization, keys.token(organization))
    try:
        await writer.set("threshold", 1)

        def read_in_a_thread() -> tuple[int, int]:
            with ConfigWatcher(
                f"127.0.0.1:{port}", organization, token=keys.token(organization, "viewer")
            ) as watcher:
                return watcher.revision, watcher.get_int("ai", "threshold")

        assert await asyncio.to_thread(read_in_a_thread) == (1, 1)
    finally:
        await writer.close()


async def test_a_failing_token_provider_or_file_never_ends_the_stream(
    servers: dict[str, RunningServer], keys: Keys, tmp_path: Path
) -> None:
    # A token file mid-rotation makes the provider raise once; the last-known-good
    # folder cannot be written (a file stands where the folder should be). The watcher
    # keeps streaming through both.
    organization = new_org()
    good = keys.token(organization, "viewer")
    calls = 0

    def token() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("the token file is being replaced")
        return good

    (tmp_path / "blocked").write_text("not a folder")
    port = servers["config"].port
    writer = Client(port, organization, keys.token(organization))
    try:
        async with AsyncConfigWatcher(
            f"127.0.0.1:{port}",
            organization,
            token=token,
            backoff_initial=0.01,
            last_known_good=tmp_path / "blocked" / "lkg.json",
            report_status=False,
        ) as watcher:
            assert calls >= 2
            revision = await writer.set("k", 1)
            await watcher.wait_for_revision(revision, timeout=30)
            assert watcher.get_int("ai", "k") == 1
    finally:
        await writer.close()
