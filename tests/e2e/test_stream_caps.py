"""Per-caller limits on streams (security review finding 7): one token, or one
organization, cannot hold more than its share of a server's streams."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

from config_service.app import SPEC as CONFIG
from servicekit.server import start
from servicekit.settings import load_settings
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, eventually, new_slug
from tests.rpcerrors import error_info

Response = config_pb2.WatchConfigResponse


async def test_streams_are_capped_per_token_and_per_organization(
    server_env: dict[str, str], keys: Keys
) -> None:
    env = {
        **server_env,
        "METRICS_PORT": "off",
        "MAX_STREAMS_PER_TOKEN": "2",
        "MAX_STREAMS_PER_ORGANIZATION": "3",
    }
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    org = new_slug("c")
    first, second = keys.token(org, "viewer"), keys.token(org, "viewer")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)

            def watch(token: str) -> Any:
                return stub.WatchConfig(
                    config_pb2.WatchConfigRequest(organization=org), metadata=bearer(token)
                )

            async def opened(token: str) -> Any:
                call = watch(token)
                assert (await call.read()).type == Response.EVENT_TYPE_SNAPSHOT
                return call

            async def refused(token: str) -> str:
                call = watch(token)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return str(error_info(info.value).metadata["per"])

            held = [await opened(first), await opened(first)]
            assert await refused(first) == "token"
            held.append(await opened(second))  # another token: the organization has room
            assert await refused(second) == "organization"
            # A stream that ends frees its place.
            held.pop(0).cancel()

            async def reopened() -> bool:
                call = watch(second)
                try:
                    await call.read()
                except grpc.aio.AioRpcError:
                    return False
                held.append(call)
                return True

            await eventually(reopened, bool)
            for call in held:
                call.cancel()
    finally:
        await server.stop()
