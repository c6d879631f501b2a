"""Streams end with their token (security review finding 2): a WatchConfig stream is
ended with UNAUTHENTICATED when its token expires or is revoked, and the SDK's watcher
resumes with a fresh token from its last revision without losing one."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentready import AsyncConfigWatcher, ConfigEvent
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2 as pb

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import TenantApi, bearer, new_slug
from tests.rpcerrors import error_info

Response = config_pb2.WatchConfigResponse


@pytest.fixture(scope="module")
async def channels(
    servers: dict[str, RunningServer],
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    opened = {name: grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for name, s in servers.items()}
    yield opened
    for channel in opened.values():
        await channel.close()


async def ended_with(call: Any) -> grpc.aio.AioRpcError:
    """Reads the stream to its end; returns the error it ended with."""

    async def read_all() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_all()
    return info.value


async def test_a_stream_ends_when_its_token_expires(
    channels: dict[str, grpc.aio.Channel], keys: Keys
) -> None:
    org = new_slug("s")
    token = keys.token(org, "viewer", ttl=dt.timedelta(seconds=2))
    stub = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    call = stub.WatchConfig(config_pb2.WatchConfigRequest(organization=org), metadata=bearer(token))
    err = await ended_with(call)  # a snapshot first, then the end
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err).reason == "TOKEN_EXPIRED"


async def test_a_stream_ends_when_its_token_is_revoked(
    channels: dict[str, grpc.aio.Channel],
) -> None:
    api = TenantApi(channels["tenant"], channels["config"])
    person, org = await api.owner_of_new_org()
    stub: Any = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    call = stub.WatchConfig(config_pb2.WatchConfigRequest(organization=org), metadata=person.auth)
    assert (await call.read()).type == Response.EVENT_TYPE_SNAPSHOT
    await api.stub.Logout(pb.LogoutRequest(), metadata=person.auth, timeout=10)
    err = await ended_with(call)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err).reason == "TOKEN_REVOKED"


async def test_the_watcher_renews_its_token_and_loses_no_revision(
    channels: dict[str, grpc.aio.Channel], servers: dict[str, RunningServer], keys: Keys
) -> None:
    org = new_slug("s")
    writer = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    minted = 0
    renewed = asyncio.Event()

    def short_lived_token() -> str:
        nonlocal minted
        minted += 1
        if minted >= 2:
            renewed.set()
        return keys.token(org, "viewer", ttl=dt.timedelta(seconds=2))

    seen: list[int] = []
    all_seen = asyncio.Event()

    def listen(event: ConfigEvent) -> None:
        if not event.snapshot:
            seen.append(event.revision)
        if event.revision >= 6:
            all_seen.set()

    async def write(value: int) -> None:
        await writer.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org, service="ai", key="n", value=config_pb2.Value(int_value=value)
            ),
            metadata=bearer(keys.token(org)),
            timeout=10,
        )

    target = f"127.0.0.1:{servers['config'].port}"
    async with AsyncConfigWatcher(
        target, org, token=short_lived_token, on_change=listen
    ) as watcher:
        for value in (1, 2, 3):
            await write(value)
        await asyncio.wait_for(renewed.wait(), 30)  # the first token ran out meanwhile
        for value in (4, 5, 6):
            await write(value)
        await asyncio.wait_for(all_seen.wait(), 30)
        assert watcher.get_int("ai", "n") == 6
    assert seen == [1, 2, 3, 4, 5, 6]  # each revision once, in order, none lost
