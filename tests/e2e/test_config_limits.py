"""No write may break a watcher: whatever a write accepts, a client with default
settings (4 MiB messages) in any language receives, live, replayed, in a snapshot and
in a list; an organization is bounded (keys, bytes) and a write past a bound is refused
with the usage named, writing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.watcher import AsyncConfigWatcher, ConfigEvent
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from config_service import metrics
from config_service.app import SPEC as CONFIG
from servicekit.devstack import REPO_ROOT
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, new_slug, rpc_error
from tests.rpcerrors import error_info, status_of

Response = config_pb2.WatchConfigResponse
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
NODE_CLIENT = REPO_ROOT / "tests" / "e2e" / "clients" / "config_client.js"


def value(size: int) -> config_pb2.Value:
    return config_pb2.Value(string_value="x" * size)


async def fill(stub: Any, org: str, md: Any, keys: range, size: int) -> int:
    """Sets ``k<i>`` for every i in ``keys`` to a string of ``size`` bytes, in batches;
    the last revision."""
    revision = 0
    numbers = list(keys)
    batch = max(1, min(100, 1_000_000 // size))  # requests of at most about 1 MB
    for first in range(0, len(numbers), batch):
        answer = await stub.BatchSetConfig(
            config_pb2.BatchSetConfigRequest(
                organization=org,
                mutations=[
                    config_pb2.ConfigMutation(service="app", key=f"k{i:04}", set_value=value(size))
                    for i in numbers[first : first + batch]
                ],
            ),
            metadata=md,
            timeout=30,
        )
        revision = answer.revision
    return revision


async def first_whole(stub: Any, org: str, md: Any, start_revision: int) -> list[Any]:
    """The messages of the first whole SNAPSHOT or CHANGE of a stream (its fragments)."""
    call = stub.WatchConfig(
        config_pb2.WatchConfigRequest(organization=org, start_revision=start_revision),
        metadata=md,
    )
    parts: list[Any] = []
    try:
        async for message in call:
            if message.type == Response.EVENT_TYPE_PROGRESS:
                continue
            parts.append(message)
            if not message.fragment:
                return parts
    finally:
        call.cancel()
    raise AssertionError("the stream ended before a whole message")


def check_parts(parts: list[Any]) -> None:
    """Fragments of one snapshot or revision: same type and revision, only the last one
    not marked, each far below a default client's limit."""
    assert all(p.fragment for p in parts[:-1])
    assert not parts[-1].fragment
    assert {(p.type, p.revision, p.reset) for p in parts} == {
        (parts[0].type, parts[0].revision, parts[0].reset)
    }
    assert max(p.ByteSize() for p in parts) < DEFAULT_MAX_MESSAGE // 2


async def list_all(stub: Any, org: str, md: Any, page_size: int) -> tuple[list[str], int]:
    keys: list[str] = []
    token, pages = "", 0
    while True:
        page = await stub.ListConfigs(
            config_pb2.ListConfigsRequest(organization=org, page_size=page_size, page_token=token),
            metadata=md,
            timeout=30,
        )
        assert page.ByteSize() < DEFAULT_MAX_MESSAGE // 2
        keys += [c.key for c in page.configs]
        pages += 1
        token = page.next_page_token
        if not token:
            return keys, pages


async def node_client(port: int, org: str, token: str, start_revision: int) -> dict[str, Any]:
    """What the Node client (default @grpc/grpc-js settings) received."""
    node = shutil.which("node")
    if node is None or not (REPO_ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("Node.js or @grpc/grpc-js is missing (`make test` installs the latter)")
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_CLIENT),
        f"127.0.0.1:{port}",
        org,
        str(start_revision),
        "1000",
        env={**os.environ, "AGENTREADY_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode() + err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


def limit_error(error: grpc.aio.AioRpcError, reason: str) -> dict[str, str]:
    info = error_info(error)
    assert info.reason == reason
    # A limit of what is stored: no RetryInfo, so no client waits and retries in vain.
    for packed in status_of(error).details:
        assert not packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return dict(info.metadata)


@pytest.fixture(scope="module")
async def stub(servers: dict[str, RunningServer]) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        yield config_service_pb2_grpc.ConfigServiceStub(channel)


async def test_an_organization_filled_to_its_default_limits_stays_receivable(
    servers: dict[str, RunningServer], stub: Any, keys: Keys
) -> None:
    port = servers["config"].port
    org = new_slug("full")
    token = keys.token(org)
    md = bearer(token)
    # 1,000 keys (the default limit) of about 1 KiB: about 1 MiB, the default limit.
    filled = await fill(stub, org, md, range(1000), 1000)
    usage = await stub.GetConfigUsage(
        config_pb2.GetConfigUsageRequest(organization=org), metadata=md
    )
    assert (usage.keys, usage.max_keys, usage.max_bytes) == (1000, 1000, 1024 * 1024)
    assert 1000 * 1000 < usage.bytes <= usage.max_bytes
    assert usage.revision == filled

    # A new key is refused, naming the limit and the usage; nothing is written.
    err = await rpc_error(
        stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org, service="app", key="extra", value=value(1)
            ),
            metadata=md,
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    named = limit_error(err, "ORGANIZATION_KEY_LIMIT")
    assert (named["used_keys"], named["limit_keys"]) == ("1000", "1000")
    # So is a value that would take the organization past its bytes.
    err = await rpc_error(
        stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org, service="app", key="k0000", value=value(60_000)
            ),
            metadata=md,
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    named = limit_error(err, "ORGANIZATION_SIZE_LIMIT")
    assert named["used_bytes"] == str(usage.bytes)
    assert named["limit_bytes"] == str(1024 * 1024)
    after = await stub.GetConfigUsage(
        config_pb2.GetConfigUsageRequest(organization=org), metadata=md
    )
    assert (after.keys, after.bytes, after.revision) == (1000, usage.bytes, filled)
    got = await stub.GetConfig(
        config_pb2.GetConfigRequest(organization=org, service="app", key="k0000"), metadata=md
    )
    assert len(got.value.string_value) == 1000

    # Every way of reading it works with the default 4 MiB limit: a snapshot...
    parts = await first_whole(stub, org, md, 0)
    check_parts(parts)
    assert (parts[0].type, parts[0].revision) == (Response.EVENT_TYPE_SNAPSHOT, filled)
    assert [e.key for p in parts for e in p.entries] == [f"k{i:04}" for i in range(1000)]
    # ... a resumed stream (the replayed revisions), a reset snapshot, and a list.
    replayed = await first_whole(stub, org, md, 1)
    assert (replayed[0].type, replayed[0].revision) == (Response.EVENT_TYPE_CHANGE, 2)
    reset = await first_whole(stub, org, md, 10**9)
    check_parts(reset)
    assert reset[0].reset
    assert sum(len(p.entries) for p in reset) == 1000
    listed, _ = await list_all(stub, org, md, 1000)
    assert len(listed) == 1000
    # And from another language, with that runtime's defaults.
    node = await node_client(port, org, token, 0)
    assert (node["type"], node["revision"], node["entries"]) == (
        "EVENT_TYPE_SNAPSHOT",
        filled,
        1000,
    )
    assert node["same_revision"]
    assert node["listed"] == 1000
    node = await node_client(port, org, token, 10**9)
    assert node["reset"]
    assert node["entries"] == 1000

    # A write that shrinks the organization always passes.
    await stub.DeleteConfig(
        config_pb2.DeleteConfigRequest(organization=org, service="app", key="k0999"), metadata=md
    )
    usage = await stub.GetConfigUsage(
        config_pb2.GetConfigUsageRequest(organization=org), metadata=md
    )
    assert usage.keys == 999


async def test_a_revision_of_a_thousand_changes_arrives_whole(
    servers: dict[str, RunningServer], stub: Any, keys: Keys
) -> None:
    port = servers["config"].port
    org = new_slug("big")
    token = keys.token(org)
    md = bearer(token)
    first = await fill(stub, org, md, range(1000), 1000)
    second = await fill(stub, org, md, range(1000), 999)
    events: list[ConfigEvent] = []
    rolled_back = asyncio.Event()

    def listen(event: ConfigEvent) -> None:
        events.append(event)
        if event.revision == second + 1:
            rolled_back.set()

    async with AsyncConfigWatcher(f"127.0.0.1:{port}", org, token=token) as watcher:
        watcher.add_listener(listen)
        resumed = stub.WatchConfig(
            config_pb2.WatchConfigRequest(organization=org, start_revision=second), metadata=md
        )
        assert (await resumed.read()).type == Response.EVENT_TYPE_PROGRESS  # caught up
        # One revision restoring 1,000 values of 1 KiB: more than one message holds.
        rollback = await stub.RollbackConfig(
            config_pb2.RollbackConfigRequest(organization=org, revision=first), metadata=md
        )
        assert (rollback.revision, len(rollback.changes)) == (second + 1, 1000)
        parts: list[Any] = []
        while not parts or parts[-1].fragment:
            message = await resumed.read()
            if message.type != Response.EVENT_TYPE_PROGRESS:
                parts.append(message)
        resumed.cancel()
        check_parts(parts)
        assert len(parts) > 1
        assert parts[0].type == Response.EVENT_TYPE_CHANGE
        assert parts[0].revision == rollback.revision
        changes = [c for p in parts for c in p.changes]
        assert [c.key for c in changes] == [f"k{i:04}" for i in range(1000)]
        assert {len(c.entry.value.string_value) for c in changes} == {1000}
        # The SDK applies the revision once, whole: no listener saw a part of it.
        await asyncio.wait_for(rolled_back.wait(), 30)
        assert {len(e.value.string_value) for e in watcher.entries().values()} == {1000}
        assert (events[-1].revision, len(events[-1].changes)) == (rollback.revision, 1000)
        assert all(len(e.changes) in (0, 100, 1000) for e in events)


async def test_concurrent_writers_at_the_limit_cannot_overshoot(stub: Any, keys: Keys) -> None:
    org = new_slug("race")
    md = bearer(keys.token(org))
    await fill(stub, org, md, range(990), 10)

    async def add(i: int) -> str:
        try:
            await stub.SetConfig(
                config_pb2.SetConfigRequest(
                    organization=org, service="app", key=f"new{i}", value=value(10)
                ),
                metadata=md,
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name} {error_info(error).reason}"
        return "OK"

    outcomes = await asyncio.gather(*(add(i) for i in range(25)))
    assert sorted(outcomes) == ["OK"] * 10 + ["RESOURCE_EXHAUSTED ORGANIZATION_KEY_LIMIT"] * 15
    usage = await stub.GetConfigUsage(
        config_pb2.GetConfigUsageRequest(organization=org), metadata=md
    )
    listed, _ = await list_all(stub, org, md, 1000)
    assert usage.keys == len(listed) == 1000


@contextlib.asynccontextmanager
async def config_server(
    server_env: dict[str, str], **settings: str
) -> AsyncIterator[RunningServer]:
    """A ConfigService of its own, with ``settings`` on top of the test environment."""
    env = {**server_env, "METRICS_PORT": "off", **settings}
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def roomy(server_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    """A ConfigService whose organizations may store 8 MiB: more than one message."""
    async with config_server(server_env, CONFIG_MAX_ORGANIZATION_BYTES=str(8 << 20)) as server:
        yield server


async def test_a_snapshot_larger_than_a_message_is_received_whole(
    roomy: RunningServer, keys: Keys
) -> None:
    # The case that broke every watcher of an organization: 80 values of 60 kB.
    org = new_slug("wide")
    token = keys.token(org)
    md = bearer(token)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{roomy.port}") as channel:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        filled = await fill(stub, org, md, range(80), 60_000)
        parts = await first_whole(stub, org, md, 0)
        check_parts(parts)
        assert len(parts) >= 5  # 4.8 MB cut in pieces of about 1 MiB
        assert sum(len(p.entries) for p in parts) == 80
        listed, pages = await list_all(stub, org, md, 1000)
        assert len(listed) == 80
        assert pages >= 3  # pages end before 2 MiB
    async with AsyncConfigWatcher(f"127.0.0.1:{roomy.port}", org, token=token) as watcher:
        assert watcher.revision == filled
        assert len(watcher.entries()) == 80
        assert len(watcher.get_str("app", "k0042")) == 60_000
    node = await node_client(roomy.port, org, token, 0)
    assert (node["entries"], node["same_revision"]) == (80, True)
    assert node["fragments"] >= 5
    assert node["listed"] == 80


async def test_a_stream_nobody_reads_does_not_hold_up_its_neighbours_on_a_connection(
    roomy: RunningServer, keys: Keys
) -> None:
    # Two watchers on one HTTP/2 connection, in a process of their own: one stops
    # reading while megabytes of changes pile up for it; the other must get every
    # revision of its organization all the same.
    stalled, live = new_slug("stall"), new_slug("live")
    stalled_md, live_md = bearer(keys.token(stalled)), bearer(keys.token(live))
    rounds = 150
    async with grpc.aio.insecure_channel(f"127.0.0.1:{roomy.port}") as channel:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO_ROOT / "tests" / "e2e" / "clients" / "slow_reader.py"),
            str(roomy.port),
            stalled,
            live,
            str(rounds),
            env={
                **os.environ,
                "AGENTREADY_TOKEN_STALLED": keys.token(stalled),
                "AGENTREADY_TOKEN_LIVE": keys.token(live),
            },
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), 60)
            assert ready.split() == [b"ready", b"0"]
            for i in range(rounds):
                # 60 kB for the stream nobody reads (9 MB in all, beyond any flow
                # control window), then one small change for the live one.
                await stub.SetConfig(
                    config_pb2.SetConfigRequest(
                        organization=stalled, service="app", key="k", value=value(60_000 + i)
                    ),
                    metadata=stalled_md,
                )
                await stub.SetConfig(
                    config_pb2.SetConfigRequest(
                        organization=live, service="app", key="n", value=value(i + 1)
                    ),
                    metadata=live_md,
                )
            out = await asyncio.wait_for(process.stdout.read(), 60)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert out.split(b"\n")[:-1] == [b"change %d" % r for r in range(1, rounds + 1)]


async def test_purging_an_organization_drops_its_usage_gauges(stub: Any, keys: Keys) -> None:
    org = new_slug("gauge")
    gone = new_slug("gauge")
    md = bearer(keys.token(org))
    await stub.SetConfig(
        config_pb2.SetConfigRequest(organization=org, service="ai", key="k", value=value(10)),
        metadata=md,
    )

    def keys_shown(organization: str) -> float | None:
        return REGISTRY.get_sample_value("config_organization_keys", {"organization": organization})

    assert keys_shown(org) == 1
    platform = bearer(keys.token(None, "operator", scopes=frozenset({"config:purge"})))
    await stub.PurgeConfig(config_pb2.PurgeConfigRequest(organization=org), metadata=platform)
    assert keys_shown(org) is None
    assert REGISTRY.get_sample_value("config_organization_bytes", {"organization": org}) is None

    # A series this replica shows for an organization another replica purged goes at
    # the next maintenance round, which keeps those still configured.
    metrics.show_usage(gone, 3, 30)
    still = new_slug("gauge")
    metrics.show_usage(still, 1, 10)
    metrics.keep_usage_of({still})
    assert keys_shown(gone) is None
    assert keys_shown(still) == 1
    metrics.forget_usage([still])


@pytest.fixture(scope="module")
async def few_clients(server_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    """A ConfigService whose organizations may have three reporting clients."""
    async with config_server(server_env, CONFIG_MAX_ORGANIZATION_CLIENTS="3") as server:
        yield server


async def test_reporting_clients_are_capped_per_organization(
    few_clients: RunningServer, keys: Keys
) -> None:
    org = new_slug("fleet")
    md = bearer(keys.token(org, "viewer"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{few_clients.port}") as channel:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)

        async def report(organization: str, client_id: str, revision: int = 1) -> None:
            await stub.ReportConfigStatus(
                config_pb2.ReportConfigStatusRequest(
                    organization=organization, client_id=client_id, applied_revision=revision
                ),
                metadata=bearer(keys.token(organization, "viewer")),
            )

        for i in range(3):
            await report(org, f"pod-{i}")
        err = await rpc_error(report(org, "pod-3"), grpc.StatusCode.RESOURCE_EXHAUSTED)
        info = error_info(err)
        assert info.reason == "CLIENT_LIMIT"
        assert info.metadata["limit_clients"] == "3"
        await report(org, "pod-0", 2)  # the clients known keep reporting
        listed = await stub.ListConfigClients(
            config_pb2.ListConfigClientsRequest(organization=org), metadata=md
        )
        assert {c.client_id: c.applied_revision for c in listed.clients} == {
            "pod-0": 2,
            "pod-1": 1,
            "pod-2": 1,
        }
        await report(new_slug("fleet"), "pod-3")  # another organization has room of its own
