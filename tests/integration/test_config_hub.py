"""The fan-out hub against a real PostgreSQL: one read per revision batch for any
number of streams, gaps filled in order, and streams reset when history is gone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from config_service.adapters.postgres import ConfigStore
from config_service.app import SPEC
from config_service.domain.model import Mutation
from config_service.domain.values import ConfigValue, ValueType
from config_service.entrypoints.convert import WatchMessages
from config_service.service_layer.hub import RESET, Hub
from config_service.service_layer.maintenance import compact_organization
from config_service.service_layer.writes import ConfigWriter
from servicekit.db import connect_pool, migrate


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConfigStore]:
    pool = await connect_pool(database_url, schema="config", application_name="test")
    async with pool.acquire() as conn:
        await migrate(conn, "config", SPEC.migrations)
    yield ConfigStore(pool)
    await pool.close()


def fetches() -> float:
    return REGISTRY.get_sample_value("config_feed_fetches_total") or 0.0


async def write(writer: ConfigWriter, organization: str, value: int) -> int:
    commit = await writer.apply(
        organization,
        [Mutation("ai", "k", ConfigValue(ValueType.INT, value))],
        actor="test",
        reason="",
        request=None,
    )
    return commit.revision


async def test_many_streams_one_read_per_batch_and_gaps_filled_in_order(
    store: ConfigStore,
) -> None:
    organization = f"h-{uuid.uuid4().hex[:8]}"
    hub = Hub(store, WatchMessages().event)
    # Nobody tells the hub about these commits: as if every notification were lost.
    writer = ConfigWriter(store, lambda event: None)
    watchers = [await hub.watch(organization, None) for _ in range(50)]
    for value in range(1, 4):
        await write(writer, organization, value)
    before = fetches()
    hub.notify(organization, 3)  # one late notification reveals revisions 1..3
    received: list[list[Any]] = []
    for watcher in watchers:
        received.append([(await watcher.get())[0] for _ in range(3)])
    assert received == [[1, 2, 3]] * 50
    assert fetches() == before + 1  # one PostgreSQL read for 50 streams and 3 revisions
    for watcher in watchers:
        hub.unwatch(watcher)
    await hub.close()


@pytest.mark.parametrize("keep", [2, 0])  # some of the missed revisions left, or none
async def test_streams_reset_when_the_history_they_need_is_compacted(
    store: ConfigStore, keep: int
) -> None:
    organization = f"h-{uuid.uuid4().hex[:8]}"
    hub = Hub(store, WatchMessages().event)
    writer = ConfigWriter(store, lambda event: None)
    watcher = await hub.watch(organization, None)
    for value in range(1, 6):
        await write(writer, organization, value)
    assert await compact_organization(store, organization, keep=keep) == 5 - keep
    hub.notify(organization, 5)
    # Revisions the stream never got are gone: it must start over, not skip them.
    assert await watcher.get() is RESET
    hub.unwatch(watcher)
    await hub.close()


async def test_revisions_written_here_reach_local_streams_without_a_read(
    store: ConfigStore,
) -> None:
    organization = f"h-{uuid.uuid4().hex[:8]}"
    hub = Hub(store, WatchMessages().event)
    writer = ConfigWriter(store, hub.committed)
    watcher = await hub.watch(organization, None)
    before = fetches()
    revisions = [await write(writer, organization, value) for value in range(1, 4)]
    received = [await watcher.get() for _ in revisions]
    assert [revision for revision, _ in received] == revisions == [1, 2, 3]
    # The messages carry the values written, in order.
    values = [messages[0].changes[0].entry.value.int_value for _, messages in received]
    assert values == [1, 2, 3]
    assert fetches() == before  # handed over by the writer, never read back
    hub.unwatch(watcher)
    await hub.close()


async def test_a_revision_written_here_after_a_gap_waits_for_the_gap(
    store: ConfigStore,
) -> None:
    organization = f"h-{uuid.uuid4().hex[:8]}"
    hub = Hub(store, WatchMessages().event)
    watcher = await hub.watch(organization, None)
    # Revision 1 is written by another replica whose notification is lost; revision 2
    # is written here.
    await write(ConfigWriter(store, lambda event: None), organization, 1)
    await write(ConfigWriter(store, hub.committed), organization, 2)
    assert [(await watcher.get())[0] for _ in range(2)] == [1, 2]
    hub.unwatch(watcher)
    await hub.close()


class FailingOnce(ConfigStore):
    """The store, with its next one-statement connection failing (PostgreSQL away)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.failures = 0
        self.failed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def single(self) -> AsyncIterator[asyncpg.Connection]:
        if self.failures:
            self.failures -= 1
            self.failed.set()
            raise ConnectionResetError("PostgreSQL went away")
        async with super().single() as conn:
            yield conn


async def test_a_catch_up_that_failed_is_tried_again_at_the_next_notification(
    store: ConfigStore,
) -> None:
    organization = f"h-{uuid.uuid4().hex[:8]}"
    failing = FailingOnce(store.pool)
    hub = Hub(failing, WatchMessages().event)
    watcher = await hub.watch(organization, None)
    await write(ConfigWriter(store, lambda event: None), organization, 1)
    failing.failures = 1
    hub.notify(organization, 1)  # its catch-up fails
    # The poller (or Redis) tells of the same revision again: that is the next attempt,
    # even though the revision known to exist did not move.
    async with asyncio.timeout(10):
        await failing.failed.wait()
    hub.notify(organization, 1)
    async with asyncio.timeout(10):
        assert (await watcher.get())[0] == 1
    hub.unwatch(watcher)
    await hub.close()
