"""ProvisionerClient: ProvisionerService in Python types.

Each organization's Kubernetes environment (namespace, RBAC, quota, limits, network
policy): provision, read its observed status, change its quota, deprovision,
reconcile now. Every call is safe to repeat (writes carry a request id; provisioning
and reconciling are idempotent by contract), so every call is retried on
``UNAVAILABLE`` on the call path the typed clients share.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from agentready._private.call import TokenSource
from agentready._private.client import ServiceClient
from agentready._private.sync import SyncFace, blocking, blocking_iter
from agentready.provisioner.v1 import provisioner_pb2, provisioner_service_pb2_grpc

Environment = provisioner_pb2.TenantEnvironment
_STATES = {
    name.removeprefix("STATE_").lower(): value
    for name, value in Environment.State.items()
    if value != Environment.STATE_UNSPECIFIED
}


def state_value(state: str | int) -> Environment.State.ValueType:
    """A ``TenantEnvironment.State`` from its name ("ready", "STATE_READY") or number.

    Raises:
        ValueError: no such state.
    """
    if isinstance(state, int):
        return Environment.State.ValueType(state)
    name = state.lower().removeprefix("state_")
    if name not in _STATES:
        raise ValueError(f"unknown state {state!r}: one of {', '.join(_STATES)}")
    return _STATES[name]


def state_name(state: int) -> str:
    """The lowercase name of a ``TenantEnvironment.State`` ("ready", ...)."""
    return Environment.State.Name(Environment.State.ValueType(state)).removeprefix("STATE_").lower()


class ProvisionerClient(ServiceClient):
    """Typed, retrying access to ProvisionerService.

    Args:
        target: the ProvisionerService address, or pass ``channel``.
        token: the credentials (see :class:`agentready.TenantClient`): a token scoped
            to the organization with ``provisioner:*`` scopes, or an operator's token
            for :meth:`list_environments`.
        channel: an existing ``grpc.aio`` channel (not closed by :meth:`close`).
        timeout: the deadline of each call, in seconds.
        attempts: tries per retryable call.
    """

    def __init__(
        self,
        target: str | None,
        *,
        token: TokenSource,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        super().__init__(target, token=token, channel=channel, timeout=timeout, attempts=attempts)
        self.stub = provisioner_service_pb2_grpc.ProvisionerServiceStub(self._channel)

    async def _call(self, method: Any, request: Any) -> Environment:
        environment: Environment = await self._calls.unary(method, request, idempotent=True)
        return environment

    async def provision(
        self,
        organization: str,
        *,
        owners: Iterable[str] = (),
        quota: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> Environment:
        """Provisions (or, when it exists, re-labels) an organization's environment.

        Args:
            quota: ``cpu`` / ``memory`` / ``storage`` (Kubernetes quantities); empty
                for the defaults.

        Raises:
            FailedPrecondition: a quota differing from the current one, the
                environment is being deleted, or a namespace ``org-<slug>`` that the
                Provisioner did not make exists already.
            InvalidArgument: a bad quantity or label.
            PermissionDenied: a quota above the platform's maximum, from a token that is
                not an operator's or a platform service's.
        """
        request = provisioner_pb2.ProvisionTenantRequest(
            organization=organization,
            owners=list(owners),
            quota=provisioner_pb2.Quota(**dict(quota or {})),
            labels=dict(labels or {}),
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._call(self.stub.ProvisionTenant, request)

    async def get_environment(self, organization: str) -> Environment:
        """The environment with its observed status.

        Raises:
            NotFound: never provisioned.
        """
        request = provisioner_pb2.GetTenantEnvironmentRequest(organization=organization)
        return await self._call(self.stub.GetTenantEnvironment, request)

    async def list_environments(
        self, *, state: str | int | None = None, page_size: int = 0
    ) -> AsyncIterator[Environment]:
        """Every environment (optionally only those in ``state``), page after page;
        needs an operator's token."""
        request = provisioner_pb2.ListTenantEnvironmentsRequest(page_size=page_size)
        if state is not None:
            request.state = state_value(state)
        async for environment in self._calls.pages(
            self.stub.ListTenantEnvironments, request, "tenant_environments"
        ):
            yield environment

    async def update_quota(
        self,
        organization: str,
        *,
        cpu: str | None = None,
        memory: str | None = None,
        storage: str | None = None,
        etag: str = "",
        reason: str = "",
        request_id: str | None = None,
    ) -> Environment:
        """Changes the named parts of the quota (the others stay), recorded in the
        quota history.

        Raises:
            NotFound: never provisioned.
            Conflict: ``etag`` did not match.
            InvalidArgument: a bad quantity.
            PermissionDenied: above the platform's maximum, from a token that is not an
                operator's or a platform service's.
        """
        given = {"cpu": cpu, "memory": memory, "storage": storage}
        paths = [name for name, value in given.items() if value is not None]
        request = provisioner_pb2.UpdateTenantQuotaRequest(
            organization=organization,
            quota=provisioner_pb2.Quota(**{k: v for k, v in given.items() if v is not None}),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            etag=etag,
            reason=reason,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._call(self.stub.UpdateTenantQuota, request)

    async def list_quota_history(
        self, organization: str, *, page_size: int = 0
    ) -> AsyncIterator[provisioner_pb2.QuotaHistoryEntry]:
        """Every quota change of an environment, the initial quota included.

        Raises:
            NotFound: never provisioned.
        """
        request = provisioner_pb2.ListQuotaHistoryRequest(
            organization=organization, page_size=page_size
        )
        async for entry in self._calls.pages(
            self.stub.ListQuotaHistory, request, "quota_history_entries"
        ):
            yield entry

    async def deprovision(
        self, organization: str, *, etag: str = "", request_id: str | None = None
    ) -> Environment:
        """Starts removing an environment; returned ``DELETING`` (or as it is).

        Raises:
            NotFound: never provisioned.
            Conflict: ``etag`` did not match.
        """
        request = provisioner_pb2.DeprovisionTenantRequest(
            organization=organization, etag=etag, request_id=request_id or str(uuid.uuid4())
        )
        return await self._call(self.stub.DeprovisionTenant, request)

    async def reconcile(self, organization: str) -> Environment:
        """Re-applies the desired state now; returns the refreshed status.

        Raises:
            NotFound: never provisioned.
            FailedPrecondition: it is deleted.
        """
        request = provisioner_pb2.ReconcileTenantRequest(organization=organization)
        return await self._call(self.stub.ReconcileTenant, request)


class SyncProvisionerClient(SyncFace[ProvisionerClient]):
    """:class:`ProvisionerClient` for code without an event loop: the same methods,
    blocking, run on a background thread.

    Takes the same arguments as :class:`ProvisionerClient` (except ``channel``).
    """

    def __init__(
        self, target: str, *, token: TokenSource, timeout: float = 10.0, attempts: int = 8
    ) -> None:
        super().__init__(
            lambda: ProvisionerClient(target, token=token, timeout=timeout, attempts=attempts)
        )

    provision = blocking(ProvisionerClient.provision)
    get_environment = blocking(ProvisionerClient.get_environment)
    list_environments = blocking_iter(ProvisionerClient.list_environments)
    update_quota = blocking(ProvisionerClient.update_quota)
    list_quota_history = blocking_iter(ProvisionerClient.list_quota_history)
    deprovision = blocking(ProvisionerClient.deprovision)
    reconcile = blocking(ProvisionerClient.reconcile)
