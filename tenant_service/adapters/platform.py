"""The other services, as TenantService's sagas call them: with a platform-service
token of TenantService's own (role "service", never a user's token), a deadline, and
errors sorted into temporary (retry later) and permanent (FAILED with a reason)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.provisioner.v1 import provisioner_pb2, provisioner_service_pb2_grpc

if TYPE_CHECKING:
    from agentready.config.v1.config_service_pb2_grpc import ConfigServiceAsyncStub
    from agentready.provisioner.v1.provisioner_service_pb2_grpc import (
        ProvisionerServiceAsyncStub,
    )

# Codes after which the same call may well succeed later.
TEMPORARY = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class StepFailed(Exception):
    """A saga step failed; ``temporary`` says whether retrying may cure it."""

    def __init__(self, message: str, *, temporary: bool, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.code = code


@dataclasses.dataclass(frozen=True)
class Environment:
    """What TenantService needs of a tenant environment."""

    state: str  # READY, PROVISIONING, FAILED, DELETING, DELETED, or GONE (never existed)
    last_error: str


_STATE_NAMES = {
    provisioner_pb2.TenantEnvironment.STATE_PROVISIONING: "PROVISIONING",
    provisioner_pb2.TenantEnvironment.STATE_READY: "READY",
    provisioner_pb2.TenantEnvironment.STATE_FAILED: "FAILED",
    provisioner_pb2.TenantEnvironment.STATE_DELETING: "DELETING",
    provisioner_pb2.TenantEnvironment.STATE_DELETED: "DELETED",
}


class Platform:
    """Clients of ProvisionerService and ConfigService for the sagas."""

    def __init__(
        self,
        token: Callable[[], str],
        *,
        provisioner_address: str,
        config_address: str,
        timeout: float,
        connect: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        self._token = token
        self._timeout = timeout
        self._provisioner_channel = connect(provisioner_address)
        self._config_channel = connect(config_address)
        self._provisioner: ProvisionerServiceAsyncStub = (
            provisioner_service_pb2_grpc.ProvisionerServiceStub(self._provisioner_channel)
        )
        self._config: ConfigServiceAsyncStub = config_service_pb2_grpc.ConfigServiceStub(
            self._config_channel
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token()}"),)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise StepFailed(
                f"{code.name}: {exc.details() or ''}".strip(),
                temporary=code in TEMPORARY,
                code=code,
            ) from None

    @staticmethod
    def _environment(env: provisioner_pb2.TenantEnvironment) -> Environment:
        return Environment(_STATE_NAMES.get(env.state, "PROVISIONING"), env.last_error)

    async def provision(self, organization: str, owners: Sequence[str]) -> Environment:
        """Asks for the organization's environment (idempotent)."""
        env = await self._call(
            self._provisioner.ProvisionTenant,
            provisioner_pb2.ProvisionTenantRequest(organization=organization, owners=owners),
        )
        return self._environment(env)

    async def deprovision(self, organization: str) -> Environment:
        """Asks for the environment's removal (idempotent); GONE if it never existed."""
        try:
            env = await self._call(
                self._provisioner.DeprovisionTenant,
                provisioner_pb2.DeprovisionTenantRequest(organization=organization),
            )
        except StepFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return Environment("GONE", "")
            raise
        return self._environment(env)

    async def purge_config(self, organization: str) -> None:
        """Removes the organization's configuration and its history."""
        await self._call(
            self._config.PurgeConfig, config_pb2.PurgeConfigRequest(organization=organization)
        )

    async def close(self) -> None:
        """Closes the channels."""
        await self._provisioner_channel.close()
        await self._config_channel.close()
