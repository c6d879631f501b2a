"""One tenant cannot take the Provisioner's connections from the others (security
review finding 7), and tenant locks cannot collide (finding 13)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from provisioner.adapters.postgres import tenant_lock_key
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import (
    Caller,
    eventually,
    new_org,
    prov_database_url,
    start_provisioner,
)
from tests.fakekube import FakeKubeServer

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
