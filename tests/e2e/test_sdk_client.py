"""The SDK's ConfigClient against a real server: Python types in and out, typed
errors with the server's details, paging, and retries that write once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from agentready import (
    DELETE,
    ConfigClient,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from agentready.config.v1 import config_pb2

from servicekit.devstack import free_port
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.proxy import AnswerCuttingProxy
from tests.e2e.watching import Replica


def client_for(servers: dict[str, RunningServer], keys: Keys, role: str = "owner") -> ConfigClient:
    organization = f"cli-{uuid.uuid4().hex[:8]}"
    return ConfigClient(
        f"127.0.0.1:{servers['config'].port}", organization, token=keys.token(organization, role)
    )


async def test_python_values_round_trip(servers: dict[str, RunningServer], keys: Keys) -> None:
    async with client_for(servers, keys) as client:
        values = {
            "text": "large",
            "count": 3,
            "ratio": 0.75,
            "on": True,
            "limits": {"rpm": 600.0, "tiers": ["a", "b"]},
        }
        for key, value in values.items():
            await client.set("ai", key, value, reason="test")
        assert {k: await client.get_value("ai", k) for k in values} == values
        assert await client.get_value("ai", "missing", "fallback") == "fallback"
        response = await client.batch({("ai", "count"): 4, ("ai", "on"): DELETE})
        assert response.revision == len(values) + 1
        assert await client.get_value("ai", "count") == 4
        with pytest.raises(NotFound):
            await client.get("ai", "on")
        history = [h.revision async for h in client.history("ai", "count")]
        assert history == [2, 6]


async def test_errors_are_typed_and_carry_the_details(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    async with client_for(servers, keys) as client:
        entry = await client.set("ai", "k", 1)
        with pytest.raises(Conflict) as conflict:
            await client.set("ai", "k", 2, expected_revision=entry.revision + 5)
        assert conflict.value.reason == "REVISION_MISMATCH"
        assert conflict.value.metadata["revision"] == str(entry.revision)
        with pytest.raises(InvalidArgument) as invalid:
            await client.set("AI", "k", 2)
        assert "service" in invalid.value.field_violations
        with pytest.raises(NotFound):
            await client.delete("ai", "never-set")
    async with client_for(servers, keys, role="viewer") as viewer:
        with pytest.raises(PermissionDenied) as denied:
            await viewer.set("ai", "k", 1)
        assert denied.value.reason == "MISSING_SCOPE"


async def test_listing_pages_through_everything(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    async with client_for(servers, keys) as client:
        for chunk in range(6):
            await client.batch({("ai", f"k{chunk:02d}{i:02d}"): i for i in range(100)})
        keys_seen = [entry.key async for entry in client.entries("ai")]
    assert len(keys_seen) == 600
    assert keys_seen == sorted(keys_seen)


@pytest.mark.slow
async def test_a_write_retried_across_an_outage_lands_once(
    server_env: dict[str, str], keys: Keys
) -> None:
    port = free_port()
    organization = f"cli-{uuid.uuid4().hex[:8]}"
    client = ConfigClient(
        f"127.0.0.1:{port}", organization, token=keys.token(organization), attempts=30
    )
    replica: Replica | None = None
    try:
        # Nothing listens yet: the write fails UNAVAILABLE and is retried until the
        # service comes up (it takes a process start), then lands.
        writing = asyncio.create_task(client.set("ai", "k", 1, request_id=str(uuid.uuid4())))
        replica = await asyncio.to_thread(Replica, {**server_env, "GRPC_PORT": str(port)})
        entry = await asyncio.wait_for(writing, 30)
        assert entry.revision == 1
        assert [h.revision async for h in client.history()] == [1]
    finally:
        await client.close()
        if replica is not None:
            await asyncio.to_thread(replica.stop)


async def test_a_write_whose_answer_is_lost_is_retried_and_lands_once(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    # The write commits on the server, its answer is lost with the connection: the SDK
    # retries with the same request id and gets the first answer, not a second write.
    organization = f"cli-{uuid.uuid4().hex[:8]}"
    async with (
        AnswerCuttingProxy(servers["config"].port) as proxy,
        ConfigClient(
            f"127.0.0.1:{proxy.port}", organization, token=keys.token(organization), attempts=5
        ) as client,
    ):
        await client.set("ai", "warm-up", 0)  # the connection is up
        proxy.arm()
        entry = await client.set("ai", "k", 1)
        assert proxy.cuts == 1
        assert proxy.connections >= 2  # the retry came on a new connection
        assert entry.revision == 2
        assert [h.revision async for h in client.history(key="k", service="ai")] == [2]
        assert (await client.get("ai", "k")).revision == 2
        # Without a retry the lost answer reaches the caller as UNAVAILABLE.
        proxy.arm()
        async with ConfigClient(
            f"127.0.0.1:{proxy.port}",
            organization,
            token=keys.token(organization),
            attempts=1,
        ) as once:
            with pytest.raises(Unavailable):
                await once.set("ai", "k", 2)
        assert [h.revision async for h in client.history(key="k", service="ai")] == [2, 3]


async def test_without_retries_an_outage_is_unavailable(keys: Keys) -> None:
    organization = "cli-down"
    async with ConfigClient(
        f"127.0.0.1:{free_port()}", organization, token=keys.token(organization), attempts=1
    ) as client:
        with pytest.raises(Unavailable):
            await client.get("ai", "k")


async def test_the_raw_stub_stays_reachable(servers: dict[str, RunningServer], keys: Keys) -> None:
    async with client_for(servers, keys) as client:
        await client.set("ai", "k", 1)
        page = await client.stub.ListConfigs(
            config_pb2.ListConfigsRequest(organization=client.organization),
            metadata=(("authorization", f"Bearer {keys.token(client.organization)}"),),
        )
        assert [e.key for e in page.configs] == ["k"]
