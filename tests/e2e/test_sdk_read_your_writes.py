"""Read-your-writes across ConfigService replicas: a write through one replica, then
``wait_for_revision`` on a watcher of another, and the watcher holds the new value,
every time (asyncio and sync watchers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from agentready import AsyncConfigWatcher, ConfigClient, ConfigWatcher, RevisionRefused

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.watching import Replica

ROUNDS = 1000


@pytest.fixture
async def two_replicas(server_env: dict[str, str]) -> AsyncIterator[list[Replica]]:
    env = {**server_env, "CONFIG_CHANNEL_PREFIX": f"ryw-{uuid.uuid4().hex[:6]}"}
    replicas = list(await asyncio.gather(*(asyncio.to_thread(Replica, env) for _ in range(2))))
    yield replicas
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in replicas))


@pytest.mark.slow
async def test_a_write_is_read_back_from_another_replica_after_wait_for_revision(
    two_replicas: list[Replica], keys: Keys
) -> None:
    organization = f"ryw-{uuid.uuid4().hex[:8]}"
    writing, reading = two_replicas
    reader_token = keys.token(organization, "viewer")
    # Rollout reports off: this test is about reads (and a report per revision per
    # watcher would double its calls on a shared two-core machine).
    sync_watcher = ConfigWatcher(
        f"127.0.0.1:{reading.port}", organization, token=reader_token, report_status=False
    )
    await asyncio.to_thread(sync_watcher.start)
    try:
        async with (
            ConfigClient(
                f"127.0.0.1:{writing.port}", organization, token=keys.token(organization)
            ) as client,
            AsyncConfigWatcher(
                f"127.0.0.1:{reading.port}", organization, token=reader_token, report_status=False
            ) as watcher,
        ):
            stale = []
            for i in range(1, ROUNDS + 1):
                entry = await client.set("ai", "counter", i)
                assert entry.revision == i
                assert await watcher.wait_for_revision(entry.revision) >= i
                if watcher.get_int("ai", "counter") != i:
                    stale.append(i)
                if i % 10 == 0:  # the sync face, at a tenth of the rounds (a thread hop each)
                    await asyncio.to_thread(sync_watcher.wait_for_revision, entry.revision)
                    if sync_watcher.get_int("ai", "counter") != i:
                        stale.append(-i)
            assert stale == []
            # A revision not written yet is not waited for forever.
            with pytest.raises(TimeoutError):
                await watcher.wait_for_revision(ROUNDS + 1, timeout=0.2)
            assert await watcher.wait_for_revision(1) == ROUNDS  # already applied: at once
    finally:
        await asyncio.to_thread(sync_watcher.stop)


async def test_waiting_for_a_refused_revision_says_so(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    organization = f"ryw-{uuid.uuid4().hex[:8]}"

    def at_most_five(entries: Mapping[tuple[str, str], Any]) -> None:
        entry = entries.get(("ai", "k"))
        if entry is not None and entry.value.int_value > 5:
            raise ValueError("k above 5")

    target = f"127.0.0.1:{servers['config'].port}"
    async with (
        ConfigClient(target, organization, token=keys.token(organization)) as client,
        AsyncConfigWatcher(
            target,
            organization,
            token=keys.token(organization, "viewer"),
            validator=at_most_five,
            report_status=False,
        ) as watcher,
    ):
        accepted = await client.set("ai", "k", 3)
        assert await watcher.wait_for_revision(accepted.revision) == accepted.revision
        refused = await client.set("ai", "k", 9)
        with pytest.raises(RevisionRefused) as error:
            await watcher.wait_for_revision(refused.revision)
        assert error.value.rejected_revision == refused.revision
        assert "k above 5" in error.value.reason
        assert watcher.get_int("ai", "k") == 3  # still the last good value
