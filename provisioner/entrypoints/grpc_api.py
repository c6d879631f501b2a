"""The ProvisionerService servicer: checks the caller and the request, calls the use
cases, answers in protobuf. Domain errors become ``google.rpc.Status`` in the shared
call path (:mod:`servicekit.rpc`)."""

from __future__ import annotations

from typing import Any

from agentready.provisioner.v1 import provisioner_pb2 as pb
from agentready.provisioner.v1 import provisioner_service_pb2_grpc

from provisioner.domain.checks import (
    check_labels,
    check_owners,
    check_quantity,
)
from provisioner.domain.model import QUOTA_FIELDS, Quota
from provisioner.domain.quantity import parse_quantity
from provisioner.entrypoints import convert
from provisioner.service_layer.tenants import Tenants
from servicekit.errors import FieldViolation, InvalidArgument, PermissionDenied
from servicekit.pagination import decode_token, next_page, page_size
from servicekit.requests import (
    check_organization,
    check_reason,
    check_request_id,
    raise_if_invalid,
    request_key,
)
from servicekit.rpc import authorize, authorize_operator, current_principal

READ, WRITE = "provisioner:read", "provisioner:write"
DEFAULT_PAGE_SIZE = 50


def _quota_violations(
    quota: pb.Quota, fields: tuple[str, ...] = QUOTA_FIELDS
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for name in fields:
        out += check_quantity(getattr(quota, name), f"quota.{name}")
    return out


def check_quota_maximum(requested: dict[str, str], maximum: Quota) -> None:
    """Quotas above the platform's maximum are an operator's call, not a tenant's.

    Raises:
        PermissionDenied: reason QUOTA_ABOVE_MAXIMUM, for a caller that is not an
            operator or platform service.
    """
    if current_principal().is_platform:
        return
    above = [
        name
        for name, value in requested.items()
        if value and parse_quantity(value) > parse_quantity(getattr(maximum, name))
    ]
    if above:
        raise PermissionDenied(
            "quota above the platform's maximum ("
            + ", ".join(f"{n} {getattr(maximum, n)}" for n in above)
            + "); an operator must set it",
            reason="QUOTA_ABOVE_MAXIMUM",
            metadata={n: getattr(maximum, n) for n in above},
        )


class ProvisionerServiceServicer(provisioner_service_pb2_grpc.ProvisionerServiceServicer):
    """ProvisionerService over gRPC."""

    def __init__(self, tenants: Tenants, *, max_quota: Quota | None = None) -> None:
        self._tenants = tenants
        self._max_quota = max_quota or Quota(cpu="64", memory="256Gi", storage="1Ti")

    async def ProvisionTenant(
        self, request: pb.ProvisionTenantRequest, context: Any
    ) -> pb.TenantEnvironment:
        actor = authorize(request.organization, WRITE)
        labels = dict(request.labels)
        raise_if_invalid(
            check_organization(request.organization)
            + check_owners(list(request.owners))
            + _quota_violations(request.quota)
            + check_labels(labels)
            + check_request_id(request.request_id)
        )
        owners = list(dict.fromkeys(request.owners))  # duplicates bind once
        quota = Quota.with_defaults(request.quota.cpu, request.quota.memory, request.quota.storage)
        check_quota_maximum(quota.to_json(), self._max_quota)
        env = await self._tenants.provision(
            request.organization,
            owners=owners,
            quota=quota,
            labels=labels,
            actor=actor,
            request=request_key("ProvisionTenant", request),
        )
        return convert.environment_to_proto(env)

    async def GetTenantEnvironment(
        self, request: pb.GetTenantEnvironmentRequest, context: Any
    ) -> pb.TenantEnvironment:
        authorize(request.organization, READ)
        raise_if_invalid(check_organization(request.organization))
        return convert.environment_to_proto(await self._tenants.get(request.organization))

    async def ListTenantEnvironments(
        self, request: pb.ListTenantEnvironmentsRequest, context: Any
    ) -> pb.ListTenantEnvironmentsResponse:
        authorize_operator(READ)
        if request.state != pb.TenantEnvironment.STATE_UNSPECIFIED and (
            request.state not in convert.STATES_BY_PROTO
        ):
            raise InvalidArgument.field("state", "not a known state")
        limit = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        binding = [int(request.state), request.page_size]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        envs = await self._tenants.list_environments(
            state=convert.STATES_BY_PROTO.get(request.state), after=str(after), limit=limit + 1
        )
        page, token = next_page(envs, limit, lambda e: e.organization, request=binding)
        return pb.ListTenantEnvironmentsResponse(
            tenant_environments=[convert.environment_to_proto(e) for e in page],
            next_page_token=token,
        )

    async def UpdateTenantQuota(
        self, request: pb.UpdateTenantQuotaRequest, context: Any
    ) -> pb.TenantEnvironment:
        actor = authorize(request.organization, WRITE)
        violations = check_organization(request.organization) + check_reason(request.reason)
        violations += check_request_id(request.request_id)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        fields: tuple[str, ...]
        if not paths:
            fields = tuple(f for f in QUOTA_FIELDS if getattr(request.quota, f))
            if not fields:
                violations.append(
                    FieldViolation("quota", "give at least one of cpu, memory, storage")
                )
        elif paths == ["*"]:
            fields = QUOTA_FIELDS
        else:
            unknown = [p for p in paths if p not in QUOTA_FIELDS]
            if unknown:
                violations.append(
                    FieldViolation(
                        "update_mask",
                        f"unknown paths {unknown}; use cpu, memory, storage or '*'",
                    )
                )
            fields = tuple(p for p in QUOTA_FIELDS if p in paths)
        violations += _quota_violations(request.quota, fields)
        raise_if_invalid(violations)
        check_quota_maximum({f: getattr(request.quota, f) for f in fields}, self._max_quota)
        env = await self._tenants.update_quota(
            request.organization,
            fields={f: getattr(request.quota, f) for f in fields},
            etag=request.etag,
            actor=actor,
            reason=request.reason,
            request=request_key("UpdateTenantQuota", request),
        )
        return convert.environment_to_proto(env)

    async def ListQuotaHistory(
        self, request: pb.ListQuotaHistoryRequest, context: Any
    ) -> pb.ListQuotaHistoryResponse:
        authorize(request.organization, READ)
        raise_if_invalid(check_organization(request.organization))
        limit = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        binding = [request.organization, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=int) or 0
        changes = await self._tenants.quota_history(
            request.organization, after=after, limit=limit + 1
        )
        page, token = next_page(changes, limit, lambda c: c.seq, request=binding)
        return pb.ListQuotaHistoryResponse(
            quota_history_entries=[convert.quota_change_to_proto(c) for c in page],
            next_page_token=token,
        )

    async def DeprovisionTenant(
        self, request: pb.DeprovisionTenantRequest, context: Any
    ) -> pb.TenantEnvironment:
        authorize(request.organization, WRITE)
        raise_if_invalid(
            check_organization(request.organization) + check_request_id(request.request_id)
        )
        env = await self._tenants.deprovision(
            request.organization,
            etag=request.etag,
            request=request_key("DeprovisionTenant", request),
        )
        return convert.environment_to_proto(env)

    async def ReconcileTenant(
        self, request: pb.ReconcileTenantRequest, context: Any
    ) -> pb.TenantEnvironment:
        authorize(request.organization, WRITE)
        raise_if_invalid(check_organization(request.organization))
        return convert.environment_to_proto(await self._tenants.reconcile(request.organization))
