"""The reconcile loop: drift comes back without anyone asking, failures are retried with
backoff until they heal, interrupted sagas are finished, and of several replicas exactly
one reconciles, handing over when its lock connection drops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from kubernetes import client, config

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import (
    Caller,
    eventually,
    new_org,
    prov_database_url,
    start_provisioner,
    state,
)
from tests.fakekube import FakeKubeServer

__all__ = ["prov_database_url"]

FAST_LOOP = {
    "PROVISIONER_RECONCILE_INTERVAL_SECONDS": "0.2",
    "PROVISIONER_BACKOFF_BASE_SECONDS": "0.1",
    "PROVISIONER_BACKOFF_MAX_SECONDS": "0.4",
    "PROVISIONER_DELETE_POLL_SECONDS": "0.05",
    "PROVISIONER_KUBE_TIMEOUT_SECONDS": "2",
    "PROVISIONER_KUBE_ATTEMPTS": "2",
    "PROVISIONER_KUBE_RETRY_BASE_SECONDS": "0.01",
}


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(namespace_deletion_delay=0.1) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_faults(kube: FakeKubeServer) -> Iterator[None]:
    yield
    kube.clear_faults()


@pytest.fixture(scope="module")
def kubeconfig(kube: FakeKubeServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture(scope="module")
async def server(
    server_env: dict[str, str], prov_database_url: str, kubeconfig: Path
) -> AsyncIterator[RunningServer]:
    running = await start_provisioner(
        server_env, prov_database_url, KUBECONFIG=str(kubeconfig), **FAST_LOOP
    )
    yield running
    await running.stop()


@pytest.fixture
async def api(server: RunningServer, keys: Keys) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Caller.of(channel, keys, new_org())


async def test_the_loop_repairs_drift_without_being_asked(
    api: Caller, kube: FakeKubeServer, kubeconfig: Path
) -> None:
    await api.provision()
    ns = f"org-{api.org}"
    kube.delete_object("rolebindings", "agentready-owners", ns)
    with config.new_client_from_config(config_file=str(kubeconfig)) as raw:  # type: ignore[no-untyped-call]
        # Someone raises the quota by hand; the Provisioner's apply (forced) wins back.
        client.CoreV1Api(raw).patch_namespaced_resource_quota(
            "agentready-quota",
            ns,
            {"spec": {"hard": {"limits.cpu": "99"}}},
            field_manager="kubectl-edit",
            _content_type="application/merge-patch+json",
        )

    def repaired() -> bool:
        quota = kube.get_object("resourcequotas", "agentready-quota", ns)
        binding = kube.get_object("rolebindings", "agentready-owners", ns)
        return (
            binding is not None
            and quota is not None
            and quota["spec"]["hard"]["limits.cpu"] == "10"
        )

    async def probe() -> bool:
        return repaired()

    assert await eventually(probe, bool, timeout=5)


async def test_failures_are_retried_with_backoff_until_they_heal(
    api: Caller, kube: FakeKubeServer, prov_database_url: str
) -> None:
    ns = f"org-{api.org}"
    kube.inject_error(500, kind="networkpolicies", times=None)
    env = await api.provision()
    assert state(env) == "FAILED"

    async def failures() -> int:
        conn = await asyncpg.connect(prov_database_url)
        try:
            count = await conn.fetchval(
                "SELECT failures FROM provisioner.environments WHERE organization = $1", api.org
            )
        finally:
            await conn.close()
        return int(count)

    # The loop keeps trying on its own, each failure counted (the count sets the next
    # wait: the backoff policy itself is tested in test_provisioner_domain.py), and
    # each attempt reaches the API again.
    await eventually(failures, lambda n: n >= 4, timeout=10)
    assert len([r for r in kube.requests(resource="networkpolicies") if r.namespace == ns]) >= 4
    failed = await api.get()
    assert state(failed) == "FAILED"
    assert "NetworkPolicyReady" in failed.last_error

    kube.clear_faults()
    healed = await eventually(api.get, lambda e: state(e) == "READY", timeout=5)
    assert healed.last_error == ""
    labels = (kube.get_object("namespaces", ns) or {})["metadata"]["labels"]
    assert labels["agentready.io/isolation-ready"] == "true"


async def test_a_provision_interrupted_after_its_commit_is_finished(
    api: Caller, kube: FakeKubeServer, prov_database_url: str
) -> None:
    # As if the process died right after recording the desired state: a row, no objects.
    conn = await asyncpg.connect(prov_database_url)
    try:
        await conn.execute(
            "INSERT INTO provisioner.environments (organization, owners, quota, state, backend) "
            "VALUES ($1, ARRAY['alice'], "
            """'{"cpu": "3", "memory": "1Gi", "storage": "1Gi"}', 'PROVISIONING', 'kubernetes')""",
            api.org,
        )
    finally:
        await conn.close()
    env = await eventually(api.get, lambda e: state(e) == "READY", timeout=5)
    assert env.quota_hard["limits.cpu"] == "3"
    assert kube.get_object("rolebindings", "agentready-owners", f"org-{api.org}") is not None


async def test_a_deprovision_interrupted_midway_is_finished(
    api: Caller, kube: FakeKubeServer, prov_database_url: str
) -> None:
    await api.provision()
    ns = f"org-{api.org}"
    # As if the process died after revoking access, before deleting the namespace.
    kube.delete_object("rolebindings", "agentready-owners", ns)
    conn = await asyncpg.connect(prov_database_url)
    try:
        await conn.execute(
            "UPDATE provisioner.environments SET state = 'DELETING', "
            "deletion_progress = 'revoked', next_reconcile_at = now() WHERE organization = $1",
            api.org,
        )
    finally:
        await conn.close()
    await eventually(api.get, lambda e: state(e) == "DELETED", timeout=5)
    assert kube.get_object("namespaces", ns) is None


async def test_two_replicas_elect_one_leader_and_hand_over(
    server_env: dict[str, str], prov_database_url: str, kubeconfig: Path
) -> None:
    lock = {"PROVISIONER_LEADER_LOCK": f"test-leader-{uuid.uuid4().hex}"}
    env = {"KUBECONFIG": str(kubeconfig), **FAST_LOOP, **lock}
    first = await start_provisioner(server_env, prov_database_url, **env)
    second = await start_provisioner(server_env, prov_database_url, **env)
    try:
        loops = [s.resources.parts["reconcile_loop"] for s in (first, second)]

        async def leaders() -> list[bool]:
            return [loop.leader.held for loop in loops]

        async def attempts() -> list[int]:
            return [loop.leader.attempts for loop in loops]

        held = await eventually(leaders, lambda h: sum(h) == 1, timeout=5)
        # Both replicas compete three times more (the follower is refused each time):
        # still exactly the same one leads.
        base = await attempts()
        await eventually(
            attempts, lambda a: all(n >= b + 3 for n, b in zip(a, base, strict=True)), timeout=10
        )
        assert await leaders() == held
        leader, follower = (loops[0], loops[1]) if held[0] else (loops[1], loops[0])
        passes = follower.passes
        assert passes == 0  # a follower never reconciles

        # The leader's lock connection drops (a network cut, a PostgreSQL restart ...).
        pid = leader.leader.backend_pid
        admin = await asyncpg.connect(prov_database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # It stops at once; the other replica takes over (the old leader waits a
        # cooldown before competing again, so leadership does not flap back).
        now = await eventually(leaders, lambda h: h != held and sum(h) == 1, timeout=5)
        assert now == [not h for h in held]
        # Past its cooldown the old leader competes again, twice, and is refused: the
        # new leader keeps leading.
        old_leader = leader.leader
        tried = old_leader.attempts
        await eventually(
            lambda: asyncio.sleep(0, result=old_leader.attempts),
            lambda n: n >= tried + 2,
            timeout=10,
        )
        assert await leaders() == now
        await eventually(
            lambda: asyncio.sleep(0, result=follower.passes), lambda p: p > passes, timeout=5
        )
    finally:
        await second.stop()
        await first.stop()
