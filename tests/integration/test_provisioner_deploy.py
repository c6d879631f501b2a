"""deploy/: the Provisioner's RBAC is exactly what its Kubernetes backend calls (plus
``bind`` on ``admin``), and the manifests are valid against the official schemas.

The calls are not listed by hand: the backend runs its whole repertoire against the
fake API (fresh apply, re-apply, repair, observation, a failed guard, deprovisioning)
and the fake's request log says which verbs on which resources it used.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from provisioner.adapters.kubernetes import KubernetesBackend
from provisioner.domain.model import Quota, TenantSpec
from servicekit.devstack import REPO_ROOT
from tests.fakekube import FakeKubeServer, RequestRecord

BASE = REPO_ROOT / "deploy" / "base" / "provisioner"
GROUPS = {
    "namespaces": "",
    "resourcequotas": "",
    "limitranges": "",
    "rolebindings": "rbac.authorization.k8s.io",
    "networkpolicies": "networking.k8s.io",
}


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [
        document
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((BASE / name).read_text())
        if document
    ]


def cluster_role() -> dict[str, Any]:
    (role,) = [m for m in manifests() if m["kind"] == "ClusterRole"]
    return role


def verbs_of(record: RequestRecord) -> set[str]:
    """The RBAC verbs a request is authorized as."""
    if record.method == "GET":
        return {"get"} if record.name else {"list"}
    if record.method == "PATCH":
        # Server-side apply that creates the object is authorized as create too.
        return {"patch", "create"} if record.status == 201 else {"patch"}
    return {{"POST": "create", "PUT": "update", "DELETE": "delete"}[record.method]}


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(namespace_deletion_delay=0.05) as server:
        yield server


async def exercise(kube: FakeKubeServer, kubeconfig: Path) -> None:
    backend = KubernetesBackend.from_config(kubeconfig, attempts=1, timeout=5)
    spec = TenantSpec("acme", ("alice",), Quota(), {})
    try:
        assert (await backend.apply(spec)).ok
        assert (await backend.apply(spec)).ok
        kube.delete_object("limitranges", "agentready-limits", spec.namespace)
        assert (await backend.apply(spec)).ok
        assert await backend.observe(spec) is not None
        kube.inject_error(422, kind="networkpolicies", times=1)
        assert not (await backend.apply(spec)).ok  # the isolation label is taken away
        await backend.revoke(spec)
        await backend.delete(spec)
        await backend.delete(spec)  # already terminating
        while not await backend.gone(spec):
            pass
    finally:
        await backend.close()


async def test_the_cluster_role_grants_exactly_what_the_code_calls(
    kube: FakeKubeServer, tmp_path: Path
) -> None:
    await exercise(kube, kube.write_kubeconfig(tmp_path / "kubeconfig"))
    used: set[tuple[str, str, str]] = set()
    for record in kube.requests():
        if record.resource:
            for verb in verbs_of(record):
                used.add((GROUPS[record.resource], record.resource, verb))
    granted: set[tuple[str, str, str]] = set()
    bind_rules = []
    for rule in cluster_role()["rules"]:
        if rule["resources"] == ["clusterroles"]:
            bind_rules.append(rule)
            continue
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted |= {(group, resource, verb) for verb in rule["verbs"]}
    assert granted == used, (
        f"granted but unused: {sorted(granted - used)}; used but not granted: "
        f"{sorted(used - granted)}"
    )
    # Binding owners to "admin" needs bind on exactly that ClusterRole, nothing wider.
    assert bind_rules == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": ["admin"],
        }
    ]


def test_the_manifests_are_valid_and_bound_together() -> None:
    objects = manifests()
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind) == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    policy_binding = by_kind["ValidatingAdmissionPolicyBinding"]["spec"]
    assert policy_binding["policyName"] == by_kind["ValidatingAdmissionPolicy"]["metadata"]["name"]
    assert policy_binding["validationActions"] == ["Deny"]
    binding = by_kind["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": by_kind["ServiceAccount"]["metadata"]["name"],
            "namespace": "agentready",
        }
    ]


def test_the_kustomization_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the schema validation still ran")
    out = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = list(yaml.safe_load_all(out))
    assert sorted(o["kind"] for o in rendered) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "agentready"
