"""Protobuf ↔ domain for ProvisionerService."""

from __future__ import annotations

import datetime as dt

from agentready.provisioner.v1 import provisioner_pb2 as pb
from google.protobuf import timestamp_pb2

from provisioner.domain.model import (
    BackendKind,
    Condition,
    ConditionStatus,
    Environment,
    Quota,
    QuotaChange,
    State,
)

STATES: dict[State, pb.TenantEnvironment.State.ValueType] = {
    State.PROVISIONING: pb.TenantEnvironment.STATE_PROVISIONING,
    State.READY: pb.TenantEnvironment.STATE_READY,
    State.FAILED: pb.TenantEnvironment.STATE_FAILED,
    State.DELETING: pb.TenantEnvironment.STATE_DELETING,
    State.DELETED: pb.TenantEnvironment.STATE_DELETED,
}
STATES_BY_PROTO = {v: k for k, v in STATES.items()}
BACKENDS = {
    BackendKind.KUBERNETES: pb.TenantEnvironment.BACKEND_KUBERNETES,
    BackendKind.GITOPS: pb.TenantEnvironment.BACKEND_GITOPS,
}
CONDITION_STATUS = {
    ConditionStatus.TRUE: pb.Condition.STATUS_TRUE,
    ConditionStatus.FALSE: pb.Condition.STATUS_FALSE,
    ConditionStatus.UNKNOWN: pb.Condition.STATUS_UNKNOWN,
}


def timestamp(when: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf timestamp, or None to leave the field unset."""
    if when is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(dt.UTC))
    return stamp


def quota_to_proto(quota: Quota) -> pb.Quota:
    """A quota message."""
    return pb.Quota(cpu=quota.cpu, memory=quota.memory, storage=quota.storage)


def condition_to_proto(condition: Condition) -> pb.Condition:
    """A condition message."""
    return pb.Condition(
        type=condition.type.value,
        status=CONDITION_STATUS[condition.status],
        reason=condition.reason,
        message=condition.message,
        last_transition_time=timestamp(condition.last_transition_time),
    )


def environment_to_proto(env: Environment) -> pb.TenantEnvironment:
    """A TenantEnvironment message."""
    return pb.TenantEnvironment(
        organization=env.organization,
        namespace=env.namespace,
        state=STATES[env.state],
        conditions=[condition_to_proto(c) for c in env.conditions],
        owners=list(env.owners),
        quota=quota_to_proto(env.quota),
        labels=dict(env.labels),
        quota_hard=dict(env.observation.quota_hard),
        quota_used=dict(env.observation.quota_used),
        namespace_phase=env.observation.namespace_phase,
        last_error=env.last_error,
        backend=BACKENDS[env.backend],
        generation=env.generation,
        observed_generation=env.observed_generation,
        create_time=timestamp(env.create_time),
        update_time=timestamp(env.update_time),
        last_reconcile_time=timestamp(env.last_reconcile_time),
        etag=env.etag,
    )


def quota_change_to_proto(change: QuotaChange) -> pb.QuotaHistoryEntry:
    """A QuotaHistoryEntry message."""
    return pb.QuotaHistoryEntry(
        organization=change.organization,
        old_quota=quota_to_proto(change.old_quota) if change.old_quota is not None else None,
        new_quota=quota_to_proto(change.new_quota),
        actor=change.actor,
        reason=change.reason,
        request_id=change.request_id,
        create_time=timestamp(change.create_time),
    )
