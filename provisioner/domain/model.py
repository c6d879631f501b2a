"""Tenant environments: the desired spec, the observed status and how one follows the other."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_CPU = "10"
DEFAULT_MEMORY = "20Gi"
DEFAULT_STORAGE = "10Gi"
QUOTA_FIELDS = ("cpu", "memory", "storage")
NAMESPACE_PREFIX = "org-"


class State(enum.Enum):
    """Lifecycle of an environment (see TenantEnvironment.State in the contract)."""

    PROVISIONING = "PROVISIONING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"

    @property
    def removing(self) -> bool:
        """DELETING or DELETED: no more spec changes."""
        return self in (State.DELETING, State.DELETED)


class BackendKind(enum.Enum):
    """Where the objects of an environment go."""

    KUBERNETES = "kubernetes"
    GITOPS = "gitops"


class ConditionType(enum.Enum):
    """The aspects of an environment's status, one condition each, in apply order."""

    NAMESPACE = "NamespaceReady"
    RBAC = "RbacReady"
    QUOTA = "QuotaReady"
    LIMIT_RANGE = "LimitRangeReady"
    NETWORK_POLICY = "NetworkPolicyReady"
    ISOLATION = "IsolationReady"


# The guard objects: every one must exist before the namespace is marked isolation-ready.
GUARDS = (
    ConditionType.RBAC,
    ConditionType.QUOTA,
    ConditionType.LIMIT_RANGE,
    ConditionType.NETWORK_POLICY,
)


class ConditionStatus(enum.Enum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclasses.dataclass(frozen=True)
class Condition:
    """One observed aspect, Kubernetes style."""

    type: ConditionType
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: dt.datetime | None = None

    def same_as(self, other: Condition) -> bool:
        """Equal apart from the transition time."""
        return (self.type, self.status, self.reason, self.message) == (
            other.type,
            other.status,
            other.reason,
            other.message,
        )

    def to_json(self) -> dict[str, Any]:
        """As stored in PostgreSQL."""
        return {
            "type": self.type.value,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
            "time": self.last_transition_time.isoformat() if self.last_transition_time else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Condition:
        """The inverse of :meth:`to_json`."""
        time = data.get("time")
        return cls(
            ConditionType(data["type"]),
            ConditionStatus(data["status"]),
            data.get("reason", ""),
            data.get("message", ""),
            dt.datetime.fromisoformat(time) if time else None,
        )


@dataclasses.dataclass(frozen=True)
class Quota:
    """A tenant's resource limits, as Kubernetes quantities (never empty once resolved)."""

    cpu: str = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY
    storage: str = DEFAULT_STORAGE

    def to_json(self) -> dict[str, str]:
        """As stored in PostgreSQL."""
        return {"cpu": self.cpu, "memory": self.memory, "storage": self.storage}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Quota:
        """The inverse of :meth:`to_json`."""
        return cls(**{name: data[name] for name in QUOTA_FIELDS})

    @classmethod
    def with_defaults(cls, cpu: str = "", memory: str = "", storage: str = "") -> Quota:
        """Empty values mean the defaults."""
        return cls(cpu or DEFAULT_CPU, memory or DEFAULT_MEMORY, storage or DEFAULT_STORAGE)

    def hard(self) -> dict[str, str]:
        """The ResourceQuota ``spec.hard`` this quota is applied as."""
        return {
            "requests.cpu": self.cpu,
            "limits.cpu": self.cpu,
            "requests.memory": self.memory,
            "limits.memory": self.memory,
            "requests.storage": self.storage,
        }


def namespace_of(organization: str) -> str:
    """The namespace of an organization: ``org-<slug>``."""
    return f"{NAMESPACE_PREFIX}{organization}"


@dataclasses.dataclass(frozen=True)
class TenantSpec:
    """What an environment should look like: the input of every backend."""

    organization: str
    owners: tuple[str, ...]
    quota: Quota
    labels: Mapping[str, str]
    generation: int = 1

    @property
    def namespace(self) -> str:
        """``org-<slug>``."""
        return namespace_of(self.organization)


@dataclasses.dataclass(frozen=True)
class Observation:
    """What a backend saw of an environment (empty for GitOps)."""

    namespace_phase: str = ""
    quota_hard: Mapping[str, str] = dataclasses.field(default_factory=dict)
    quota_used: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As stored in PostgreSQL."""
        return {
            "namespace_phase": self.namespace_phase,
            "quota_hard": dict(self.quota_hard),
            "quota_used": dict(self.quota_used),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Observation:
        """The inverse of :meth:`to_json`."""
        return cls(
            data.get("namespace_phase", ""),
            dict(data.get("quota_hard", {})),
            dict(data.get("quota_used", {})),
        )


class BackendError(Exception):
    """A backend call failed.

    Attributes:
        temporary: worth retrying as is (timeouts, 5xx, 429, conflicts); a permanent
            error (403, 422 ...) needs a change somewhere else first.
        reason: a CamelCase reason for conditions, e.g. ``Forbidden``.
        retry_after: seconds the server asked to wait, if it said.
        status: the HTTP status, 0 when there was no answer.
    """

    def __init__(
        self,
        message: str,
        *,
        temporary: bool,
        reason: str,
        retry_after: float | None = None,
        status: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.reason = reason
        self.retry_after = retry_after
        self.status = status

    def __str__(self) -> str:
        kind = "temporary" if self.temporary else "permanent"
        return f"{self.reason} ({kind}): {self.message}"


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The outcome of applying one object."""

    condition: ConditionType
    error: BackendError | None = None

    @property
    def ok(self) -> bool:
        """Whether the object is in place."""
        return self.error is None


@dataclasses.dataclass(frozen=True)
class ApplyReport:
    """The outcome of applying a whole environment."""

    steps: Sequence[StepResult]
    observation: Observation = dataclasses.field(default_factory=Observation)

    @property
    def errors(self) -> list[BackendError]:
        """The failures, in apply order."""
        return [s.error for s in self.steps if s.error is not None]

    @property
    def ok(self) -> bool:
        """Whether every object is in place."""
        return not self.errors


@dataclasses.dataclass(frozen=True)
class Environment:
    """One organization's environment: desired spec plus recorded status."""

    organization: str
    owners: tuple[str, ...]
    quota: Quota
    labels: Mapping[str, str]
    state: State
    backend: BackendKind
    generation: int
    observed_generation: int
    version: int
    conditions: tuple[Condition, ...]
    observation: Observation
    last_error: str
    failures: int
    create_time: dt.datetime
    update_time: dt.datetime
    last_reconcile_time: dt.datetime | None
    # Deprovisioning progress: "", "revoked" (bindings gone, traffic denied), "deleting".
    deletion_progress: str = ""
    next_reconcile_at: dt.datetime | None = None

    @property
    def namespace(self) -> str:
        """``org-<slug>``."""
        return namespace_of(self.organization)

    @property
    def etag(self) -> str:
        """Opaque; changes whenever the spec or the status changes."""
        return f'W/"{self.version}"'

    def spec(self) -> TenantSpec:
        """The desired state, as the backends take it."""
        return TenantSpec(
            self.organization, self.owners, self.quota, dict(self.labels), self.generation
        )


@dataclasses.dataclass(frozen=True)
class QuotaChange:
    """One entry of the quota history."""

    organization: str
    seq: int
    old_quota: Quota | None
    new_quota: Quota
    actor: str
    reason: str
    request_id: str
    create_time: dt.datetime


def unknown_conditions() -> tuple[Condition, ...]:
    """The conditions of an environment nothing has been applied to yet."""
    return tuple(
        Condition(t, ConditionStatus.UNKNOWN, "Pending", "not applied yet") for t in ConditionType
    )


def conditions_after(
    report: ApplyReport, previous: Sequence[Condition], now: dt.datetime
) -> tuple[Condition, ...]:
    """The conditions an apply leads to; transition times move only on a change."""
    before = {c.type: c for c in previous}
    results = {s.condition: s for s in report.steps}
    out: list[Condition] = []
    for kind in ConditionType:
        step = results.get(kind)
        if step is None:
            fresh = Condition(kind, ConditionStatus.UNKNOWN, "NotAttempted", "not attempted")
        elif step.error is None:
            fresh = Condition(kind, ConditionStatus.TRUE, "Applied", "")
        else:
            fresh = Condition(kind, ConditionStatus.FALSE, step.error.reason, step.error.message)
        old = before.get(kind)
        if old is not None and old.status == fresh.status:
            fresh = dataclasses.replace(fresh, last_transition_time=old.last_transition_time)
        else:
            fresh = dataclasses.replace(fresh, last_transition_time=now)
        out.append(fresh)
    return tuple(out)


def state_after(report: ApplyReport) -> State:
    """The state an apply leads to (never called for DELETING or DELETED): READY when
    every object is in place, else FAILED (reconciliation keeps retrying)."""
    return State.READY if report.ok else State.FAILED


def error_summary(report: ApplyReport) -> str:
    """``last_error``: the first failure, with what it concerned."""
    for step in report.steps:
        if step.error is not None:
            return f"{step.condition.value}: {step.error}"
    return ""
