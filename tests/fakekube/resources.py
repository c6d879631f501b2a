"""The resource types the fake serves, and the discovery documents built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Kubernetes version the fake claims to be and validates against. It matches the
#: installed client (37.x is generated from release-1.37) and the newest schema set
#: shipped by kubernetes-validate.
KUBERNETES_VERSION = "1.37.0"

_VERBS_NAMESPACED = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource (``resourcequotas``) and what the server knows about it.

    Attributes:
        group: API group, ``""`` for the core group.
        version: API version inside the group.
        plural: resource name in URLs.
        singular: singular name, for discovery.
        kind: object kind.
        namespaced: whether objects live inside a namespace.
        status_subresource: whether ``/status`` is served (and the main resource ignores
            status on writes, as the real registry does).
        has_generation: whether ``metadata.generation`` tracks spec changes.
        short_names: discovery short names.
        returns_deleted_object: DELETE answers with the deleted object instead of a
            ``Status`` (true for ResourceQuota and ServiceAccount on the real server;
            namespaces always answer with the object, since they terminate first).
    """

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    has_generation: bool = False
    short_names: tuple[str, ...] = ()
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        """``v1`` or ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as used in error messages (``rolebindings.rbac...``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        """Kind of a list response."""
        return f"{self.kind}List"


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        namespaced=False,
        status_subresource=True,
        short_names=("ns",),
    ),
    ResourceType(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        namespaced=True,
        status_subresource=True,
        has_generation=True,
        short_names=("quota",),
        returns_deleted_object=True,
    ),
    ResourceType(
        "",
        "v1",
        "limitranges",
        "limitrange",
        "LimitRange",
        namespaced=True,
        has_generation=True,
        short_names=("limits",),
    ),
    ResourceType(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        namespaced=True,
        short_names=("sa",),
        returns_deleted_object=True,
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        namespaced=True,
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        namespaced=True,
    ),
    ResourceType(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        namespaced=True,
        has_generation=True,
        short_names=("netpol",),
    ),
)

NAMESPACES = RESOURCE_TYPES[0]


def find_type(group: str, version: str, plural: str) -> ResourceType | None:
    """The served type for a URL's group, version and plural, if any."""
    for rt in RESOURCE_TYPES:
        if (rt.group, rt.version, rt.plural) == (group, version, plural):
            return rt
    return None


def resolve_type(name: str) -> ResourceType:
    """A type by plural (``resourcequotas``), singular, Kind or short name.

    Raises:
        KeyError: the fake does not serve such a type.
    """
    for rt in RESOURCE_TYPES:
        if name in (rt.plural, rt.singular, rt.kind, *rt.short_names):
            return rt
    raise KeyError(name)


def served_group_versions() -> list[tuple[str, str]]:
    """``(group, version)`` pairs of the named groups, in a stable order."""
    seen: list[tuple[str, str]] = []
    for rt in RESOURCE_TYPES:
        if rt.group and (rt.group, rt.version) not in seen:
            seen.append((rt.group, rt.version))
    return seen


def version_info() -> dict[str, Any]:
    """``GET /version``."""
    major, minor, _ = KUBERNETES_VERSION.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{KUBERNETES_VERSION}",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions() -> dict[str, Any]:
    """``GET /api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def _group_doc(group: str) -> dict[str, Any]:
    versions = [v for g, v in served_group_versions() if g == group]
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> dict[str, Any]:
    """``GET /apis``."""
    groups: list[str] = []
    for group, _ in served_group_versions():
        if group not in groups:
            groups.append(group)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(g) for g in groups],
    }


def api_group(group: str) -> dict[str, Any] | None:
    """``GET /apis/{group}``, or None when the group is not served."""
    if not any(g == group for g, _ in served_group_versions()):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` or ``GET /apis/{group}/{version}``, or None when not served."""
    resources: list[dict[str, Any]] = []
    for rt in RESOURCE_TYPES:
        if (rt.group, rt.version) != (group, version):
            continue
        verbs = list(_VERBS_NAMESPACED)
        if not rt.namespaced:
            verbs.remove("deletecollection")
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs,
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        resources.append(entry)
        if rt.status_subresource:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    if not resources:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }
