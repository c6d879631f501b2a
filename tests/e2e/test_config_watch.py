"""WatchConfig on one replica: snapshot, live changes, resume, reset, filters,
progress, slow consumers and concurrent writers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from prometheus_client import REGISTRY

from config_service.adapters.postgres import ConfigStore
from config_service.service_layer.maintenance import compact_organization
from servicekit.db import connect_pool
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.watching import Recorder, Replica, Response, channel_for, eventually
from tests.rpcerrors import error_info, field_violations


@pytest.fixture(autouse=True)
async def platform_watchers_settled(servers: dict[str, RunningServer]) -> None:
    """Every server also watches the platform configuration through this ConfigService:
    wait until those streams are open, so counts of streams only move with the test's."""
    await eventually(lambda: all(s.resources.platform.live for s in servers.values()))


def open_streams() -> float:
    """This process's `config_watch_streams` gauge (the servers run in-process)."""
    return REGISTRY.get_sample_value("config_watch_streams") or 0.0


def new_org() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


class Client:
    """A ConfigService client for one organization."""

    def __init__(self, port: int, organization: str, token: str) -> None:
        self.channel = channel_for(port)
        self.stub = config_service_pb2_grpc.ConfigServiceStub(self.channel)
        self.organization = organization
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def set(self, key: str, value: int, service: str = "ai", **kw: object) -> int:
        entry = await self.stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=self.organization,
                service=service,
                key=key,
                value=config_pb2.Value(int_value=value),
                **kw,  # type: ignore[arg-type]
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return int(entry.revision)

    async def set_text(self, key: str, text: str) -> int:
        entry = await self.stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=self.organization,
                service="ai",
                key=key,
                value=config_pb2.Value(string_value=text),
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return int(entry.revision)

    async def batch(self, **values: int) -> int:
        response = await self.stub.BatchSetConfig(
            config_pb2.BatchSetConfigRequest(
                organization=self.organization,
                mutations=[
                    config_pb2.ConfigMutation(
                        service="ai", key=key, set_value=config_pb2.Value(int_value=v)
                    )
                    for key, v in values.items()
                ],
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return int(response.revision)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def org(keys: Keys, servers: dict[str, RunningServer]) -> AsyncIterator[Client]:
    organization = new_org()
    client = Client(servers["config"].port, organization, keys.token(organization))
    yield client
    await client.close()


def recorder(
    servers: dict[str, RunningServer],
    client: Client,
    keys: Keys,
    *,
    services: tuple[str, ...] = (),
    start_revision: int = 0,
    resume: bool = True,
) -> Recorder:
    return Recorder(
        [servers["config"].port],
        client.organization,
        keys.token(client.organization, "viewer"),
        services=services,
        start_revision=start_revision,
        resume=resume,
    )


async def test_snapshot_then_every_change_in_order(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    await org.set("b", 2)
    await org.set("a", 1)
    async with recorder(servers, org, keys) as watch:
        await watch.wait_for(2)
        snapshot = watch.messages[0]
        assert snapshot.type == Response.EVENT_TYPE_SNAPSHOT
        assert snapshot.revision == 2
        assert not snapshot.reset
        assert [(e.key, e.value.int_value) for e in snapshot.entries] == [("a", 1), ("b", 2)]
        assert await org.set("a", 10) == 3
        assert await org.batch(c=3, d=4, e=5) == 4
        assert await org.set("b", 20) == 5
        await watch.wait_for(5)
    assert watch.change_revisions() == [3, 4, 5]
    batch = watch.changes()[1]
    assert sorted(c.key for c in batch.changes) == ["c", "d", "e"]  # one message, not split
    assert watch.changes()[2].changes[0].entry.value.int_value == 20


async def test_resume_from_n_replays_exactly_the_revisions_after_n(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    for i in range(1, 6):
        await org.set(f"k{i}", i)
    async with recorder(servers, org, keys, start_revision=2) as watch:
        await watch.wait_for(5)
        await eventually(lambda: len(watch.messages) >= 4)
        assert watch.change_revisions() == [3, 4, 5]
        types = [m.type for m in watch.messages]
        assert types == [Response.EVENT_TYPE_CHANGE] * 3 + [Response.EVENT_TYPE_PROGRESS]
        assert watch.messages[-1].revision == 5
        await org.set("k6", 6)
        await watch.wait_for(6)
    assert watch.change_revisions() == [3, 4, 5, 6]
    assert all(m.type != Response.EVENT_TYPE_SNAPSHOT for m in watch.messages)


async def test_resume_at_the_current_revision_sends_only_progress(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    await org.set("a", 1)
    async with recorder(servers, org, keys, start_revision=1) as watch:
        await watch.wait_for(1)
        # The next revision marks the end of what the stream sent for the first: only
        # a PROGRESS (no snapshot, no replay of 1) came before it.
        await org.set("a", 2)
        await watch.wait_for(2)
        assert [(m.type, m.revision) for m in watch.messages] == [
            (Response.EVENT_TYPE_PROGRESS, 1),
            (Response.EVENT_TYPE_CHANGE, 2),
        ]


async def test_a_compacted_or_unknown_start_revision_gets_a_reset_snapshot(
    servers: dict[str, RunningServer], org: Client, keys: Keys, database_url: str
) -> None:
    for i in range(1, 11):
        await org.set("counter", i)
    pool = await connect_pool(database_url, schema="config", application_name="test")
    try:
        assert await compact_organization(ConfigStore(pool), org.organization, keep=3) == 7
    finally:
        await pool.close()
    async with recorder(servers, org, keys, start_revision=3, resume=False) as watch:
        await watch.wait_for(10)
        snapshot = watch.messages[0]
        assert snapshot.type == Response.EVENT_TYPE_SNAPSHOT
        assert snapshot.reset
        assert snapshot.revision == 10
        assert snapshot.compact_revision == 8
        assert [e.value.int_value for e in snapshot.entries] == [10]
    # Exactly at the compaction point history is complete: a replay, no reset.
    async with recorder(servers, org, keys, start_revision=7) as watch:
        await watch.wait_for(10)
        assert watch.change_revisions() == [8, 9, 10]
    async with recorder(servers, org, keys, start_revision=99) as watch:
        await watch.wait_for(10)
        assert watch.messages[0].reset


async def test_the_services_filter_is_applied_on_the_server(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    await org.set("x", 1, service="billing")
    async with recorder(servers, org, keys, services=("ai",)) as watch:
        await watch.wait_for(1)
        assert list(watch.messages[0].entries) == []
        await org.set("y", 2, service="billing")
        await org.set("threshold", 3, service="ai")
        await watch.wait_for(3)
    assert watch.change_revisions() == [3]
    assert watch.changes()[0].changes[0].service == "ai"


async def test_an_idle_stream_gets_progress_messages(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    await org.set("a", 1)
    async with channel_for(servers["config"].port) as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        request = config_pb2.WatchConfigRequest(organization=org.organization)
        request.progress_interval.FromSeconds(1)
        call = stub.WatchConfig(
            request, metadata=(("authorization", f"Bearer {keys.token(org.organization)}"),)
        )
        first: Any = await asyncio.wait_for(call.read(), 5)
        second: Any = await asyncio.wait_for(call.read(), 5)
        call.cancel()
    assert first.type == Response.EVENT_TYPE_SNAPSHOT
    assert second.type == Response.EVENT_TYPE_PROGRESS
    assert second.revision == 1


@pytest.mark.parametrize(
    ("token_org", "role", "code", "reason"),
    [
        ("other-org", "owner", grpc.StatusCode.PERMISSION_DENIED, "WRONG_ORGANIZATION"),
        (None, "owner", grpc.StatusCode.PERMISSION_DENIED, "WRONG_ORGANIZATION"),
    ],
)
async def test_a_stream_carries_one_organization_only(
    servers: dict[str, RunningServer],
    org: Client,
    keys: Keys,
    token_org: str | None,
    role: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    async with channel_for(servers["config"].port) as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        call = stub.WatchConfig(
            config_pb2.WatchConfigRequest(organization=org.organization),
            metadata=(("authorization", f"Bearer {keys.token(token_org, role)}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == code
    assert error_info(info.value).reason == reason


async def test_a_token_without_config_read_cannot_watch(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    token = keys.token(org.organization, "owner", scopes=frozenset({"config:write"}))
    async with channel_for(servers["config"].port) as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        call = stub.WatchConfig(
            config_pb2.WatchConfigRequest(organization=org.organization),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(info.value).reason == "MISSING_SCOPE"


@pytest.fixture
async def small_queue_replica(server_env: dict[str, str]) -> AsyncIterator[Replica]:
    """A replica (its own process) whose streams may fall only 4 revisions behind."""
    replica = await asyncio.to_thread(Replica, {**server_env, "CONFIG_WATCH_QUEUE": "4"})
    yield replica
    await asyncio.to_thread(replica.stop)


async def test_a_stalled_consumer_does_not_delay_the_others(
    small_queue_replica: Replica, keys: Keys
) -> None:
    organization = new_org()
    port = small_queue_replica.port
    client = Client(port, organization, keys.token(organization))
    token = keys.token(organization, "viewer")
    big = "x" * 20_000  # a few of these fill the stalled stream's HTTP/2 window
    # The stalled client has a connection of its own (as another pod would) with a
    # fixed 64 KiB window, so the server soon cannot write to it.
    stalled_channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)],
    )
    try:
        async with Recorder([port], organization, token) as fast:
            stalled = config_service_pb2_grpc.ConfigServiceStub(stalled_channel).WatchConfig(
                config_pb2.WatchConfigRequest(organization=organization),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            first: Any = await stalled.read()
            assert first.type == Response.EVENT_TYPE_SNAPSHOT
            await fast.wait_for(0)
            for i in range(40):
                await client.set_text(f"k{i % 3}", big + str(i))
                # The fast stream keeps up with every write while the other stalls.
                await fast.wait_for(i + 1, timeout=5)
            assert fast.change_revisions() == list(range(1, 41))
            # The stalled client now reads: what was buffered, then the overflow.
            received: list[int] = []

            async def read_all() -> None:
                while True:
                    message: Any = await asyncio.wait_for(stalled.read(), 10)
                    received.append(message.revision)

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await read_all()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(info.value).reason == "WATCH_OVERFLOW"
        assert received == list(range(1, len(received) + 1))
        assert len(received) < 40
        # Resuming from its last revision yields exactly the rest.
        async with Recorder([port], organization, token, start_revision=received[-1]) as rest:
            await rest.wait_for(40)
        assert rest.change_revisions() == list(range(received[-1] + 1, 41))
    finally:
        await stalled_channel.close()
        await client.close()


async def test_concurrent_writers_leave_contiguous_revisions_and_lose_no_update(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    writers, writes, counters = 20, 50, 4

    async def writer(n: int) -> int:
        key = f"counter{n % counters}"
        conflicts = 0
        done = 0
        while done < writes:
            try:
                current = await org.stub.GetConfig(
                    config_pb2.GetConfigRequest(
                        organization=org.organization, service="ai", key=key
                    ),
                    metadata=org.metadata,
                    timeout=10,
                )
                value, revision = current.value.int_value, current.revision
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                value, revision = 0, 0
            try:
                await org.set(key, value + 1, expected_revision=revision)
                done += 1
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED:
                    raise  # only a lost race may fail; it is retried
                conflicts += 1
        return conflicts

    async with recorder(servers, org, keys) as watch:
        await watch.wait_for(0)
        await asyncio.gather(*(writer(n) for n in range(writers)))
        total = writers * writes
        await watch.wait_for(total, timeout=30)
    # Every increment landed: no update lost to a race.
    values = []
    for c in range(counters):
        entry = await org.stub.GetConfig(
            config_pb2.GetConfigRequest(
                organization=org.organization, service="ai", key=f"counter{c}"
            ),
            metadata=org.metadata,
        )
        values.append(entry.value.int_value)
    assert sum(values) == total
    # Revisions are contiguous and the watcher saw each exactly once, in order.
    assert watch.change_revisions() == list(range(1, total + 1))
    history: list[int] = []
    token = ""
    while True:
        page = await org.stub.ListConfigHistory(
            config_pb2.ListConfigHistoryRequest(
                organization=org.organization, page_size=1000, page_token=token
            ),
            metadata=org.metadata,
        )
        history += [h.revision for h in page.history_entries]
        token = page.next_page_token
        if not token:
            break
    assert history == list(range(1, total + 1))


async def test_row_level_security_hides_other_organizations(org: Client, database_url: str) -> None:
    await org.set("secret", 42)
    pool = await connect_pool(database_url, schema="config", application_name="test")
    store = ConfigStore(pool)
    try:
        async with store.transaction("someone-else") as conn:
            # No WHERE clause: only the policy stands between tenants here.
            assert await conn.fetchval("SELECT count(*) FROM config.entries") == 0
            assert await conn.fetchval("SELECT count(*) FROM config.history") == 0
        async with store.transaction(org.organization) as conn:
            assert await conn.fetchval("SELECT count(*) FROM config.entries") == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE config.sneaky (id int)")
    finally:
        await pool.close()


async def test_a_burst_of_new_streams_is_all_served(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    # Every pod of a big organization reconnecting at once, e.g. after a replica
    # restart: each stream must get its snapshot, none may be left waiting.
    streams, port = 3000, servers["config"].port
    before = open_streams()
    await org.set("a", 1)
    token = keys.token(org.organization, "viewer")
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(4)
    ]
    calls = [
        config_service_pb2_grpc.ConfigServiceStub(channels[i % 4]).WatchConfig(
            config_pb2.WatchConfigRequest(organization=org.organization),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        for i in range(streams)
    ]
    try:
        firsts: list[Any] = await asyncio.wait_for(
            asyncio.gather(*(call.read() for call in calls)), 60
        )
        assert {(m.type, m.revision) for m in firsts} == {(Response.EVENT_TYPE_SNAPSHOT, 1)}
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    # Clients gone: the server lets go of every stream.
    await eventually(lambda: open_streams() == before, timeout=30)


async def test_stream_metrics_count_streams_and_messages(
    servers: dict[str, RunningServer], org: Client, keys: Keys
) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    snapshots = sample("config_watch_events_sent_total", {"type": "snapshot"})
    changes = sample("config_watch_events_sent_total", {"type": "change"})
    open_before = sample("config_watch_streams")
    async with recorder(servers, org, keys) as watch:
        await watch.wait_for(0)
        assert sample("config_watch_streams") == open_before + 1
        await org.set("a", 1)
        await watch.wait_for(1)
    await eventually(lambda: sample("config_watch_streams") == open_before)
    assert sample("config_watch_events_sent_total", {"type": "snapshot"}) == snapshots + 1
    assert sample("config_watch_events_sent_total", {"type": "change"}) >= changes + 1


async def test_shutdown_ends_streams_at_once_so_clients_move_on(
    server_env: dict[str, str], keys: Keys
) -> None:
    from config_service.app import SPEC as CONFIG
    from servicekit.server import start
    from servicekit.settings import load_settings

    env = {**server_env, "SHUTDOWN_GRACE_SECONDS": "30"}
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    organization = new_org()
    stopping: asyncio.Task[None] | None = None
    try:
        async with Recorder(
            [server.port], organization, keys.token(organization, "viewer"), resume=False
        ) as watch:
            await watch.wait_for(0)
            stopping = asyncio.create_task(server.stop())
            # The server ends the stream itself (with a reason the client can act on)
            # instead of letting it run into the 30 s grace and be cut off.
            await watch.wait_for_error(timeout=10)
        assert watch.errors == [(grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTDOWN")]
    finally:
        if stopping is None:
            await server.stop()
        else:
            await stopping


async def test_a_forged_notification_neither_resets_nor_stalls_streams(
    servers: dict[str, RunningServer],
    org: Client,
    keys: Keys,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Security review finding 9: anyone able to PUBLISH on Redis announced revision
    999999999999 and every stream of the organization was reset. A notification is now
    checked against PostgreSQL before the hub acts on it."""
    caplog.set_level(logging.WARNING, logger="config_service.service_layer.hub")
    async with recorder(servers, org, keys) as watch:
        await watch.wait_for(0)
        await org.set("a", 1)
        await watch.wait_for(1)
        forger = aioredis.Redis.from_url(redis_url)
        try:
            await forger.publish(f"agentready:config:{org.organization}", "999999999999")
        finally:
            await forger.aclose()
        await eventually(lambda: "above the committed" in caplog.text)
        await org.set("a", 2)
        await watch.wait_for(2)
        assert watch.errors == []  # never closed, never reset
        assert [m.revision for m in watch.changes()] == [1, 2]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"services": [f"svc{i}" for i in range(101)]}, "services"),
        ({"progress_interval": {"seconds": -1}}, "progress_interval"),
        ({"progress_interval": {"nanos": -1}}, "progress_interval"),
    ],
)
async def test_a_stream_request_out_of_bounds_is_invalid(
    servers: dict[str, RunningServer], org: Client, keys: Keys, fields: dict[str, Any], field: str
) -> None:
    async with channel_for(servers["config"].port) as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        request = config_pb2.WatchConfigRequest(organization=org.organization, **fields)
        call = stub.WatchConfig(
            request, metadata=(("authorization", f"Bearer {keys.token(org.organization)}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), 10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(raised.value)
