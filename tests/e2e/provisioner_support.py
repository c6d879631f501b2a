"""Shared helpers of the Provisioner's end-to-end tests: a database of their own, the
fake Kubernetes API, servers started with chosen settings, and a typed caller."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from agentready.provisioner.v1 import provisioner_pb2 as pb
from agentready.provisioner.v1 import provisioner_service_pb2_grpc

from provisioner.app import SPEC
from servicekit.devstack import scratch_database
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tests.conftest import Keys

if TYPE_CHECKING:
    from agentready.provisioner.v1.provisioner_service_pb2_grpc import (
        ProvisionerServiceAsyncStub,
    )

T = TypeVar("T")
TIMEOUT = 10.0
Env = pb.TenantEnvironment
Metadata = tuple[tuple[str, str], ...]


def new_org() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def prov_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of the provisioner tests' own: the session's servers run a reconcile
    loop of their own on the shared one."""
    with scratch_database(postgres_server_url, "agentready_prov") as url:
        yield url


async def start_provisioner(
    server_env: Mapping[str, str], database_url: str, **variables: str
) -> RunningServer:
    """A ProvisionerService on a free port with ``variables`` on top of the test env."""
    env = {**server_env, "DATABASE_URL": database_url, "METRICS_PORT": "off", **variables}
    return await start(SPEC, load_settings("provisioner", env, extra=SPEC.extra_settings))


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 30.0
) -> T:
    """Polls ``probe`` until ``accept`` holds for its value; returns that value (the
    timeout only bounds a failing test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value}")
        await asyncio.sleep(0.05)


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with, after checking its code."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value


def conditions(env: Env) -> dict[str, tuple[str, str]]:
    """Condition type → (status name, reason)."""
    return {
        c.type: (pb.Condition.Status.Name(c.status).removeprefix("STATUS_"), c.reason)
        for c in env.conditions
    }


def state(env: Env) -> str:
    return pb.TenantEnvironment.State.Name(env.state).removeprefix("STATE_")


@dataclasses.dataclass
class Caller:
    """ProvisionerService as one organization's owner sees it."""

    stub: ProvisionerServiceAsyncStub
    keys: Keys
    org: str
    token: str

    @classmethod
    def of(cls, channel: grpc.aio.Channel, keys: Keys, org: str, role: str = "owner") -> Caller:
        stub = provisioner_service_pb2_grpc.ProvisionerServiceStub(channel)
        return cls(stub, keys, org, keys.token(org, role, subject=f"{role}-of-{org}"))

    @property
    def md(self) -> Metadata:
        return (("authorization", f"Bearer {self.token}"),)

    def with_token(self, token: str) -> Caller:
        return dataclasses.replace(self, token=token)

    async def provision(self, owners: list[str] | None = None, **fields: Any) -> Env:
        request = pb.ProvisionTenantRequest(
            organization=self.org, owners=owners or ["alice"], **fields
        )
        return await self.stub.ProvisionTenant(request, metadata=self.md, timeout=TIMEOUT)

    async def get(self) -> Env:
        request = pb.GetTenantEnvironmentRequest(organization=self.org)
        return await self.stub.GetTenantEnvironment(request, metadata=self.md, timeout=TIMEOUT)

    async def update_quota(self, **fields: Any) -> Env:
        request = pb.UpdateTenantQuotaRequest(organization=self.org, **fields)
        return await self.stub.UpdateTenantQuota(request, metadata=self.md, timeout=TIMEOUT)

    async def history(self, **fields: Any) -> pb.ListQuotaHistoryResponse:
        request = pb.ListQuotaHistoryRequest(organization=self.org, **fields)
        return await self.stub.ListQuotaHistory(request, metadata=self.md, timeout=TIMEOUT)

    async def deprovision(self, **fields: Any) -> Env:
        request = pb.DeprovisionTenantRequest(organization=self.org, **fields)
        return await self.stub.DeprovisionTenant(request, metadata=self.md, timeout=TIMEOUT)

    async def reconcile(self) -> Env:
        request = pb.ReconcileTenantRequest(organization=self.org)
        return await self.stub.ReconcileTenant(request, metadata=self.md, timeout=TIMEOUT)

    async def list_all(self, token: str, **fields: Any) -> pb.ListTenantEnvironmentsResponse:
        request = pb.ListTenantEnvironmentsRequest(**fields)
        return await self.stub.ListTenantEnvironments(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT
        )
