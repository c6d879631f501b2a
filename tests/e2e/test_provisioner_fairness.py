"""The Provisioner under a hostile tenant (security review findings 4, 5, 7, 13): one
tenant cannot take the connections from the others, tenant locks cannot collide, a
namespace that is not ours is neither taken over nor deleted, and owners, labels and
quotas stay within what a tenant may set."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from agentready.provisioner.v1 import provisioner_pb2 as pb

from provisioner.adapters.postgres import tenant_lock_key
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import (
    Caller,
    eventually,
    new_org,
    prov_database_url,
    rpc_error,
    start_provisioner,
    state,
)
from tests.fakekube import DEFAULT_TOKEN, FakeKubeServer
from tests.rpcerrors import error_info, field_violations

Code = grpc.StatusCode

__all__ = ["prov_database_url"]  # the fixture, used by name


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(namespace_deletion_delay=0.3) as server:
        yield server


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
        DB_POOL_MIN="1",
        DB_POOL_MAX="4",  # small, so a hog would show
    )
    yield running
    await running.stop()


async def test_a_burst_for_one_tenant_does_not_starve_another(
    server: RunningServer, kube: FakeKubeServer, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        hog, other = Caller.of(channel, keys, new_org()), Caller.of(channel, keys, new_org())
        await hog.provision()
        await other.provision()
        # The hog's converge blocks inside the Kubernetes API (held until a second
        # request for its namespace arrives, which the tenant lock never lets happen),
        # holding its tenant's lock; 40 more reconciles of the hog pile up behind it.
        held = kube.inject_rendezvous(
            2, path=f"/namespaces/org-{hog.org}$", method="PATCH", timeout=30
        )
        burst = [asyncio.create_task(hog.reconcile()) for _ in range(40)]
        try:
            await eventually(lambda: asyncio.sleep(0, held.hits), lambda hits: hits >= 1)
            # Meanwhile another tenant is served: the waiting calls hold no connection.
            env = await asyncio.wait_for(other.get(), 20)
            assert env.organization == other.org
            assert held.hits == 1  # the hog is still blocked
            assert not held.broken
        finally:
            kube.clear_faults()  # releases the held request
            results = await asyncio.gather(*burst, return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results), results


def test_tenant_lock_keys_use_64_bits() -> None:
    keys = {tenant_lock_key(f"tenant-{i}") for i in range(2000)}
    assert len(keys) == 2000
    assert any(not -(2**31) <= key < 2**31 for key in keys)
    assert all(-(2**63) <= key < 2**63 for key in keys)


# -- guard rails a tenant cannot lift (findings 4 and 5) ---------------------------------


def kube_call(kube: FakeKubeServer, method: str, path: str, body: Any = None) -> Any:
    """A raw request to the fake API, as someone else in the cluster would make it."""
    request = urllib.request.Request(  # noqa: S310 - the fake's http:// on loopback
        f"{kube.url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {DEFAULT_TOKEN}",
            "Content-Type": "application/merge-patch+json"
            if method == "PATCH"
            else "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


async def test_a_namespace_that_is_not_ours_is_neither_taken_nor_deleted(
    server: RunningServer, kube: FakeKubeServer, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        victim = Caller.of(channel, keys, new_org())
        namespace = f"org-{victim.org}"
        await asyncio.to_thread(
            kube_call,
            kube,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        err = await rpc_error(victim.provision(["alice"]), Code.FAILED_PRECONDITION)
        assert error_info(err).reason == "NAMESPACE_NOT_OURS"
        await rpc_error(victim.get(), Code.NOT_FOUND)  # nothing recorded
        untouched = kube.get_object("namespaces", namespace)
        assert untouched is not None
        assert "agentready.io/organization" not in (untouched["metadata"].get("labels") or {})
        assert kube.get_object("rolebindings", "agentready-owners", namespace) is None

        # One of ours whose labels someone took away is not deleted on deprovisioning.
        ours = Caller.of(channel, keys, new_org())
        await ours.provision(["alice"])
        await asyncio.to_thread(
            kube_call,
            kube,
            "PATCH",
            f"/api/v1/namespaces/org-{ours.org}",
            {"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone-else"}}},
        )
        await ours.deprovision()
        env = await eventually(ours.get, lambda e: state(e) == "DELETED")
        assert env.organization == ours.org
        assert kube.get_object("namespaces", f"org-{ours.org}") is not None


async def test_a_namespace_made_again_by_someone_else_is_not_taken_over_by_a_reconcile(
    server: RunningServer, kube: FakeKubeServer, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        tenant = Caller.of(channel, keys, new_org())
        await tenant.provision(["alice"])
        namespace = f"org-{tenant.org}"
        # Deleted by hand (its contents with it), then made again by someone else.
        assert kube.delete_object("namespaces", namespace)
        await asyncio.to_thread(
            kube_call,
            kube,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        env = await tenant.reconcile()
        assert state(env) == "FAILED"
        assert "was not created by the Provisioner" in env.last_error
        stranger = kube.get_object("namespaces", namespace)
        assert stranger is not None
        assert "agentready.io/organization" not in (stranger["metadata"].get("labels") or {})
        assert kube.get_object("rolebindings", "agentready-owners", namespace) is None
        assert kube.get_object("networkpolicies", "agentready-isolation", namespace) is None


async def test_a_converge_that_cannot_tell_whose_namespace_it_is_writes_nothing(
    server: RunningServer, kube: FakeKubeServer, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        tenant = Caller.of(channel, keys, new_org())
        await tenant.provision(["alice"])
        namespace = f"org-{tenant.org}"
        reads = kube.inject_error(500, method="GET", path=f"/namespaces/{namespace}$", times=None)
        try:
            env = await tenant.update_quota(quota=pb.Quota(cpu="3"))
        finally:
            kube.clear_faults()
        assert reads.hits >= 1
        assert state(env) == "FAILED"
        assert env.last_error.startswith("Namespace")
        quota = kube.get_object("resourcequotas", "agentready-quota", namespace)
        assert quota is not None
        assert quota["spec"]["hard"]["requests.cpu"] != "3"  # nothing was applied
        # Once the API answers again, the next attempt applies the change.
        env = await tenant.reconcile()
        assert state(env) == "READY"
        quota = kube.get_object("resourcequotas", "agentready-quota", namespace)
        assert quota is not None
        assert quota["spec"]["hard"]["requests.cpu"] == "3"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"owners": ["system:anonymous"]}, "owners[0]"),
        ({"owners": ["alice", "system:serviceaccount:kube-system:default"]}, "owners[1]"),
        ({"owners": ["SYSTEM:masters"]}, "owners[0]"),
        ({"owners": [" alice"]}, "owners[0]"),
        ({"labels": {"openshift.io/run-level": "0"}}, "labels[openshift.io/run-level]"),
        ({"labels": {"istio-injection": "enabled"}}, "labels[istio-injection]"),
        ({"labels": {"example.com/anything": "x"}}, "labels[example.com/anything]"),
    ],
)
async def test_owners_and_labels_a_tenant_cannot_set(
    server: RunningServer, keys: Keys, fields: dict[str, Any], field: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        api = Caller.of(channel, keys, new_org())
        owners = fields.pop("owners", ["alice"])
        err = await rpc_error(api.provision(owners, **fields), Code.INVALID_ARGUMENT)
        assert field in field_violations(err)


async def test_a_quota_above_the_platform_maximum_needs_an_operator(
    server: RunningServer, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = Caller.of(channel, keys, new_org(), role="admin")
        env = await admin.provision(["alice"], labels={"tenant.agentready.io/team": "ml"})
        assert dict(env.labels)["tenant.agentready.io/team"] == "ml"
        for quota in (pb.Quota(cpu="9e12"), pb.Quota(memory="8Pi")):
            err = await rpc_error(admin.update_quota(quota=quota), Code.PERMISSION_DENIED)
            assert error_info(err).reason == "QUOTA_ABOVE_MAXIMUM"
        err = await rpc_error(
            Caller.of(channel, keys, new_org(), role="admin").provision(
                ["alice"], quota=pb.Quota(cpu="1000")
            ),
            Code.PERMISSION_DENIED,
        )
        assert error_info(err).reason == "QUOTA_ABOVE_MAXIMUM"
        operator = admin.with_token(keys.token(None, "operator", subject="operator"))
        raised = await operator.update_quota(quota=pb.Quota(cpu="128"))
        assert raised.quota.cpu == "128"
