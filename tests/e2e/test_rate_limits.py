"""Per-organization rate limits and limits, set at run time in the platform
configuration and applied by all three services without a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.provisioner.v1 import provisioner_pb2, provisioner_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2 as pb
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from servicekit.devstack import free_port
from servicekit.errors import ResourceExhausted
from servicekit.platform import RateLimit, parse_rate_limit
from servicekit.ratelimit import RATE_LIMIT_FALLBACK, RateLimiter
from servicekit.redisconn import connect_redis
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import Code, TenantApi, bearer, new_slug, rpc_error
from tests.rpcerrors import detail, error_info


@pytest.fixture(scope="module")
async def channels(
    servers: dict[str, RunningServer],
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    opened = {name: grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for name, s in servers.items()}
    yield opened
    for channel in opened.values():
        await channel.close()


async def set_platform(
    channels: dict[str, grpc.aio.Channel],
    servers: dict[str, RunningServer],
    keys: Keys,
    key: str,
    value: dict[str, Any] | None,
) -> None:
    """Sets (or, with None, deletes) a platform value as an operator, then waits until
    every server's watcher has applied it."""
    stub = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    operator = bearer(keys.token(None, "operator", subject="operator"))
    platform = "platform"
    if value is None:
        await stub.DeleteConfig(
            config_pb2.DeleteConfigRequest(organization=platform, service="platform", key=key),
            metadata=operator,
            timeout=10,
        )
        listed = await stub.ListConfigs(
            config_pb2.ListConfigsRequest(organization=platform), metadata=operator, timeout=10
        )
        revision = listed.revision
    else:
        entry = await stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=platform,
                service="platform",
                key=key,
                value=config_pb2.Value(json_value=json_format.ParseDict(value, struct_pb2.Value())),
            ),
            metadata=operator,
            timeout=10,
        )
        revision = entry.revision
    for server in servers.values():
        await server.resources.platform.wait_revision(revision)


async def test_a_rate_limit_set_at_run_time_holds_across_all_services(
    channels: dict[str, grpc.aio.Channel], servers: dict[str, RunningServer], keys: Keys
) -> None:
    org = new_slug("r")
    token = bearer(keys.token(org, "owner"))
    config = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    provisioner = provisioner_service_pb2_grpc.ProvisionerServiceStub(channels["provisioner"])
    tenant = TenantApi(channels["tenant"])

    def list_configs() -> Awaitable[config_pb2.ListConfigsResponse]:
        return config.ListConfigs(
            config_pb2.ListConfigsRequest(organization=org), metadata=token, timeout=10
        )

    for _ in range(3):  # no limit yet
        await list_configs()
    # One call per 1000 s with a burst of 2: the third call is refused whatever the pace.
    await set_platform(channels, servers, keys, f"api.rate_limit.{org}", {"rps": 0.001, "burst": 2})
    await list_configs()
    await list_configs()
    err = await rpc_error(list_configs(), Code.RESOURCE_EXHAUSTED)
    assert error_info(err).reason == "RATE_LIMITED"
    assert detail(err, error_details_pb2.RetryInfo).retry_delay.seconds > 0
    # The budget is the organization's, shared by every service.
    err = await rpc_error(
        provisioner.GetTenantEnvironment(
            provisioner_pb2.GetTenantEnvironmentRequest(organization=org),
            metadata=token,
            timeout=10,
        ),
        Code.RESOURCE_EXHAUSTED,
    )
    assert error_info(err).reason == "RATE_LIMITED"
    await rpc_error(
        tenant.stub.GetOrganization(
            pb.GetOrganizationRequest(organization=org), metadata=token, timeout=10
        ),
        Code.RESOURCE_EXHAUSTED,
    )
    # Other organizations are not affected; lifting the limit applies at once.
    other = new_slug("r")
    for _ in range(3):
        await config.ListConfigs(
            config_pb2.ListConfigsRequest(organization=other),
            metadata=bearer(keys.token(other, "owner")),
            timeout=10,
        )
    await set_platform(channels, servers, keys, f"api.rate_limit.{org}", None)
    await list_configs()


async def test_organization_limits_follow_the_platform_configuration(
    channels: dict[str, grpc.aio.Channel], servers: dict[str, RunningServer], keys: Keys
) -> None:
    api = TenantApi(channels["tenant"])
    owner, org = await api.owner_of_new_org()

    async def create(project: str) -> pb.Project:
        return await api.stub.CreateProject(
            pb.CreateProjectRequest(organization=org, project=pb.Project(id=project)),
            metadata=owner.auth,
            timeout=10,
        )

    await set_platform(channels, servers, keys, f"limits.{org}", {"projects": 1})
    await create("first")
    err = await rpc_error(create("second"), Code.RESOURCE_EXHAUSTED)
    info = error_info(err)
    assert info.reason == "LIMIT_EXCEEDED"
    assert (info.metadata["limit"], info.metadata["used"]) == ("1", "1")
    listed = await api.stub.ListProjects(
        pb.ListProjectsRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert [p.id for p in listed.projects] == ["first"]  # nothing written
    await set_platform(channels, servers, keys, f"limits.{org}", {"projects": 2})
    await create("second")


def test_rate_limits_parse_strictly() -> None:
    assert parse_rate_limit({"rps": 10}) == RateLimit(10.0, 10)
    assert parse_rate_limit({"rps": 2.5, "burst": 7}) == RateLimit(2.5, 7)
    for unlimited in (None, {}, {"rps": 0}, {"rps": -1}, {"rps": "10"}, {"rps": True}, [1]):
        assert parse_rate_limit(unlimited) is None
    assert parse_rate_limit({"rps": 3, "burst": 0}) == RateLimit(3.0, 3)
    assert json.loads(json.dumps({"rps": 1}))  # JSON values as ConfigService stores them


async def test_with_redis_down_the_limit_holds_per_process() -> None:
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        limiter = RateLimiter(dead, lambda org: RateLimit(0.001, 2))
        before = RATE_LIMIT_FALLBACK._value.get()
        await limiter.check("acme")
        await limiter.check("acme")
        with pytest.raises(ResourceExhausted) as info:
            await limiter.check("acme")
        assert info.value.reason == "RATE_LIMITED"
        assert RATE_LIMIT_FALLBACK._value.get() - before == 3
        await limiter.check("another-org")  # its own budget
    finally:
        await dead.aclose()


async def test_concurrent_creations_cannot_overshoot_a_limit(
    channels: dict[str, grpc.aio.Channel], servers: dict[str, RunningServer], keys: Keys
) -> None:
    api = TenantApi(channels["tenant"])
    owner, org = await api.owner_of_new_org()
    await set_platform(channels, servers, keys, f"limits.{org}", {"projects": 3})

    async def create(i: int) -> grpc.StatusCode:
        try:
            await api.stub.CreateProject(
                pb.CreateProjectRequest(organization=org, project=pb.Project(id=f"p{i}")),
                metadata=owner.auth,
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(create(i) for i in range(12)))
    assert codes.count(grpc.StatusCode.OK) == 3
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 9
    listed = await api.stub.ListProjects(
        pb.ListProjectsRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert len(listed.projects) == 3
