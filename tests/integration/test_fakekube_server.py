"""The fake Kubernetes API server, driven only through the official ``kubernetes`` client.

These tests pin the behaviour the Provisioner's tests rely on: the REST protocol for the
tenant kinds, server-side apply, errors as ``Status`` bodies, schema validation,
namespace termination, injected failures and latency, and the request log.

Nothing here depends on how fast the machine is: latency is asserted through the verb
and latency each request was charged (recorded in the request log), concurrency through
a rendezvous in the fake, and waits for something to happen are bounded generously.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, dynamic
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from tests.fakekube import KUBERNETES_VERSION, FakeKubeServer, RequestRecord
from tests.fakekube.__main__ import latency_rule

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
NS = "org-acme"


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(namespace_deletion_delay=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKubeServer, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def core(api_client: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def rbac(api_client: ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client)


@pytest.fixture
def net(api_client: ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(api_client)


@pytest.fixture
def dyn(api_client: ApiClient) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> str:
    core.create_namespace({"metadata": {"name": NS, "labels": {"agentready.io/org": "acme"}}})
    return NS


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def expect_api_error(call: Callable[[], object], code: int, reason: str) -> dict[str, Any]:
    """Run ``call``; assert it fails with ``code`` and a Status of ``reason``."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == code
    status = status_of(info.value)
    assert status["kind"] == "Status"
    assert status["status"] == "Failure"
    assert status["reason"] == reason
    assert status["code"] == code
    return status


def quota_body(name: str = "quota", cpu: str = "10") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name},
        "spec": {"hard": {"cpu": cpu, "memory": "20Gi", "requests.storage": "10Gi"}},
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``predicate``; the timeout only bounds a failing test, a passing one returns
    as soon as it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- connection ---------------------------------------------------------------------------


def test_kubeconfig_is_accepted_by_both_loaders(kube: FakeKubeServer, kubeconfig: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    assert configuration.host == kube.url
    with ApiClient(configuration) as api:
        info = client.VersionApi(api).get_code()
    assert info.git_version == f"v{KUBERNETES_VERSION}"

    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        assert client.CoreV1Api(api).list_namespace().items == []


def test_requests_without_the_token_are_unauthorized(kube: FakeKubeServer) -> None:
    configuration = client.Configuration(host=kube.url)
    with ApiClient(configuration) as api:
        status = expect_api_error(
            lambda: client.CoreV1Api(api).list_namespace(), 401, "Unauthorized"
        )
    assert status["message"] == "Unauthorized"


def test_dynamic_client_discovers_every_served_kind(dyn: dynamic.DynamicClient) -> None:
    for api_version, kind, namespaced in [
        ("v1", "Namespace", False),
        ("v1", "ResourceQuota", True),
        ("v1", "LimitRange", True),
        ("v1", "ServiceAccount", True),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", True),
        ("rbac.authorization.k8s.io/v1", "Role", True),
        ("networking.k8s.io/v1", "NetworkPolicy", True),
    ]:
        resource = dyn.resources.get(api_version=api_version, kind=kind)
        assert resource.namespaced is namespaced
        assert "patch" in resource.verbs


# -- CRUD of every kind -------------------------------------------------------------------


def test_namespace_create_get_list_delete(core: client.CoreV1Api) -> None:
    created = core.create_namespace({"metadata": {"name": "org-one", "labels": {"a": "b"}}})
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"a": "b", "kubernetes.io/metadata.name": "org-one"}
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) > 0

    fetched = core.read_namespace("org-one")
    assert fetched.metadata.uid == created.metadata.uid
    assert fetched.metadata.resource_version == created.metadata.resource_version
    assert [n.metadata.name for n in core.list_namespace().items] == ["org-one"]

    deleted = core.delete_namespace("org-one")
    assert deleted["status"]["phase"] == "Terminating"
    assert deleted["metadata"]["deletionTimestamp"]


KindCase = tuple[
    str,  # name of the case
    Callable[[Any, Any, Any], Callable[[str, dict[str, Any]], Any]],  # create
    Callable[[Any, Any, Any], Callable[[str, str], Any]],  # read
    Callable[[Any, Any, Any], Callable[[str], Any]],  # list
    Callable[[Any, Any, Any], Callable[[str, str], Any]],  # delete
    dict[str, Any],  # body
]

KIND_CASES: list[KindCase] = [
    (
        "resourcequota",
        lambda c, r, n: lambda ns, b: c.create_namespaced_resource_quota(ns, b),
        lambda c, r, n: c.read_namespaced_resource_quota,
        lambda c, r, n: c.list_namespaced_resource_quota,
        lambda c, r, n: c.delete_namespaced_resource_quota,
        {"metadata": {"name": "obj", "labels": {"app": "x"}}, "spec": {"hard": {"cpu": "10"}}},
    ),
    (
        "limitrange",
        lambda c, r, n: lambda ns, b: c.create_namespaced_limit_range(ns, b),
        lambda c, r, n: c.read_namespaced_limit_range,
        lambda c, r, n: c.list_namespaced_limit_range,
        lambda c, r, n: c.delete_namespaced_limit_range,
        {
            "metadata": {"name": "obj", "labels": {"app": "x"}},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "500m"},
                        "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                    }
                ]
            },
        },
    ),
    (
        "serviceaccount",
        lambda c, r, n: lambda ns, b: c.create_namespaced_service_account(ns, b),
        lambda c, r, n: c.read_namespaced_service_account,
        lambda c, r, n: c.list_namespaced_service_account,
        lambda c, r, n: c.delete_namespaced_service_account,
        {"metadata": {"name": "obj", "labels": {"app": "x"}}},
    ),
    (
        "rolebinding",
        lambda c, r, n: lambda ns, b: r.create_namespaced_role_binding(ns, b),
        lambda c, r, n: r.read_namespaced_role_binding,
        lambda c, r, n: r.list_namespaced_role_binding,
        lambda c, r, n: r.delete_namespaced_role_binding,
        {
            "metadata": {"name": "obj", "labels": {"app": "x"}},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admin",
            },
            "subjects": [{"kind": "User", "name": "owner@example.com"}],
        },
    ),
    (
        "role",
        lambda c, r, n: lambda ns, b: r.create_namespaced_role(ns, b),
        lambda c, r, n: r.read_namespaced_role,
        lambda c, r, n: r.list_namespaced_role,
        lambda c, r, n: r.delete_namespaced_role,
        {
            "metadata": {"name": "obj", "labels": {"app": "x"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    ),
    (
        "networkpolicy",
        lambda c, r, n: lambda ns, b: n.create_namespaced_network_policy(ns, b),
        lambda c, r, n: n.read_namespaced_network_policy,
        lambda c, r, n: n.list_namespaced_network_policy,
        lambda c, r, n: n.delete_namespaced_network_policy,
        {
            "metadata": {"name": "obj", "labels": {"app": "x"}},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
            },
        },
    ),
]


@pytest.mark.parametrize("case", KIND_CASES, ids=[c[0] for c in KIND_CASES])
def test_create_get_list_delete_every_kind(
    case: KindCase,
    core: client.CoreV1Api,
    rbac: client.RbacAuthorizationV1Api,
    net: client.NetworkingV1Api,
    namespace: str,
) -> None:
    _, create, read, list_, delete, body = case
    created = create(core, rbac, net)(namespace, body)
    assert created.metadata.namespace == namespace
    assert created.metadata.uid
    rv = int(created.metadata.resource_version)

    fetched = read(core, rbac, net)("obj", namespace)
    assert fetched.metadata.uid == created.metadata.uid
    assert fetched.metadata.labels == {"app": "x"}

    listed = list_(core, rbac, net)(namespace)
    assert [item.metadata.name for item in listed.items] == ["obj"]
    assert int(listed.metadata.resource_version) >= rv

    delete(core, rbac, net)("obj", namespace)
    expect_api_error(lambda: read(core, rbac, net)("obj", namespace), 404, "NotFound")
    assert list_(core, rbac, net)(namespace).items == []


def test_delete_answers_like_the_real_server(
    core: client.CoreV1Api, rbac: client.RbacAuthorizationV1Api, namespace: str
) -> None:
    core.create_namespaced_resource_quota(namespace, quota_body())
    deleted_quota = core.delete_namespaced_resource_quota("quota", namespace)
    assert deleted_quota.metadata.name == "quota"  # quotas answer with the object

    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "owners"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admin",
            },
        },
    )
    status = rbac.delete_namespaced_role_binding("owners", namespace)
    assert status["kind"] == "Status"
    assert status["status"] == "Success"
    assert status["details"]["name"] == "owners"


def test_list_filters_by_label_selector(core: client.CoreV1Api) -> None:
    for name, labels in [
        ("org-a", {"tier": "free", "team": "x"}),
        ("org-b", {"tier": "pro"}),
        ("org-c", {}),
    ]:
        core.create_namespace({"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        return [n.metadata.name for n in core.list_namespace(label_selector=selector).items]

    assert names("tier=free") == ["org-a"]
    assert names("tier") == ["org-a", "org-b"]
    assert names("tier=pro,!team") == ["org-b"]
    assert names("tier!=pro") == ["org-a", "org-c"]
    assert names("tier in (free,pro),team") == ["org-a"]
    assert names("kubernetes.io/metadata.name=org-c") == ["org-c"]


def test_list_pages_with_limit_and_continue(core: client.CoreV1Api, namespace: str) -> None:
    for index in range(5):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": f"sa-{index}"}})
    first = core.list_namespaced_service_account(namespace, limit=2)
    assert [i.metadata.name for i in first.items] == ["sa-0", "sa-1"]
    assert first.metadata.remaining_item_count == 3
    rest = core.list_namespaced_service_account(
        namespace, limit=10, _continue=first.metadata._continue
    )
    assert [i.metadata.name for i in rest.items] == ["sa-2", "sa-3", "sa-4"]
    assert rest.metadata._continue is None


# -- server-side apply and patches ----------------------------------------------------------


def test_server_side_apply_creates_is_idempotent_and_updates(
    core: client.CoreV1Api, namespace: str
) -> None:
    created = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        quota_body(),
        field_manager="provisioner",
        force=True,
        _content_type=APPLY,
    )
    assert created.spec.hard["cpu"] == "10"
    assert created.status.hard == {"cpu": "10", "memory": "20Gi", "requests.storage": "10Gi"}
    assert created.status.used == {"cpu": "0", "memory": "0", "requests.storage": "0"}
    [entry] = created.metadata.managed_fields
    assert (entry.manager, entry.operation) == ("provisioner", "Apply")
    assert "f:cpu" in entry.fields_v1["f:spec"]["f:hard"]

    again = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        quota_body(),
        field_manager="provisioner",
        force=True,
        _content_type=APPLY,
    )
    assert again.metadata.resource_version == created.metadata.resource_version

    changed = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        quota_body(cpu="20"),
        field_manager="provisioner",
        force=True,
        _content_type=APPLY,
    )
    assert int(changed.metadata.resource_version) > int(created.metadata.resource_version)
    assert changed.spec.hard["cpu"] == "20"
    assert changed.status.hard["cpu"] == "20"
    assert changed.metadata.generation == 2
    assert core.read_namespaced_resource_quota("quota", namespace).spec.hard["cpu"] == "20"


def test_server_side_apply_through_the_dynamic_client(
    dyn: dynamic.DynamicClient, namespace: str
) -> None:
    policies = dyn.resources.get(api_version="networking.k8s.io/v1", kind="NetworkPolicy")
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    first = dyn.server_side_apply(policies, body=body, field_manager="provisioner")
    second = dyn.server_side_apply(policies, body=body, field_manager="provisioner")
    assert first.metadata.resourceVersion == second.metadata.resourceVersion
    fetched = policies.get(name="default-deny", namespace=namespace)
    assert fetched.spec.policyTypes == ["Ingress", "Egress"]


def test_apply_without_field_manager_is_rejected(core: client.CoreV1Api, namespace: str) -> None:
    status = expect_api_error(
        lambda: core.patch_namespaced_resource_quota(
            "quota", namespace, quota_body(), _content_type=APPLY
        ),
        422,
        "Invalid",
    )
    assert status["details"]["causes"][0]["field"] == "fieldManager"
    expect_api_error(
        lambda: core.read_namespaced_resource_quota("quota", namespace), 404, "NotFound"
    )


def test_apply_conflicts_with_another_manager_unless_forced(
    core: client.CoreV1Api, namespace: str
) -> None:
    # Someone edits the quota by hand (an Update by another manager) ...
    core.create_namespaced_resource_quota(
        namespace, quota_body(cpu="10"), field_manager="kubectl-edit"
    )
    # ... so a non-forced apply that changes that field conflicts ...
    status = expect_api_error(
        lambda: core.patch_namespaced_resource_quota(
            "quota",
            namespace,
            quota_body(cpu="20"),
            field_manager="provisioner",
            _content_type=APPLY,
        ),
        409,
        "Conflict",
    )
    assert {c["field"] for c in status["details"]["causes"]} == {".spec.hard.cpu"}
    assert core.read_namespaced_resource_quota("quota", namespace).spec.hard["cpu"] == "10"

    # ... and a forced one takes the field over.
    forced = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        quota_body(cpu="20"),
        field_manager="provisioner",
        force=True,
        _content_type=APPLY,
    )
    assert forced.spec.hard["cpu"] == "20"
    owners = {m.manager: m.fields_v1 for m in forced.metadata.managed_fields}
    assert "f:cpu" in owners["provisioner"]["f:spec"]["f:hard"]
    assert "f:cpu" not in owners["kubectl-edit"]["f:spec"]["f:hard"]


def test_apply_removes_fields_the_manager_stopped_applying(
    core: client.CoreV1Api, namespace: str
) -> None:
    body = quota_body()
    body["metadata"]["labels"] = {"keep": "yes", "drop": "yes"}
    core.patch_namespaced_resource_quota(
        "quota", namespace, body, field_manager="provisioner", _content_type=APPLY
    )
    del body["metadata"]["labels"]["drop"]
    del body["spec"]["hard"]["requests.storage"]
    after = core.patch_namespaced_resource_quota(
        "quota", namespace, body, field_manager="provisioner", _content_type=APPLY
    )
    assert after.metadata.labels == {"keep": "yes"}
    assert set(after.spec.hard) == {"cpu", "memory"}
    assert set(after.status.hard) == {"cpu", "memory"}


def test_merge_patch_updates_and_a_no_op_keeps_the_version(
    core: client.CoreV1Api, namespace: str
) -> None:
    created = core.create_namespaced_resource_quota(namespace, quota_body())
    patched = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        {"metadata": {"labels": {"isolation-ready": "true"}}, "spec": {"hard": {"memory": None}}},
        _content_type=MERGE,
    )
    assert patched.metadata.labels == {"isolation-ready": "true"}
    assert "memory" not in patched.spec.hard
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

    same = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        {"metadata": {"labels": {"isolation-ready": "true"}}},
        _content_type=MERGE,
    )
    assert same.metadata.resource_version == patched.metadata.resource_version


def test_default_patch_content_type_and_json_patch(core: client.CoreV1Api, namespace: str) -> None:
    # Without _content_type the client sends a dict body as strategic merge patch.
    core.patch_namespace(namespace, {"metadata": {"labels": {"isolation-ready": "true"}}})
    assert core.read_namespace(namespace).metadata.labels["isolation-ready"] == "true"
    core.patch_namespace(namespace, [{"op": "remove", "path": "/metadata/labels/isolation-ready"}])
    assert "isolation-ready" not in core.read_namespace(namespace).metadata.labels


def test_status_subresource_keeps_spec_and_main_resource_keeps_status(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_resource_quota(namespace, quota_body())
    core.patch_namespaced_resource_quota_status(
        "quota", namespace, {"status": {"used": {"cpu": "2"}}}, _content_type=MERGE
    )
    quota = core.read_namespaced_resource_quota("quota", namespace)
    assert quota.status.used["cpu"] == "2"
    updated = core.patch_namespaced_resource_quota(
        "quota",
        namespace,
        {"spec": {"hard": {"cpu": "12"}}, "status": {"used": {"cpu": "9"}}},
        _content_type=MERGE,
    )
    assert updated.status.hard["cpu"] == "12"
    assert updated.status.used["cpu"] == "2"


# -- errors -------------------------------------------------------------------------------


def test_missing_object_and_missing_namespace_are_404(
    core: client.CoreV1Api, namespace: str
) -> None:
    status = expect_api_error(
        lambda: core.read_namespaced_resource_quota("none", namespace), 404, "NotFound"
    )
    assert status["details"] == {"name": "none", "kind": "resourcequotas"}
    assert status["message"] == 'resourcequotas "none" not found'

    status = expect_api_error(
        lambda: core.create_namespaced_resource_quota("org-missing", quota_body()),
        404,
        "NotFound",
    )
    assert status["details"] == {"name": "org-missing", "kind": "namespaces"}
    expect_api_error(lambda: core.read_namespace("org-missing"), 404, "NotFound")


def test_create_twice_is_409_already_exists(
    rbac: client.RbacAuthorizationV1Api, namespace: str
) -> None:
    body = {
        "metadata": {"name": "owners"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "admin",
        },
    }
    rbac.create_namespaced_role_binding(namespace, body)
    status = expect_api_error(
        lambda: rbac.create_namespaced_role_binding(namespace, body), 409, "AlreadyExists"
    )
    assert status["details"]["group"] == "rbac.authorization.k8s.io"
    assert status["details"]["kind"] == "rolebindings"


def test_replace_with_a_stale_resource_version_is_409_conflict(
    core: client.CoreV1Api, namespace: str
) -> None:
    quota = core.create_namespaced_resource_quota(namespace, quota_body())
    stale = quota.metadata.resource_version
    quota.spec.hard["cpu"] = "11"
    replaced = core.replace_namespaced_resource_quota("quota", namespace, quota)
    assert int(replaced.metadata.resource_version) > int(stale)

    quota.spec.hard["cpu"] = "12"  # still carries the stale resourceVersion
    status = expect_api_error(
        lambda: core.replace_namespaced_resource_quota("quota", namespace, quota), 409, "Conflict"
    )
    assert "the object has been modified" in status["message"]
    assert core.read_namespaced_resource_quota("quota", namespace).spec.hard["cpu"] == "11"


def test_role_binding_role_ref_is_immutable(
    rbac: client.RbacAuthorizationV1Api, namespace: str
) -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "owners"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "admin",
        },
    }
    rbac.create_namespaced_role_binding(namespace, body)
    body["roleRef"]["name"] = "edit"
    status = expect_api_error(
        lambda: rbac.replace_namespaced_role_binding("owners", namespace, body), 422, "Invalid"
    )
    assert status["details"]["causes"][0]["field"] == "roleRef"


INVALID_CASES = [
    ("v1", "ResourceQuota", {"spec": {"hard": {"cpu": "10"}, "hardd": {}}}, "spec.hardd"),
    ("v1", "ResourceQuota", {"spec": {"hard": {"cpu": "ten"}}}, "spec.hard.cpu"),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        {"spec": {"podSelector": {}, "policyTypes": "Ingress"}},
        "spec.policyTypes",
    ),
    (
        "v1",
        "LimitRange",
        {"spec": {"limits": [{"type": "Container", "max": {"cpu": "1 core"}}]}},
        "spec.limits[0].max.cpu",
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", {}, "roleRef"),
    ("v1", "ServiceAccount", {"metadata": {"labels": {"org": "Acme Corp"}}}, "metadata.labels"),
]


@pytest.mark.parametrize(
    ("api_version", "kind", "extra", "field"),
    INVALID_CASES,
    ids=[f"{c[1]}-{c[3]}" for c in INVALID_CASES],
)
def test_schema_invalid_object_is_422_naming_the_field_and_not_stored(
    dyn: dynamic.DynamicClient,
    namespace: str,
    api_version: str,
    kind: str,
    extra: dict[str, Any],
    field: str,
) -> None:
    # The typed client refuses such bodies locally; the dynamic one sends them as they are.
    resource = dyn.resources.get(api_version=api_version, kind=kind)
    body: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "bad", **extra.get("metadata", {})},
        **{k: v for k, v in extra.items() if k != "metadata"},
    }
    status = expect_api_error(
        lambda: resource.create(body=body, namespace=namespace), 422, "Invalid"
    )
    assert field in [c["field"] for c in status["details"]["causes"]]
    assert status["details"]["kind"] == kind
    expect_api_error(lambda: resource.get(name="bad", namespace=namespace), 404, "NotFound")


def test_namespace_names_must_be_dns_labels(core: client.CoreV1Api) -> None:
    for name in ["org-" + "a" * 60, "Org_Acme"]:
        status = expect_api_error(
            lambda n=name: core.create_namespace({"metadata": {"name": n}}), 422, "Invalid"
        )
        assert status["details"]["causes"][0]["field"] == "metadata.name"
    assert core.create_namespace({"metadata": {"name": "org-" + "a" * 59}}).metadata.name


def test_unknown_paths_and_methods(api_client: ApiClient) -> None:
    def call(method: str, path: str) -> tuple[int, dict[str, Any]]:
        # The client's generic request path, with its own auth settings.
        method, url, headers, body, _ = api_client.param_serialize(
            method, path, auth_settings=["BearerToken"]
        )
        response = api_client.call_api(method, url, header_params=headers, body=body)
        return response.status, json.loads(response.read())

    status, body = call("GET", "/api/v1/namespaces/x/pods")
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = call("GET", "/apis/apps/v1")
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = call("POST", "/api/v1/resourcequotas")
    assert (status, body["reason"]) == (405, "MethodNotAllowed")


# -- namespace termination ---------------------------------------------------------------


def test_deleted_namespace_terminates_then_disappears_with_its_objects(
    kube: FakeKubeServer, core: client.CoreV1Api, net: client.NetworkingV1Api, namespace: str
) -> None:
    core.create_namespaced_resource_quota(namespace, quota_body())
    net.create_namespaced_network_policy(
        namespace, {"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}
    )
    # Held Terminating however slow the checks below are; let go further down (the
    # delay applies to namespaces already terminating).
    kube.namespace_deletion_delay = 60
    core.delete_namespace(namespace)

    terminating = core.read_namespace(namespace)
    assert terminating.status.phase == "Terminating"
    assert terminating.metadata.deletion_timestamp is not None
    # Deleting again while it terminates is a conflict, as on the real server.
    expect_api_error(lambda: core.delete_namespace(namespace), 409, "Conflict")
    assert core.read_namespaced_resource_quota("quota", namespace).metadata.name == "quota"

    kube.namespace_deletion_delay = 0.2

    def gone() -> bool:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    assert wait_until(gone)
    expect_api_error(
        lambda: core.read_namespaced_resource_quota("quota", namespace), 404, "NotFound"
    )
    assert net.list_namespaced_network_policy(namespace).items == []
    assert kube.objects() == []


def test_creating_in_a_terminating_namespace_is_forbidden(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.namespace_deletion_delay = 30  # stays Terminating for the whole test
    core.delete_namespace(namespace)
    for create in (
        lambda: core.create_namespaced_resource_quota(namespace, quota_body()),
        lambda: core.patch_namespaced_resource_quota(
            "quota", namespace, quota_body(), field_manager="p", _content_type=APPLY
        ),
    ):
        status = expect_api_error(create, 403, "Forbidden")
        assert "being terminated" in status["message"]
        assert status["details"]["causes"][0]["reason"] == "NamespaceTerminating"


# -- failure injection --------------------------------------------------------------------


def test_injected_error_hits_only_matching_requests_then_clears(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    fault = kube.inject_error(500, method="POST", kind="ResourceQuota", times=1)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "sa"}})
    status = expect_api_error(
        lambda: core.create_namespaced_resource_quota(namespace, quota_body()),
        500,
        "InternalError",
    )
    assert status["message"]
    assert fault.hits == 1
    assert core.create_namespaced_resource_quota(namespace, quota_body()).metadata.name

    kube.inject_error(409, path=r"/limitranges", times=None, reason="Conflict")
    for _ in range(2):
        expect_api_error(lambda: core.list_namespaced_limit_range(namespace), 409, "Conflict")
    kube.clear_faults()
    assert core.list_namespaced_limit_range(namespace).items == []


def test_throttled_write_is_429_with_retry_after(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.inject_throttle(retry_after=7, kind="resourcequotas", method="POST")
    with pytest.raises(ApiException) as info:
        core.create_namespaced_resource_quota(namespace, quota_body())
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "7"
    status = status_of(info.value)
    assert status["reason"] == "TooManyRequests"
    assert status["details"]["retryAfterSeconds"] == 7


def test_throttled_read_is_retried_by_the_client_itself(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    # urllib3's default Retry honours Retry-After for idempotent methods: the caller
    # never sees this 429. Writes (above) are not retried.
    kube.inject_throttle(retry_after=0, kind="namespaces", method="GET")
    assert core.read_namespace(namespace).metadata.name == namespace
    statuses = [r.status for r in kube.requests(method="GET", resource="namespaces")]
    assert statuses == [429, 200]


def test_hung_server_times_out_the_client_and_the_write_lands_later(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.inject_delay(1.0, method="POST", kind="serviceaccounts")
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.create_namespaced_service_account(
            namespace, {"metadata": {"name": "slow"}}, _request_timeout=0.2
        )
    # Like a real server, the request still completes after the client gave up.
    assert wait_until(lambda: kube.get_object("ServiceAccount", "slow", namespace) is not None)


def test_a_held_request_waits_until_released_then_is_served(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    held = kube.inject_delay(300.0, method="POST", kind="serviceaccounts")
    done = threading.Event()

    def create() -> None:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "held"}})
        done.set()

    worker = threading.Thread(target=create, daemon=True)
    worker.start()
    assert held.wait_held(30)
    assert kube.get_object("ServiceAccount", "held", namespace) is None  # not served yet
    assert not done.is_set()
    held.release()
    assert done.wait(60)  # long before its 300 s were up
    assert kube.get_object("ServiceAccount", "held", namespace) is not None
    worker.join(10)


def test_hung_reads_are_retried_by_urllib3_before_failing(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.inject_delay(1.0, method="GET", kind="namespaces", times=None)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_namespace(namespace, _request_timeout=0.1)
    kube.clear_faults()
    # 1 try + 3 retries (urllib3's default), all of which reached the server.
    assert wait_until(lambda: len(kube.requests(method="GET", resource="namespaces")) == 4)


# -- latency and concurrency -----------------------------------------------------------------
#
# Latencies are asserted as charged (RequestRecord.verb and .latency), never by timing a
# call: the only clock-based checks are that no answer left before its latency was up
# (duration >= latency), which a slow machine cannot break.

# The benchmark's model, with distinct figures where the verbs must be told apart.
CREATE_NAMESPACE, CREATE, UPDATE = 0.05, 0.03, 0.02


def charged(record: RequestRecord) -> tuple[str, str, int, str, float]:
    """What a test asserts about a request's latency: method, resource, status, verb,
    latency."""
    return (record.method, record.resource, record.status, record.verb, record.latency)


def test_latency_is_added_per_kind(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.set_latency(0.02, namespaces=0.05)
    core.read_namespace(namespace)
    core.list_namespaced_resource_quota(namespace)
    namespace_call, quota_call = kube.requests(method="GET")
    assert charged(namespace_call) == ("GET", "namespaces", 200, "get", 0.05)
    assert charged(quota_call) == ("GET", "resourcequotas", 200, "list", 0.02)
    # The latency is really waited out: neither answer left before it was up.
    assert namespace_call.duration >= namespace_call.latency
    assert quota_call.duration >= quota_call.latency

    kube.clear_latency()
    kube.clear_requests()
    core.read_namespace(namespace)
    [fast] = kube.requests()
    assert charged(fast) == ("GET", "namespaces", 200, "get", 0.0)  # no latency added


def test_apply_creating_a_namespace_is_charged_create_and_relabelling_it_update(
    kube: FakeKubeServer, core: client.CoreV1Api
) -> None:
    kube.set_latency_rules(
        {"create:namespaces": CREATE_NAMESPACE, "create": CREATE, "update": UPDATE}
    )
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "org-ssa"}}
    core.patch_namespace(
        "org-ssa", namespace, field_manager="provisioner", force=True, _content_type=APPLY
    )
    # The isolation-ready label, applied by another manager to the existing namespace.
    core.patch_namespace(
        "org-ssa",
        {**namespace, "metadata": {"name": "org-ssa", "labels": {"isolation-ready": "true"}}},
        field_manager="provisioner-isolation",
        force=True,
        _content_type=APPLY,
    )
    core.create_namespaced_resource_quota("org-ssa", quota_body())

    created, relabelled, quota = kube.requests()
    assert charged(created) == ("PATCH", "namespaces", 201, "create", CREATE_NAMESPACE)
    assert charged(relabelled) == ("PATCH", "namespaces", 200, "update", UPDATE)
    assert charged(quota) == ("POST", "resourcequotas", 201, "create", CREATE)
    assert all(r.duration >= r.latency for r in (created, relabelled, quota))
    labels = core.read_namespace("org-ssa").metadata.labels
    assert labels["isolation-ready"] == "true"


def test_latency_lookup_order(
    kube: FakeKubeServer, core: client.CoreV1Api, api_client: ApiClient
) -> None:
    # Each figure is a distinct number of milliseconds, so a wrong lookup shows.
    kube.set_latency(0.001, namespaces=0.002, resourcequotas=0.003)
    kube.set_latency_rules({"create": 0.004, "create:Namespace": 0.005, "get": 0.006})
    assert kube.latency_rules() == {
        "": 0.001,
        "namespaces": 0.002,
        "resourcequotas": 0.003,
        "create": 0.004,
        "create:namespaces": 0.005,  # normalised to the plural
        "get": 0.006,
    }
    core.create_namespace({"metadata": {"name": "org-order"}})  # verb:resource
    core.create_namespaced_resource_quota("org-order", quota_body())  # verb over resource
    core.create_namespaced_service_account("org-order", {"metadata": {"name": "sa"}})  # verb
    core.read_namespaced_resource_quota("quota", "org-order")  # verb over resource
    core.list_namespaced_resource_quota("org-order")  # resource over default
    core.patch_namespace("org-order", {"metadata": {"labels": {"a": "b"}}})  # resource
    core.list_namespaced_service_account("org-order")  # default
    client.CoreV1Api(api_client).get_api_resources()  # discovery: nothing

    assert [(r.verb, r.resource, r.latency) for r in kube.requests()] == [
        ("create", "namespaces", 0.005),
        ("create", "resourcequotas", 0.004),
        ("create", "serviceaccounts", 0.004),
        ("get", "resourcequotas", 0.006),
        ("list", "resourcequotas", 0.003),
        ("update", "namespaces", 0.002),
        ("list", "serviceaccounts", 0.001),
        ("", "", 0.0),
    ]


def test_every_request_is_charged_the_verb_it_served(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.clear_requests()
    core.patch_namespaced_resource_quota(  # apply of a missing object
        "quota", namespace, quota_body(), field_manager="p", _content_type=APPLY
    )
    core.patch_namespaced_resource_quota(  # apply of an existing one
        "quota", namespace, quota_body(cpu="20"), field_manager="p", _content_type=APPLY
    )
    quota = core.read_namespaced_resource_quota("quota", namespace)
    core.replace_namespaced_resource_quota("quota", namespace, quota)
    core.patch_namespaced_resource_quota_status(
        "quota", namespace, {"status": {"used": {"cpu": "1"}}}, _content_type=MERGE
    )
    # Failed writes: an apply that would have created (no fieldManager), a merge patch
    # of an existing object that conflicts on its resourceVersion.
    expect_api_error(
        lambda: core.patch_namespaced_limit_range(
            "limits", namespace, {"metadata": {"name": "limits"}}, _content_type=APPLY
        ),
        422,
        "Invalid",
    )
    expect_api_error(
        lambda: core.patch_namespaced_resource_quota(
            "quota", namespace, {"metadata": {"resourceVersion": "1"}}, _content_type=MERGE
        ),
        409,
        "Conflict",
    )
    expect_api_error(
        lambda: core.list_namespaced_resource_quota(namespace, watch=True),
        405,
        "MethodNotAllowed",
    )
    core.delete_namespaced_resource_quota("quota", namespace)
    core.delete_collection_namespaced_service_account(namespace)

    assert [(r.method, r.status, r.verb) for r in kube.requests()] == [
        ("PATCH", 201, "create"),
        ("PATCH", 200, "update"),
        ("GET", 200, "get"),
        ("PUT", 200, "update"),
        ("PATCH", 200, "update"),
        ("PATCH", 422, "create"),
        ("PATCH", 409, "update"),
        ("GET", 405, "watch"),
        ("DELETE", 200, "delete"),
        ("DELETE", 200, "delete"),
    ]


def test_latency_settings_from_the_constructor_and_bad_rules() -> None:
    kube = FakeKubeServer(
        latency=0.01,
        latency_by_resource={"Namespace": 0.05},
        latency_rules={"update": 0.02, "create:rolebinding": 0.03},
    )
    assert kube.latency_rules() == {
        "": 0.01,
        "namespaces": 0.05,
        "update": 0.02,
        "create:rolebindings": 0.03,
    }
    for bad in ("patch", "create:pods", "pods", "create:"):
        with pytest.raises(ValueError, match="latency rule"):
            kube.set_latency_rules({bad: 0.1})
    with pytest.raises(ValueError, match="negative"):
        kube.set_latency_rules({"get": -1})
    kube.clear_latency()
    assert kube.latency_rules() == {"": 0.0}


def test_command_line_latency_rules() -> None:
    assert latency_rule("create:Namespace=0.05") == ("create:namespaces", 0.05)
    assert latency_rule("update=0.02") == ("update", 0.02)
    assert latency_rule("networkpolicy=0.5") == ("networkpolicies", 0.5)
    for bad in ("create", "create=soon", "crate:namespaces=1", "create:pods=1", "get=-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            latency_rule(bad)


def test_slow_calls_overlap_instead_of_queueing(
    kube: FakeKubeServer, api_client: ApiClient
) -> None:
    kube.set_latency(namespaces=0.3)
    # Each create is held, once served and while it waits out its latency, until both
    # are held together: if the fake served them, or waited out their latency, one at
    # a time, the rendezvous could never fill and would break (after 10 s).
    meeting = kube.inject_rendezvous(2, method="POST", kind="namespaces")
    core = client.CoreV1Api(api_client)
    start = threading.Barrier(2)

    def create(name: str) -> str:
        start.wait()
        return str(core.create_namespace({"metadata": {"name": name}}).metadata.name)

    with ThreadPoolExecutor(max_workers=2) as pool:
        names = sorted(pool.map(create, ["org-x", "org-y"]))
    assert names == ["org-x", "org-y"]
    first, second = kube.requests(method="POST")
    assert (meeting.hits, meeting.broken) == (2, False)  # held together, in their latency
    assert second.started < first.finished  # so both were in flight together
    assert [(r.verb, r.latency) for r in (first, second)] == [("create", 0.3)] * 2
    assert all(r.duration >= r.latency for r in (first, second))


def test_rendezvous_breaks_when_requests_come_one_at_a_time(
    kube: FakeKubeServer, core: client.CoreV1Api
) -> None:
    # The check above is not vacuous: requests that never overlap break the rendezvous.
    meeting = kube.inject_rendezvous(2, method="POST", kind="namespaces", timeout=0.2)
    core.create_namespace({"metadata": {"name": "org-one"}})
    core.create_namespace({"metadata": {"name": "org-two"}})
    assert (meeting.hits, meeting.broken) == (2, True)
    assert [r.status for r in kube.requests(method="POST")] == [201, 201]


# -- request log and direct store access --------------------------------------------------


def test_request_log_records_each_call_in_order(
    kube: FakeKubeServer, core: client.CoreV1Api, namespace: str
) -> None:
    kube.clear_requests()
    core.patch_namespaced_resource_quota(
        "quota", namespace, quota_body(), field_manager="provisioner", _content_type=APPLY
    )
    core.list_namespaced_resource_quota(namespace, label_selector="a=b")
    core.delete_namespaced_resource_quota("quota", namespace)
    core.delete_namespace(namespace)

    log = kube.requests()
    assert [(r.method, r.path, r.status) for r in log] == [
        ("PATCH", f"/api/v1/namespaces/{namespace}/resourcequotas/quota", 201),
        ("GET", f"/api/v1/namespaces/{namespace}/resourcequotas", 200),
        ("DELETE", f"/api/v1/namespaces/{namespace}/resourcequotas/quota", 200),
        ("DELETE", f"/api/v1/namespaces/{namespace}", 200),
    ]
    assert log[0].content_type == APPLY
    assert "fieldManager=provisioner" in log[0].query
    assert log[1].query == "labelSelector=a%3Db"
    assert [r.verb for r in log] == ["create", "list", "delete", "delete"]
    assert [r.seq for r in log] == sorted(r.seq for r in log)
    assert all(r.finished >= r.started for r in log)


def test_objects_can_be_read_and_deleted_behind_the_clients_back(
    kube: FakeKubeServer, core: client.CoreV1Api, dyn: dynamic.DynamicClient, namespace: str
) -> None:
    dyn.resources.get(api_version="v1", kind="LimitRange").create(
        namespace=namespace,
        body={
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "limits"},
            "spec": {"limits": [{"type": "Container", "default": {"cpu": 1}}]},
        },
    )
    stored = kube.get_object("limitranges", "limits", namespace)
    assert stored is not None
    assert stored["spec"]["limits"][0]["default"]["cpu"] == "1"  # numbers become strings

    assert kube.delete_object("LimitRange", "limits", namespace)
    expect_api_error(lambda: core.read_namespaced_limit_range("limits", namespace), 404, "NotFound")
    assert not kube.delete_object("LimitRange", "limits", namespace)

    assert kube.delete_object("Namespace", namespace)  # at once, no Terminating phase
    expect_api_error(lambda: core.read_namespace(namespace), 404, "NotFound")
