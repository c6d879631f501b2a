"""The Kubernetes objects of a tenant, as plain dicts: one truth for every backend.

Per tenant: the Namespace ``org-<slug>`` (organization, manager and Pod Security
``restricted`` labels), a RoleBinding of the owners to the ClusterRole ``admin``, a
ResourceQuota, a LimitRange with container defaults and a NetworkPolicy that denies all
ingress and egress except traffic inside the namespace and DNS to kube-system's
kube-dns. The namespace gets ``agentready.io/isolation-ready=true`` only once every
guard object exists, so anything that schedules work into tenant namespaces can wait
for that label.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from provisioner.domain.model import ConditionType, TenantSpec

MANAGER = "agentready-provisioner"
ORGANIZATION_LABEL = "agentready.io/organization"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ISOLATION_LABEL = "agentready.io/isolation-ready"
POD_SECURITY_LEVEL = "restricted"

ROLE_BINDING_NAME = "agentready-owners"
QUOTA_NAME = "agentready-quota"
LIMIT_RANGE_NAME = "agentready-limits"
NETWORK_POLICY_NAME = "agentready-isolation"
OWNER_CLUSTER_ROLE = "admin"

# Container defaults of the LimitRange: what a container gets when it asks for nothing.
DEFAULT_LIMITS = {"cpu": "500m", "memory": "512Mi"}
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}

Manifest = dict[str, Any]


def _common_labels(spec: TenantSpec) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGER, ORGANIZATION_LABEL: spec.organization}


def namespace_labels(spec: TenantSpec, *, isolation_ready: bool) -> dict[str, str]:
    """The namespace's labels: the tenant's own first, then the managed ones on top."""
    labels = dict(spec.labels)
    labels.update(_common_labels(spec))
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = POD_SECURITY_LEVEL
        labels[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    if isolation_ready:
        labels[ISOLATION_LABEL] = "true"
    return labels


def namespace(spec: TenantSpec, *, isolation_ready: bool = False) -> Manifest:
    """The Namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": spec.namespace,
            "labels": namespace_labels(spec, isolation_ready=isolation_ready),
        },
    }


def isolation_marker(spec: TenantSpec, *, ready: bool) -> Manifest:
    """The namespace fields owned by the isolation marker alone (a separate manager)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": spec.namespace,
            "labels": {ISOLATION_LABEL: "true"} if ready else {},
        },
    }


def role_binding(spec: TenantSpec) -> Manifest:
    """The owners, bound to the ClusterRole ``admin`` inside the namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": ROLE_BINDING_NAME,
            "namespace": spec.namespace,
            "labels": _common_labels(spec),
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": OWNER_CLUSTER_ROLE,
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": owner}
            for owner in spec.owners
        ],
    }


def resource_quota(spec: TenantSpec) -> Manifest:
    """The quota: requests.cpu/limits.cpu, requests.memory/limits.memory, requests.storage."""
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": spec.namespace,
            "labels": _common_labels(spec),
        },
        "spec": {"hard": spec.quota.hard()},
    }


def limit_range(spec: TenantSpec) -> Manifest:
    """Container defaults, so pods that ask for nothing still fit the quota."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {
            "name": LIMIT_RANGE_NAME,
            "namespace": spec.namespace,
            "labels": _common_labels(spec),
        },
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": dict(DEFAULT_LIMITS),
                    "defaultRequest": dict(DEFAULT_REQUESTS),
                }
            ]
        },
    }


@dataclasses.dataclass(frozen=True)
class PlatformService:
    """A platform service tenant pods may reach through their default-deny policy:
    the pods labelled ``app.kubernetes.io/name=<app>`` in ``namespace``, on ``port``."""

    namespace: str
    app: str
    port: int


_PLATFORM_SERVICE = re.compile(
    r"(?P<namespace>[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)/"
    r"(?P<app>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?):(?P<port>[0-9]{1,5})"
)


def parse_platform_services(text: str) -> tuple[PlatformService, ...]:
    """``"agentready/agentready-config:50052,..."`` (empty: none).

    Raises:
        ValueError: an entry is not ``<namespace>/<app>:<port>``.
    """
    found: list[PlatformService] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _PLATFORM_SERVICE.fullmatch(entry)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{entry!r} is not <namespace>/<app>:<port>")
        found.append(PlatformService(match["namespace"], match["app"], int(match["port"])))
    return tuple(found)


def network_policy(
    spec: TenantSpec, *, deny_all: bool = False, platform: Sequence[PlatformService] = ()
) -> Manifest:
    """Default deny both ways; allowed: the namespace's own pods, DNS to kube-dns, and
    the ``platform`` services (ConfigService, so that tenant pods can watch their
    configuration).

    With ``deny_all`` (deprovisioning) the allow rules go too: nothing in or out.
    """
    body: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    if not deny_all:
        same_namespace: list[dict[str, Any]] = [{"podSelector": {}}]
        body["ingress"] = [{"from": same_namespace}]
        body["egress"] = [
            {"to": same_namespace},
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
            *(
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": target.namespace}
                            },
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": target.app}},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": target.port}],
                }
                for target in platform
            ),
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": spec.namespace,
            "labels": _common_labels(spec),
        },
        "spec": body,
    }


def guard_objects(
    spec: TenantSpec, *, platform: Sequence[PlatformService] = ()
) -> dict[ConditionType, Manifest]:
    """The guard objects, by the condition each one backs, in a stable order."""
    return {
        ConditionType.RBAC: role_binding(spec),
        ConditionType.QUOTA: resource_quota(spec),
        ConditionType.LIMIT_RANGE: limit_range(spec),
        ConditionType.NETWORK_POLICY: network_policy(spec, platform=platform),
    }
