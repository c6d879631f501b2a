"""ConfigService scaled out: replicas as real processes sharing PostgreSQL and a Redis
of the test's own, which the tests stop and start."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servicekit.devstack import EmbeddedRedis, port_open
from tests.conftest import Keys
from tests.e2e.test_config_watch import Client
from tests.e2e.watching import Recorder, Replica, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own, on a free port."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def replicas(
    server_env: dict[str, str], redis_server: EmbeddedRedis
) -> AsyncIterator[list[Replica]]:
    """Three ConfigService replicas on that Redis, with a channel prefix of their own."""
    env = {
        **server_env,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "CONFIG_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        # Polling is the safety net; keep it slow so these tests see pub/sub at work.
        "CONFIG_POLL_INTERVAL_SECONDS": "30",
        "CONFIG_FALLBACK_POLL_SECONDS": "0.2",
    }
    started = await asyncio.gather(*(asyncio.to_thread(Replica, env) for _ in range(3)))
    yield list(started)
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in started))


def new_org() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


async def fallback_modes(replicas: list[Replica]) -> list[float]:
    """Each replica's `config_notification_fallback` gauge (1: polling, 0: pub/sub)."""
    return [await asyncio.to_thread(r.metric, "config_notification_fallback") for r in replicas]


async def all_subscribed(replicas: list[Replica], timeout: float = 10.0) -> None:
    async def check() -> bool:
        return await fallback_modes(replicas) == [0.0] * len(replicas)

    await eventually(check, timeout=timeout)


async def test_a_write_on_one_replica_reaches_watchers_on_all(
    replicas: list[Replica], keys: Keys
) -> None:
    organization = new_org()
    await all_subscribed(replicas)
    token = keys.token(organization, "viewer")
    watchers = [Recorder([r.port], organization, token) for r in replicas]
    for watcher in watchers:
        await watcher.__aenter__()
    writer = Client(replicas[0].port, organization, keys.token(organization))
    try:
        for watcher in watchers:
            await watcher.wait_for(0)
        for i in range(1, 6):
            await writer.set("threshold", i)
        for watcher in watchers:
            # Poll interval is 30 s: arriving within 5 s means pub/sub carried it.
            await watcher.wait_for(5, timeout=5)
            assert watcher.change_revisions() == [1, 2, 3, 4, 5]
    finally:
        for watcher in watchers:
            await watcher.stop()
        await writer.close()


async def test_redis_down_mid_stream_loses_nothing_and_push_resumes(
    replicas: list[Replica], redis_server: EmbeddedRedis, keys: Keys
) -> None:
    organization = new_org()
    await all_subscribed(replicas)
    token = keys.token(organization, "viewer")
    watchers = [Recorder([r.port], organization, token) for r in replicas[1:]]
    for watcher in watchers:
        await watcher.__aenter__()
    writer = Client(replicas[0].port, organization, keys.token(organization))
    try:
        for watcher in watchers:
            await watcher.wait_for(0)
        await writer.set("k", 1)
        redis_server.stop()  # the server itself, not a mock
        assert not port_open("127.0.0.1", redis_server.port)
        # Writes still succeed while Redis is down...
        for i in range(2, 12):
            assert await writer.set("k", i) == i
        # ...and every watcher gets every revision once, in order, by polling.
        for watcher in watchers:
            await watcher.wait_for(11, timeout=10)
        assert await fallback_modes(replicas) == [1.0, 1.0, 1.0]
        # Redis comes back on the same port: the replicas resubscribe, push resumes.
        redis_server.start()
        await all_subscribed(replicas, timeout=15)
        for i in range(12, 15):
            await writer.set("k", i)
        for watcher in watchers:
            await watcher.wait_for(14, timeout=10)
            assert watcher.change_revisions() == list(range(1, 15))
            assert watcher.errors == []  # the streams themselves never broke
    finally:
        for watcher in watchers:
            await watcher.stop()
        await writer.close()


async def test_a_replica_killed_mid_stream_loses_nothing(
    replicas: list[Replica], keys: Keys
) -> None:
    organization = new_org()
    token = keys.token(organization, "viewer")
    victim, survivor, writer_replica = replicas
    # The watcher starts on the victim and fails over to the survivor, resuming from
    # its last revision, as the SDK does.
    watcher = Recorder([victim.port, survivor.port], organization, token)
    writer = Client(writer_replica.port, organization, keys.token(organization))
    await watcher.__aenter__()
    try:
        await watcher.wait_for(0)
        for i in range(1, 6):
            await writer.set("k", i)
        await watcher.wait_for(5)

        killed = asyncio.Event()

        async def keep_writing() -> None:
            for i in range(6, 31):
                if i == 16:
                    await killed.wait()  # the rest is written after the kill
                await writer.set("k", i)

        writing = asyncio.create_task(keep_writing())
        await watcher.wait_for(15)  # the stream on the victim is live ...
        await asyncio.to_thread(victim.kill)  # ... when its replica dies
        killed.set()
        await writing
        await watcher.wait_for(30, timeout=15)
        assert watcher.errors, "the stream on the killed replica should have failed"
        assert watcher.change_revisions() == list(range(1, 31))  # no gap, no duplicate
    finally:
        await watcher.stop()
        await writer.close()


async def test_a_lost_notification_is_filled_from_postgresql(
    replicas: list[Replica], server_env: dict[str, str], keys: Keys
) -> None:
    organization = new_org()
    await all_subscribed(replicas)
    # A replica whose notifications never reach Redis: its revision's message is lost.
    mute = await asyncio.to_thread(
        Replica,
        {**server_env, "REDIS_URL": "redis://127.0.0.1:1/0", "CONFIG_POLL_INTERVAL_SECONDS": "30"},
    )
    watcher = Recorder([replicas[2].port], organization, keys.token(organization, "viewer"))
    await watcher.__aenter__()
    lost = Client(mute.port, organization, keys.token(organization))
    heard = Client(replicas[0].port, organization, keys.token(organization))
    try:
        await watcher.wait_for(0)
        # Nobody tells the watcher's replica of revision 1 (its publisher has no Redis,
        # and the replicas poll only every 30 s) ...
        assert await lost.set("k", 1) == 1
        assert await heard.set("k", 2) == 2
        # Revision 2 arrives by pub/sub, reveals the gap, and 1 is read from PostgreSQL
        # too - long before the 30 s poll would have found it.
        await watcher.wait_for(2, timeout=5)
        assert watcher.change_revisions() == [1, 2]
    finally:
        await watcher.stop()
        await lost.close()
        await heard.close()
        await asyncio.to_thread(mute.stop)
