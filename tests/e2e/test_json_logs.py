"""The README's promise about logs: JSON, one object a line, carrying the request id
(the client's x-request-id when it sends one) and the organization of the caller."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

from tests.conftest import Keys
from tests.e2e.tenant_support import eventually, new_slug
from tests.e2e.watching import Replica

pytestmark = pytest.mark.slow


async def test_a_served_call_logs_its_request_id_and_organization(
    server_env: dict[str, str], keys: Keys
) -> None:
    replica = await asyncio.to_thread(Replica, {**server_env, "LOG_FORMAT": "json"})
    try:
        org, request_id = new_slug("l"), f"req-{uuid.uuid4().hex[:12]}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            stub = config_service_pb2_grpc.ConfigServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):  # NOT_FOUND is logged at INFO
                await stub.GetConfig(
                    config_pb2.GetConfigRequest(organization=org, service="s", key="missing"),
                    metadata=(
                        ("authorization", f"Bearer {keys.token(org)}"),
                        ("x-request-id", request_id),
                    ),
                    timeout=10,
                )

        def logged() -> list[dict[str, object]]:
            return [e for e in replica.log if e.get("request_id") == request_id]

        (entry,) = await eventually(lambda: asyncio.sleep(0, logged()), bool)
        assert entry["organization"] == org
        assert entry["service"] == "config"
        assert entry["level"] == "INFO"
        assert "GetConfig" in str(entry["message"])
        assert "time" in entry
    finally:
        await asyncio.to_thread(replica.stop)
