"""ProvisionerService end to end against the fake Kubernetes API, through the real
client and a kubeconfig, with real PostgreSQL: what a caller and a cluster operator see.

Every test works in an organization of its own. The reconcile loop runs but stays out
of the way (a long interval and backoff), so the request log shows only what the RPCs
did; the loop itself is covered by test_provisioner_reconcile.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from agentready.provisioner.v1 import provisioner_pb2 as pb
from google.protobuf import field_mask_pb2

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import (
    Caller,
    conditions,
    eventually,
    new_org,
    prov_database_url,
    rpc_error,
    start_provisioner,
    state,
)
from tests.fakekube import FakeKubeServer
from tests.rpcerrors import error_info, field_violations

__all__ = ["prov_database_url"]

Code = grpc.StatusCode
GUARDS = {
    "rolebindings": "agentready-owners",
    "resourcequotas": "agentready-quota",
    "limitranges": "agentready-limits",
    "networkpolicies": "agentready-isolation",
}


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(namespace_deletion_delay=0.3) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_faults(kube: FakeKubeServer) -> Iterator[None]:
    yield
    kube.clear_faults()
    kube.clear_latency()


@pytest.fixture(scope="module")
async def server(
    server_env: dict[str, str],
    prov_database_url: str,
    kube: FakeKubeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningServer]:
    kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    running = await start_provisioner(
        server_env,
        prov_database_url,
        KUBECONFIG=str(kubeconfig),
        PROVISIONER_RECONCILE_INTERVAL_SECONDS="3600",
        PROVISIONER_BACKOFF_BASE_SECONDS="600",
        PROVISIONER_BACKOFF_MAX_SECONDS="1200",
        PROVISIONER_DELETE_POLL_SECONDS="0.05",
        PROVISIONER_KUBE_TIMEOUT_SECONDS="1",
        PROVISIONER_KUBE_ATTEMPTS="3",
        PROVISIONER_KUBE_RETRY_BASE_SECONDS="0.02",
    )
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def api(channel: grpc.aio.Channel, keys: Keys) -> Caller:
    return Caller.of(channel, keys, new_org())


def obj(kube: FakeKubeServer, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    found = kube.get_object(kind, name, namespace)
    assert found is not None, f"{kind} {namespace}/{name} does not exist"
    return found


def versions(kube: FakeKubeServer, ns: str) -> dict[str, str]:
    out = {"namespaces": obj(kube, "namespaces", ns, None)["metadata"]["resourceVersion"]}
    for kind, name in GUARDS.items():
        out[kind] = obj(kube, kind, name, ns)["metadata"]["resourceVersion"]
    return out


# --- provisioning -------------------------------------------------------------------------


async def test_provision_creates_every_object_with_its_content(
    api: Caller, kube: FakeKubeServer
) -> None:
    env = await api.provision(["alice", "sa:deployer"], labels={"team": "payments"})
    ns = f"org-{api.org}"
    assert (env.namespace, state(env), env.last_error) == (ns, "READY", "")
    assert env.backend == pb.TenantEnvironment.BACKEND_KUBERNETES
    assert set(conditions(env).values()) == {("TRUE", "Applied")}
    assert set(conditions(env)) == {
        "NamespaceReady",
        "RbacReady",
        "QuotaReady",
        "LimitRangeReady",
        "NetworkPolicyReady",
        "IsolationReady",
    }
    assert (env.quota.cpu, env.quota.memory, env.quota.storage) == ("10", "20Gi", "10Gi")
    assert (env.generation, env.observed_generation) == (1, 1)
    assert env.namespace_phase == "Active"
    assert env.quota_hard["limits.cpu"] == "10"
    assert env.quota_used["requests.memory"] == "0"

    labels = obj(kube, "namespaces", ns, None)["metadata"]["labels"]
    assert labels == {
        "team": "payments",
        "agentready.io/organization": api.org,
        "app.kubernetes.io/managed-by": "agentready-provisioner",
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
        "agentready.io/isolation-ready": "true",
        "kubernetes.io/metadata.name": ns,
    }
    binding = obj(kube, "rolebindings", "agentready-owners", ns)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "admin",
    }
    assert [s["name"] for s in binding["subjects"]] == ["alice", "sa:deployer"]
    assert {s["kind"] for s in binding["subjects"]} == {"User"}
    quota = obj(kube, "resourcequotas", "agentready-quota", ns)
    assert quota["spec"]["hard"] == {
        "requests.cpu": "10",
        "limits.cpu": "10",
        "requests.memory": "20Gi",
        "limits.memory": "20Gi",
        "requests.storage": "10Gi",
    }
    limits = obj(kube, "limitranges", "agentready-limits", ns)["spec"]["limits"]
    assert limits == [
        {
            "type": "Container",
            "default": {"cpu": "500m", "memory": "512Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
        }
    ]
    policy = obj(kube, "networkpolicies", "agentready-isolation", ns)["spec"]
    assert policy["podSelector"] == {}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert policy["egress"][0] == {"to": [{"podSelector": {}}]}
    dns = policy["egress"][1]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    for kind, name in GUARDS.items():
        meta = obj(kube, kind, name, ns)["metadata"]
        assert meta["labels"]["agentready.io/organization"] == api.org


async def test_namespace_first_guards_concurrently_isolation_label_last(
    api: Caller, kube: FakeKubeServer
) -> None:
    ns = f"org-{api.org}"
    # The four guard writes must all be in flight together for this to fill.
    together = kube.inject_rendezvous(4, method="PATCH", path=f"/namespaces/{ns}/", timeout=30)
    await api.provision()
    writes = [
        r for r in kube.requests() if (r.namespace == ns or r.name == ns) and r.method != "GET"
    ]
    first, *guards, last = writes
    assert (first.resource, first.status) == ("namespaces", 201)
    assert sorted(r.resource for r in guards) == sorted(GUARDS)
    assert (last.resource, last.method, last.status) == ("namespaces", "PATCH", 200)
    # Concurrent: the guards met at the rendezvous. Ordered: each guard was sent after
    # the namespace's answer, the label after every guard's (causal, not timed).
    assert together.hits == 4
    assert not together.broken
    assert all(r.started >= first.finished for r in guards)
    assert last.started >= max(r.finished for r in guards)


async def test_reprovisioning_changes_nothing(api: Caller, kube: FakeKubeServer) -> None:
    first = await api.provision(["alice"], labels={"tier": "gold"})
    ns = f"org-{api.org}"
    before = versions(kube, ns)
    again = await api.provision(["alice"], labels={"tier": "gold"})
    assert versions(kube, ns) == before
    assert (again.etag, again.generation, state(again)) == (first.etag, 1, "READY")
    # Only the applies went out; no label write for an already isolation-ready namespace.
    writes = [r for r in kube.requests(method="PATCH") if r.namespace == ns or r.name == ns]
    assert len(writes) == 6 + 5


async def test_reprovisioning_replaces_owners_and_labels(api: Caller, kube: FakeKubeServer) -> None:
    await api.provision(["alice", "bob"], labels={"tier": "gold"})
    env = await api.provision(["carol"], labels={"tier": "silver"})
    ns = f"org-{api.org}"
    assert (list(env.owners), dict(env.labels)) == (["carol"], {"tier": "silver"})
    assert (env.generation, env.observed_generation, state(env)) == (2, 2, "READY")
    binding = obj(kube, "rolebindings", "agentready-owners", ns)
    assert [s["name"] for s in binding["subjects"]] == ["carol"]
    labels = obj(kube, "namespaces", ns, None)["metadata"]["labels"]
    assert labels["tier"] == "silver"
    assert labels["agentready.io/isolation-ready"] == "true"


async def test_reprovisioning_with_another_quota_is_failed_precondition(api: Caller) -> None:
    await api.provision(quota=pb.Quota(cpu="4"))
    same = await api.provision(quota=pb.Quota(cpu="4000m"))  # the same value
    assert same.quota.cpu == "4"
    err = await rpc_error(api.provision(quota=pb.Quota(cpu="5")), Code.FAILED_PRECONDITION)
    assert error_info(err).reason == "QUOTA_MISMATCH"
    assert (await api.get()).quota.cpu == "4"


async def test_provision_request_id_replays(api: Caller) -> None:
    request_id = str(uuid.uuid4())
    first = await api.provision(["alice"], request_id=request_id)
    again = await api.provision(["alice"], request_id=request_id)
    assert again.etag == first.etag
    err = await rpc_error(api.provision(["bob"], request_id=request_id), Code.INVALID_ARGUMENT)
    assert "request_id" in field_violations(err)


# --- quota ------------------------------------------------------------------------------------


async def test_update_quota_applies_it_and_keeps_the_history(
    api: Caller, kube: FakeKubeServer
) -> None:
    env = await api.provision()
    ns = f"org-{api.org}"
    updated = await api.update_quota(
        quota=pb.Quota(cpu="2500m", memory="8Gi"), etag=env.etag, reason="trial plan"
    )
    assert (updated.quota.cpu, updated.quota.memory, updated.quota.storage) == (
        "2500m",
        "8Gi",
        "10Gi",
    )
    assert (updated.generation, updated.observed_generation, state(updated)) == (2, 2, "READY")
    assert updated.etag != env.etag
    hard = obj(kube, "resourcequotas", "agentready-quota", ns)["spec"]["hard"]
    assert (hard["limits.cpu"], hard["requests.memory"], hard["requests.storage"]) == (
        "2500m",
        "8Gi",
        "10Gi",
    )
    assert updated.quota_hard["limits.cpu"] == "2500m"

    # A stale etag is refused and changes nothing.
    err = await rpc_error(api.update_quota(quota=pb.Quota(cpu="1"), etag=env.etag), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    # "*" resets what is left empty to the defaults.
    reset = await api.update_quota(
        quota=pb.Quota(storage="50Gi"),
        update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        reason="reset",
    )
    assert (reset.quota.cpu, reset.quota.memory, reset.quota.storage) == ("10", "20Gi", "50Gi")

    history = (await api.history()).quota_history_entries
    assert [
        (h.old_quota.cpu if h.HasField("old_quota") else None, h.new_quota.cpu) for h in history
    ] == [
        (None, "10"),
        ("10", "2500m"),
        ("2500m", "10"),
    ]
    assert [h.reason for h in history] == ["provisioned", "trial plan", "reset"]
    assert {h.actor for h in history} == {f"owner-of-{api.org}"}
    assert all(h.organization == api.org for h in history)
    # Pages, oldest first.
    page = await api.history(page_size=2)
    rest = await api.history(page_size=2, page_token=page.next_page_token)
    assert [
        h.new_quota.storage for h in [*page.quota_history_entries, *rest.quota_history_entries]
    ] == [
        "10Gi",
        "10Gi",
        "50Gi",
    ]
    assert rest.next_page_token == ""


async def test_update_quota_request_id_acts_once(api: Caller) -> None:
    await api.provision()
    request_id = str(uuid.uuid4())
    await api.update_quota(quota=pb.Quota(cpu="3"), request_id=request_id)
    await api.update_quota(quota=pb.Quota(cpu="3"), request_id=request_id)
    assert len((await api.history()).quota_history_entries) == 2
    err = await rpc_error(
        api.update_quota(quota=pb.Quota(cpu="4"), request_id=request_id), Code.INVALID_ARGUMENT
    )
    assert "request_id" in field_violations(err)


@pytest.mark.parametrize("bad", ["ten", "-1", "1.5.2", "20GB", "1e999", "0x10"])
async def test_bad_quantity_is_invalid_argument_and_writes_nothing(api: Caller, bad: str) -> None:
    err = await rpc_error(api.provision(quota=pb.Quota(memory=bad)), Code.INVALID_ARGUMENT)
    assert set(field_violations(err)) == {"quota.memory"}
    await rpc_error(api.get(), Code.NOT_FOUND)
    await api.provision()
    err = await rpc_error(api.update_quota(quota=pb.Quota(cpu=bad)), Code.INVALID_ARGUMENT)
    assert set(field_violations(err)) == {"quota.cpu"}
    assert len((await api.history()).quota_history_entries) == 1


async def test_update_quota_field_checks(api: Caller) -> None:
    await api.provision()
    err = await rpc_error(api.update_quota(quota=pb.Quota()), Code.INVALID_ARGUMENT)
    assert "quota" in field_violations(err)
    err = await rpc_error(
        api.update_quota(
            quota=pb.Quota(cpu="1"), update_mask=field_mask_pb2.FieldMask(paths=["gpu"])
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "update_mask" in field_violations(err)
    err = await rpc_error(
        api.update_quota(quota=pb.Quota(cpu="1"), reason="x" * 501), Code.INVALID_ARGUMENT
    )
    assert "reason" in field_violations(err)


async def test_provision_field_checks(api: Caller) -> None:
    err = await rpc_error(api.provision(owners=[""]), Code.INVALID_ARGUMENT)
    assert "owners[0]" in field_violations(err)
    err = await rpc_error(
        api.provision(labels={"pod-security.kubernetes.io/enforce": "privileged"}),
        Code.INVALID_ARGUMENT,
    )
    assert "labels[pod-security.kubernetes.io/enforce]" in field_violations(err)
    err = await rpc_error(api.provision(labels={"team": "not ok!"}), Code.INVALID_ARGUMENT)
    assert "labels[team]" in field_violations(err)
    err = await rpc_error(api.provision(request_id="not-a-uuid"), Code.INVALID_ARGUMENT)
    assert "request_id" in field_violations(err)
    bad_org = api.with_token(api.keys.token("Bad_Org"))
    bad_org.org = "Bad_Org"
    err = await rpc_error(bad_org.provision(), Code.INVALID_ARGUMENT)
    assert "organization" in field_violations(err)


# --- authorization and unknown organizations --------------------------------------------------


async def test_wrong_organization_token_is_permission_denied_everywhere(
    api: Caller, keys: Keys
) -> None:
    await api.provision()
    other = api.with_token(keys.token("someone-else"))
    calls = [
        other.provision(),
        other.get(),
        other.update_quota(quota=pb.Quota(cpu="1")),
        other.history(),
        other.deprovision(),
        other.reconcile(),
    ]
    for call in calls:
        err = await rpc_error(call, Code.PERMISSION_DENIED)
        assert error_info(err).reason == "WRONG_ORGANIZATION"
    assert state(await api.get()) == "READY"


async def test_read_only_roles_cannot_write(api: Caller, keys: Keys) -> None:
    await api.provision()
    viewer = api.with_token(keys.token(api.org, "viewer"))
    assert state(await viewer.get()) == "READY"
    assert len((await viewer.history()).quota_history_entries) == 1
    for call in [
        viewer.provision(),
        viewer.update_quota(quota=pb.Quota(cpu="1")),
        viewer.deprovision(),
        viewer.reconcile(),
    ]:
        err = await rpc_error(call, Code.PERMISSION_DENIED)
        assert error_info(err).reason == "MISSING_SCOPE"


async def test_unknown_organization_is_not_found_everywhere(api: Caller) -> None:
    for call in [
        api.get(),
        api.update_quota(quota=pb.Quota(cpu="1")),
        api.history(),
        api.deprovision(),
        api.reconcile(),
    ]:
        err = await rpc_error(call, Code.NOT_FOUND)
        assert error_info(err).reason == "NOT_FOUND"


async def test_list_spans_organizations_for_operator_tokens_only(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    prefix = f"l{uuid.uuid4().hex[:6]}"
    callers = [Caller.of(channel, keys, f"{prefix}-{i}") for i in range(3)]
    for caller in callers:
        await caller.provision()
    await callers[2].deprovision()
    operator = keys.token(
        None, "operator", scopes=frozenset({"provisioner:read"}), subject="operator"
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await callers[0].list_all(operator, page_size=2, page_token=token)
        assert len(page.tenant_environments) <= 2
        seen += [e.organization for e in page.tenant_environments]
        token = page.next_page_token
        if not token:
            break
    mine = [o for o in seen if o.startswith(prefix)]
    assert mine == [c.org for c in callers]
    assert seen == sorted(seen)
    ready = await callers[0].list_all(
        operator, state=pb.TenantEnvironment.STATE_READY, page_size=1000
    )
    ready_orgs = {e.organization for e in ready.tenant_environments}
    assert {c.org for c in callers[:2]} <= ready_orgs
    assert callers[2].org not in ready_orgs

    err = await rpc_error(callers[0].list_all(callers[0].token), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "OPERATOR_REQUIRED"
    # A user's token without an organization is not an operator's.
    user_without_org = keys.token(None, "owner", subject="someone")
    err = await rpc_error(callers[0].list_all(user_without_org), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "OPERATOR_REQUIRED"
    no_scope = keys.token(None, "operator", scopes=frozenset({"config:read"}))
    err = await rpc_error(callers[0].list_all(no_scope), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "MISSING_SCOPE"
    err = await rpc_error(callers[0].list_all(operator, page_size=-1), Code.INVALID_ARGUMENT)
    assert "page_size" in field_violations(err)
    err = await rpc_error(
        callers[0].list_all(operator, page_size=5, page_token=token or "garbage"),
        Code.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(err)


# --- deprovisioning -----------------------------------------------------------------------------


async def test_deprovision_revokes_and_denies_before_deleting(
    api: Caller, kube: FakeKubeServer
) -> None:
    env = await api.provision()
    ns = f"org-{api.org}"
    err = await rpc_error(api.deprovision(etag='W/"999"'), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    kube.clear_requests()
    gone = await api.deprovision(etag=env.etag)
    assert state(gone) in ("DELETING", "DELETED")
    calls = [
        (r.method, r.resource, r.status) for r in kube.requests() if ns in (r.namespace, r.name)
    ]
    delete_ns = calls.index(("DELETE", "namespaces", 200))
    before = calls[:delete_ns]
    assert ("DELETE", "rolebindings", 200) in before
    assert ("PATCH", "networkpolicies", 200) in before
    assert ("PATCH", "namespaces", 200) in before  # the isolation label removed
    # While terminating, nothing lets the owners in or any traffic through.
    final = await _wait_state(api, "DELETED")
    assert final.namespace_phase == ""
    assert kube.get_object("namespaces", ns) is None

    # Idempotent, and final.
    assert state(await api.deprovision()) == "DELETED"
    for call, code in [
        (api.provision(), Code.FAILED_PRECONDITION),
        (api.update_quota(quota=pb.Quota(cpu="1")), Code.FAILED_PRECONDITION),
        (api.reconcile(), Code.FAILED_PRECONDITION),
    ]:
        await rpc_error(call, code)
    assert kube.get_object("namespaces", ns) is None


async def test_deny_all_policy_is_in_place_while_the_namespace_terminates(
    api: Caller, kube: FakeKubeServer
) -> None:
    await api.provision()
    ns = f"org-{api.org}"
    kube.namespace_deletion_delay = 5.0
    try:
        env = await api.deprovision()
        assert state(env) == "DELETING"
        policy = obj(kube, "networkpolicies", "agentready-isolation", ns)["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in policy
        assert "egress" not in policy
        assert kube.get_object("rolebindings", "agentready-owners", ns) is None
        labels = obj(kube, "namespaces", ns, None)["metadata"]["labels"]
        assert "agentready.io/isolation-ready" not in labels
        assert (await api.get()).namespace_phase == "Terminating"
    finally:
        kube.namespace_deletion_delay = 0.3
        kube.delete_object("namespaces", ns)
    await _wait_state(api, "DELETED")


async def _wait_state(api: Caller, wanted: str, timeout: float = 10.0) -> pb.TenantEnvironment:
    from tests.e2e.provisioner_support import eventually

    return await eventually(api.get, lambda e: state(e) == wanted, timeout=timeout)


# --- drift and failures -----------------------------------------------------------------------


async def test_object_deleted_behind_our_back_comes_back_on_reconcile(
    api: Caller, kube: FakeKubeServer
) -> None:
    await api.provision()
    ns = f"org-{api.org}"
    assert kube.delete_object("networkpolicies", "agentready-isolation", ns)
    assert kube.delete_object("resourcequotas", "agentready-quota", ns)
    env = await api.reconcile()
    assert state(env) == "READY"
    assert obj(kube, "networkpolicies", "agentready-isolation", ns)["spec"]["policyTypes"] == [
        "Ingress",
        "Egress",
    ]
    assert obj(kube, "resourcequotas", "agentready-quota", ns)["spec"]["hard"]["limits.cpu"] == "10"
    # Even the namespace: deleted by hand, recreated with everything in it.
    assert kube.delete_object("namespaces", ns)
    env = await api.reconcile()
    assert state(env) == "READY"
    assert (
        obj(kube, "namespaces", ns, None)["metadata"]["labels"]["agentready.io/isolation-ready"]
        == "true"
    )
    for kind, name in GUARDS.items():
        obj(kube, kind, name, ns)


async def test_temporary_errors_are_retried_then_failed_with_the_reason(
    api: Caller, kube: FakeKubeServer
) -> None:
    ns = f"org-{api.org}"
    kube.inject_error(500, kind="resourcequotas", times=None, message="etcd is sad")
    env = await api.provision()
    quota_calls = [r for r in kube.requests(resource="resourcequotas") if r.namespace == ns]
    assert [r.status for r in quota_calls] == [500, 500, 500]  # three tries
    assert state(env) == "FAILED"
    assert "QuotaReady" in env.last_error
    assert "etcd is sad" in env.last_error
    cond = conditions(env)
    assert cond["QuotaReady"] == ("FALSE", "InternalError")
    assert cond["IsolationReady"] == ("FALSE", "GuardObjectsMissing")
    assert cond["RbacReady"] == ("TRUE", "Applied")
    labels = obj(kube, "namespaces", ns, None)["metadata"]["labels"]
    assert "agentready.io/isolation-ready" not in labels
    assert (env.generation, env.observed_generation) == (1, 0)

    kube.clear_faults()
    healed = await api.reconcile()
    assert (state(healed), healed.last_error, healed.observed_generation) == ("READY", "", 1)
    assert (
        obj(kube, "namespaces", ns, None)["metadata"]["labels"]["agentready.io/isolation-ready"]
        == "true"
    )


async def test_permanent_errors_fail_at_once(api: Caller, kube: FakeKubeServer) -> None:
    ns = f"org-{api.org}"
    kube.inject_error(
        403,
        kind="rolebindings",
        times=None,
        message='user cannot bind clusterrole "admin"',
    )
    env = await api.provision()
    binding_calls = [r for r in kube.requests(resource="rolebindings") if r.namespace == ns]
    assert [r.status for r in binding_calls] == [403]  # no retry of a permanent error
    assert state(env) == "FAILED"
    assert conditions(env)["RbacReady"] == ("FALSE", "Forbidden")
    assert "cannot bind" in env.last_error
    assert "permanent" in env.last_error


async def test_isolation_label_failing_after_the_outcome_was_written_ahead_is_what_is_recorded(
    api: Caller, kube: FakeKubeServer
) -> None:
    # The outcome of a success is written, uncommitted, while the label is on its way;
    # the label is refused, so that write must be rolled back and the failure recorded.
    ns = f"org-{api.org}"
    kube.inject_delay(0, method="PATCH", path=f"/namespaces/{ns}$", times=1)  # the apply
    kube.inject_error(403, method="PATCH", path=f"/namespaces/{ns}$", times=None)  # the label
    env = await api.provision()
    namespace_writes = [
        r.status for r in kube.requests(method="PATCH", resource="namespaces") if r.name == ns
    ]
    assert namespace_writes == [201, 403]
    assert state(env) == "FAILED"
    assert conditions(env)["IsolationReady"] == ("FALSE", "Forbidden")
    assert all(conditions(env)[c] == ("TRUE", "Applied") for c in ("RbacReady", "QuotaReady"))
    assert (state(await api.get()), (await api.get()).observed_generation) == ("FAILED", 0)
    assert (
        "agentready.io/isolation-ready"
        not in obj(kube, "namespaces", ns, None)["metadata"]["labels"]
    )

    kube.clear_faults()
    assert state(await api.reconcile()) == "READY"


async def test_cancelled_while_the_outcome_is_written_ahead_leaves_nothing_locked(
    api: Caller, kube: FakeKubeServer, prov_database_url: str
) -> None:
    ns = f"org-{api.org}"
    kube.inject_delay(0, method="PATCH", path=f"/namespaces/{ns}$", times=1)  # the apply
    # The label is held (its attempt times out after 1 s, the retry goes through).
    label = kube.inject_rendezvous(
        2, method="PATCH", path=f"/namespaces/{ns}$", times=1, timeout=30
    )
    call = api.stub.ProvisionTenant(
        pb.ProvisionTenantRequest(organization=api.org, owners=["alice"]),
        metadata=api.md,
        timeout=30,
    )

    async def label_arrived() -> int:
        return label.hits

    await eventually(label_arrived, lambda hits: hits == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    kube.clear_faults()

    # Neither the tenant lock nor the row stayed taken by the cancelled write: the
    # next converge locks both and records its own outcome.
    env = await api.reconcile()
    assert state(env) == "READY"
    conn = await asyncpg.connect(prov_database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            row = await conn.fetchrow(
                "SELECT state FROM provisioner.environments WHERE organization = $1 FOR UPDATE",
                api.org,
            )
        assert row is not None
        assert row["state"] == "READY"
    finally:
        await conn.close()


async def test_throttling_and_timeouts_are_retried(api: Caller, kube: FakeKubeServer) -> None:
    ns = f"org-{api.org}"
    kube.inject_throttle(retry_after=1, kind="limitranges", times=1)
    # The first policy write is held (served, its answer kept back) until a second one
    # arrives: only the client's retry after its 1 s timeout can free it.
    meeting = kube.inject_rendezvous(2, kind="networkpolicies", timeout=60)
    env = await api.provision()
    assert state(env) == "READY"
    assert [r.status for r in kube.requests(resource="limitranges") if r.namespace == ns] == [
        429,
        201,
    ]
    throttled, retried = [r for r in kube.requests(resource="limitranges") if r.namespace == ns]
    assert retried.started - throttled.finished >= 0.9  # Retry-After was honoured

    # The write that outlived the timeout was sent again: the two requests met, and the
    # fake (which records a request as it finishes) shows both.
    assert not meeting.broken
    assert meeting.hits == 2

    async def policies() -> list[Any]:
        return [r for r in kube.requests(resource="networkpolicies") if r.namespace == ns]

    records = await eventually(policies, lambda p: len(p) == 2)
    assert len({r.seq for r in records}) == 2
    obj(kube, "networkpolicies", "agentready-isolation", ns)


async def test_kubernetes_unreachable_is_reported_not_raised(
    api: Caller, kube: FakeKubeServer, server: RunningServer
) -> None:
    kube.inject_error(503, times=None, message="apiserver restarting")
    env = await api.provision()
    assert state(env) == "FAILED"
    assert conditions(env)["NamespaceReady"] == ("FALSE", "ServiceUnavailable")
    kube.clear_faults()
    # Get still answers (the last recorded observation) and the environment heals.
    assert state(await api.get()) == "FAILED"
    assert state(await api.reconcile()) == "READY"
