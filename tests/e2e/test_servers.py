"""Each server: health, reflection (grpc and grpcurl), auth, errors, request ids, metrics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.rpcerrors import error_info

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SERVICE_NAMES = {
    "tenant": "agentready.tenant.v1.TenantService",
    "config": "agentready.config.v1.ConfigService",
    "provisioner": "agentready.provisioner.v1.ProvisionerService",
}


@pytest.mark.parametrize("name", sorted(SERVICE_NAMES))
async def test_health_answers_serving(servers: dict[str, RunningServer], name: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[name].port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs list no methods
        for service in ("", SERVICE_NAMES[name]):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def reflected_services(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


# The servers run on this test session's event loop: blocking clients go to a thread
# so the loop keeps serving while they wait.


@pytest.mark.parametrize("name", sorted(SERVICE_NAMES))
async def test_reflection_lists_the_service(servers: dict[str, RunningServer], name: str) -> None:
    services = await asyncio.to_thread(reflected_services, servers[name].port)
    assert SERVICE_NAMES[name] in services
    assert "grpc.health.v1.Health" in services


@pytest.mark.parametrize("name", sorted(SERVICE_NAMES))
async def test_grpcurl_lists_and_checks_health(
    servers: dict[str, RunningServer], name: str
) -> None:
    address = f"127.0.0.1:{servers[name].port}"
    listed = await asyncio.to_thread(run, GRPCURL, "-plaintext", address, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE_NAMES[name] in listed.stdout.split()
    health = await asyncio.to_thread(
        run, GRPCURL, "-plaintext", address, "grpc.health.v1.Health/Check"
    )
    assert json.loads(health.stdout) == {"status": "SERVING"}


async def test_grpcurl_with_a_bad_token_is_unauthenticated(
    servers: dict[str, RunningServer],
) -> None:
    result = await asyncio.to_thread(
        run,
        GRPCURL,
        "-plaintext",
        "-H",
        "authorization: Bearer forged.token.here",
        "-d",
        '{"organization": "acme", "service": "ai", "key": "threshold"}',
        f"127.0.0.1:{servers['config'].port}",
        "agentready.config.v1.ConfigService/GetConfig",
    )
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr


def get_config_request() -> config_pb2.GetConfigRequest:
    return config_pb2.GetConfigRequest(organization="acme", service="ai", key="threshold")


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_MALFORMED"),
    ],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    servers: dict[str, RunningServer], metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetConfig(get_config_request(), metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(info.value).reason == reason


async def test_expired_and_foreign_tokens_are_unauthenticated(
    servers: dict[str, RunningServer], keys: Keys, tmp_path: Path
) -> None:
    import datetime as dt

    expired = keys.token(now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    foreign = Keys(tmp_path).token()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        reasons = []
        for token in (expired, foreign):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetConfig(
                    get_config_request(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reasons.append(error_info(info.value).reason)
    assert reasons == ["TOKEN_EXPIRED", "TOKEN_UNKNOWN_KEY"]


async def test_public_methods_need_no_token(servers: dict[str, RunningServer], keys: Keys) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        reply = await stub.GetJwks(tenant_pb2.GetJwksRequest(), timeout=5)
    published = {k.kid: k for k in reply.keys}
    assert keys.jwk["kid"] in published
    key = published[keys.jwk["kid"]]
    assert (key.kty, key.crv, key.alg, key.use, key.x) == (
        "OKP",
        "Ed25519",
        "EdDSA",
        "sig",
        keys.jwk["x"],
    )


async def test_request_id_is_echoed_on_success_and_on_error(
    servers: dict[str, RunningServer], keys: Keys
) -> None:
    metadata = (("authorization", f"Bearer {keys.token('acme')}"), ("x-request-id", "req-42"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        failing = stub.GetConfig(
            config_pb2.GetConfigRequest(organization="acme", service="ai", key="missing-key"),
            metadata=metadata,
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await failing
        assert ("x-request-id", "req-42") in tuple(await failing.trailing_metadata())
        succeeding = stub.ListConfigs(
            config_pb2.ListConfigsRequest(organization="acme"), metadata=metadata, timeout=5
        )
        await succeeding
        assert ("x-request-id", "req-42") in tuple(await succeeding.trailing_metadata())


async def test_metrics_count_rpcs_by_code(servers: dict[str, RunningServer]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetConfig(get_config_request(), timeout=5)
    port = servers["config"].metrics_port
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    )
    assert (
        'grpc_server_handled_total{grpc_code="UNAUTHENTICATED",grpc_method="GetConfig",'
        'grpc_service="agentready.config.v1.ConfigService",grpc_type="unary"}'
    ) in text.decode()
    assert "grpc_server_handling_seconds_bucket" in text.decode()
    assert "grpc_server_in_flight" in text.decode()


async def test_each_server_migrated_its_own_schema(
    servers: dict[str, RunningServer], database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for schema in ("tenant", "config", "provisioner"):
            assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations")
    finally:
        await conn.close()
