"""TenantService's organization saga under faults, and TenantService scaled out: the
Provisioner down then back, a TenantService killed mid-saga, two replicas as processes.

These tests work in a database of their own: the session's servers run a saga loop
of their own on the shared one, and must not finish these sagas for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from agentready.tenant.v1 import tenant_pb2 as pb

from provisioner.app import SPEC as PROVISIONER
from servicekit.devstack import EmbeddedRedis, free_port, scratch_database
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tenant_service.app import SPEC as TENANT
from tests.e2e.tenant_support import (
    Code,
    Person,
    TenantApi,
    eventually,
    new_email,
    new_slug,
    rpc_error,
)
from tests.e2e.watching import Replica
from tests.fakekube import DEFAULT_TOKEN, FakeKubeServer
from tests.rpcerrors import error_info

pytestmark = pytest.mark.slow

PROVISIONING, ACTIVE = pb.Organization.STATE_PROVISIONING, pb.Organization.STATE_ACTIVE


@pytest.fixture(scope="module")
def saga_database_url(postgres_server_url: str) -> Iterator[str]:
    with scratch_database(postgres_server_url, "agentready_saga") as url:
        yield url


@pytest.fixture
def saga_env(server_env: dict[str, str], saga_database_url: str) -> dict[str, str]:
    """TenantService settings with a Provisioner port nothing listens on (yet)."""
    return {
        **server_env,
        "DATABASE_URL": saga_database_url,
        "METRICS_PORT": "off",
        "TENANT_PROVISIONER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CONFIG_ADDRESS": f"127.0.0.1:{free_port()}",
        "TENANT_CALL_TIMEOUT_SECONDS": "2",
        "TENANT_SAGA_GRACE_SECONDS": "0.1",
        "TENANT_SAGA_BACKOFF_BASE_SECONDS": "0.05",
        "TENANT_SAGA_BACKOFF_MAX_SECONDS": "0.2",
        "TENANT_SAGA_POLL_SECONDS": "0.05",
    }


async def start_provisioner(saga_env: dict[str, str]) -> RunningServer:
    """The Provisioner, on the port TenantService was told about."""
    port = saga_env["TENANT_PROVISIONER_ADDRESS"].rpartition(":")[2]
    env = {**saga_env, "GRPC_PORT": port}
    return await start(
        PROVISIONER, load_settings("provisioner", env, extra=PROVISIONER.extra_settings)
    )


@pytest.fixture
async def tenant(saga_env: dict[str, str]) -> AsyncIterator[RunningServer]:
    server = await start(TENANT, load_settings("tenant", saga_env, extra=TENANT.extra_settings))
    yield server
    await server.stop()


@pytest.fixture
async def kube(saga_env: dict[str, str], tmp_path: Path) -> AsyncIterator[FakeKubeServer]:
    """A fake Kubernetes API, and the Provisioner (on the port TenantService was told
    about) applying environments to it."""
    with FakeKubeServer() as server:
        env = {**saga_env, "KUBECONFIG": str(server.write_kubeconfig(tmp_path / "kubeconfig"))}
        provisioner = await start_provisioner(env)
        try:
            yield server
        finally:
            await provisioner.stop()


async def organization_state(
    api: TenantApi, person_auth: tuple[tuple[str, str], ...], slug: str
) -> int:
    org = await api.stub.GetOrganization(
        pb.GetOrganizationRequest(organization=slug), metadata=person_auth, timeout=10
    )
    return int(org.state)


async def test_provisioner_down_then_up_finishes_without_a_new_request(
    tenant: RunningServer, saga_env: dict[str, str]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tenant.port}") as channel:
        api = TenantApi(channel)
        person = await api.login(await api.signup())
        org = await api.create_org(person)
        assert org.state == PROVISIONING  # the Provisioner is down
        await api.login(person, org.slug)
        assert await organization_state(api, person.auth, org.slug) == PROVISIONING
        provisioner = await start_provisioner(saga_env)
        try:
            await eventually(
                lambda: organization_state(api, person.auth, org.slug), lambda s: s == ACTIVE
            )
        finally:
            await provisioner.stop()


async def test_a_tenant_service_killed_mid_saga_converges_after_restart(
    saga_env: dict[str, str],
) -> None:
    first = await asyncio.to_thread(Replica, {**saga_env, "GRPC_PORT": "0"}, "tenant_service")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            api = TenantApi(channel)
            person = await api.login(await api.signup())
            org = await api.create_org(person)
            assert org.state == PROVISIONING
    finally:
        await asyncio.to_thread(first.kill)  # SIGKILL: mid-saga, no goodbye
    provisioner = await start_provisioner(saga_env)
    second = await asyncio.to_thread(Replica, {**saga_env, "GRPC_PORT": "0"}, "tenant_service")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            api = TenantApi(channel)
            await api.login(person, org.slug)
            await eventually(
                lambda: organization_state(api, person.auth, org.slug), lambda s: s == ACTIVE
            )
    finally:
        await asyncio.to_thread(second.stop)
        await provisioner.stop()


async def test_refusals_leave_the_organization_unfinished_with_the_reason(
    tenant: RunningServer, kube: FakeKubeServer
) -> None:
    """The move to ACTIVE written ahead is rolled back whenever the environment is not
    READY: a permanent refusal (a namespace of that name that is not ours) fails the
    organization with the reason, a failing environment keeps it PROVISIONING."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tenant.port}") as channel:
        api = TenantApi(channel)
        person = await api.login(await api.signup())

        taken = new_slug()
        # Made by someone else in the cluster.
        await asyncio.to_thread(foreign_namespace, kube, f"org-{taken}")
        org = await api.create_org(person, taken)
        assert org.state == pb.Organization.STATE_FAILED
        assert "not created by the Provisioner" in org.state_reason
        await api.login(person, taken)
        assert await organization_state(api, person.auth, taken) == int(
            pb.Organization.STATE_FAILED
        )

        refused = new_slug()
        kube.inject_error(403, kind="rolebindings", path=f"/namespaces/org-{refused}/", times=None)
        org = await api.create_org(person, refused)
        assert org.state == PROVISIONING
        await api.login(person, refused)
        assert await organization_state(api, person.auth, refused) == PROVISIONING


async def row_holder(database_url: str, slug: str) -> int:
    """The backend whose open transaction holds ``slug``'s row (while ProvisionTenant is
    under way: its move to ACTIVE written ahead), or 0 when none does now. Found by a
    probe that asks for the same row and is blocked by it; the probe is then called
    off, so nothing of its own waits for the row afterwards."""
    probe = await asyncpg.connect(database_url)
    observer = await asyncpg.connect(database_url)
    try:
        probe_pid = await probe.fetchval("SELECT pg_backend_pid()")
        asking = asyncio.ensure_future(
            probe.execute(
                "SELECT 1 FROM tenant.organizations WHERE organization = $1 FOR UPDATE", slug
            )
        )
        while not asking.done():
            blockers = await observer.fetchval("SELECT pg_blocking_pids($1)", probe_pid)
            if blockers:
                await observer.execute("SELECT pg_cancel_backend($1)", probe_pid)
                with contextlib.suppress(asyncpg.QueryCanceledError):
                    await asking
                return int(blockers[0])
            await asyncio.sleep(0.01)
        await asking  # not blocked: nothing holds the row
        return 0
    finally:
        await probe.close()
        await observer.close()


async def kill_backend(database_url: str, pid: int) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
    finally:
        await conn.close()


async def ready_saga(api: TenantApi, person: Person) -> None:
    """An organization created and ACTIVE: the channel to the Provisioner is up (the
    saga loop may have found it down before the Provisioner started, and backs off)."""
    org = await api.create_org(person)
    await api.login(person, org.slug)
    await eventually(lambda: organization_state(api, person.auth, org.slug), lambda s: s == ACTIVE)


@pytest.mark.parametrize("environment", ["ready", "failing"])
async def test_the_move_to_active_written_ahead_losing_its_connection_changes_no_answer(
    tenant: RunningServer,
    kube: FakeKubeServer,
    saga_database_url: str,
    caplog: pytest.LogCaptureFixture,
    environment: str,
) -> None:
    """The connection of the move to ACTIVE written ahead dies while the Provisioner
    works: a READY environment still makes the organization ACTIVE (written then), a
    failing one still leaves it PROVISIONING; the lost write ahead changes no answer."""
    caplog.set_level(logging.INFO, logger="tenant_service.service_layer.organizations")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tenant.port}") as channel:
        api = TenantApi(channel)
        person = await api.login(await api.signup())
        await ready_saga(api, person)
        slug = new_slug()
        if environment == "failing":
            kube.inject_error(403, kind="rolebindings", path=f"/namespaces/org-{slug}/", times=None)
        held = kube.inject_delay(60, method="PATCH", path=f"/namespaces/org-{slug}$", times=1)
        creating = asyncio.ensure_future(api.create_org(person, slug))
        try:
            assert await asyncio.to_thread(held.wait_held, 30)
            pid = await eventually(lambda: row_holder(saga_database_url, slug), lambda p: p != 0)
            assert await kill_backend(saga_database_url, pid)
        finally:
            held.release()
        org = await creating
        await api.login(person, slug)
        if environment == "ready":
            assert org.state == ACTIVE
            assert f"activating {slug} ahead failed, written now" in caplog.text
            assert await organization_state(api, person.auth, slug) == ACTIVE
        else:
            assert org.state == PROVISIONING
            assert await organization_state(api, person.auth, slug) == PROVISIONING


def foreign_namespace(kube: FakeKubeServer, name: str) -> None:
    """A namespace created in the cluster by someone other than the Provisioner."""
    request = urllib.request.Request(  # noqa: S310 - the fake's http:// on loopback
        f"{kube.url}/api/v1/namespaces",
        method="POST",
        data=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        ).encode(),
        headers={"Authorization": f"Bearer {DEFAULT_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        response.read()


async def test_a_delete_while_the_environment_is_built_waits_for_it_then_deletes(
    tenant: RunningServer, kube: FakeKubeServer
) -> None:
    """While ProvisionTenant is under way the organization's move to ACTIVE is written
    ahead, its row locked: a delete arriving then must neither deadlock nor be lost."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tenant.port}") as channel:
        api = TenantApi(channel)
        person = await api.login(await api.signup())
        slug = new_slug()
        # The namespace's creation is held until released below.
        held = kube.inject_rendezvous(
            2, method="PATCH", path=f"/namespaces/org-{slug}$", times=1, timeout=60
        )
        creating = asyncio.ensure_future(api.create_org(person, slug))

        async def namespace_asked() -> int:
            return held.hits

        await eventually(namespace_asked, lambda hits: hits == 1)
        await api.login(person, slug)
        deleting = asyncio.ensure_future(
            api.stub.DeleteOrganization(
                pb.DeleteOrganizationRequest(organization=slug),
                metadata=person.auth,
                timeout=30,
            )
        )
        kube.clear_faults()  # the namespace is created, the saga goes on
        created = await creating
        await deleting  # neither waits for the other forever
        # Whichever came first, the creation's answer is what it did; PROVISIONING
        # when its own call found the Provisioner's channel still backing off (the
        # saga loop, converging the organizations of this module's earlier tests,
        # may have tried it before the Provisioner was up), the saga loop then
        # building the environment, its move to ACTIVE written ahead all the same.
        assert created.state in (PROVISIONING, ACTIVE, pb.Organization.STATE_DELETING)

        async def environment_gone() -> bool:
            return kube.get_object("namespaces", f"org-{slug}", None) is None

        await eventually(environment_gone, lambda gone: gone)


async def test_two_replicas_serve_the_same_users_and_revocations(
    saga_env: dict[str, str],
) -> None:
    provisioner = await start_provisioner(saga_env)
    replicas = await asyncio.gather(
        *(
            asyncio.to_thread(Replica, {**saga_env, "GRPC_PORT": "0"}, "tenant_service")
            for _ in range(2)
        )
    )
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as a_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as b_channel,
        ):
            a, b = TenantApi(a_channel), TenantApi(b_channel)
            person = await a.signup()
            await b.login(person)
            org = await b.create_org(person)
            assert org.state == ACTIVE
            await a.login(person, org.slug)
            seen = await b.stub.GetOrganization(
                pb.GetOrganizationRequest(organization=org.slug), metadata=person.auth, timeout=10
            )
            assert seen.uid == org.uid
            await b.refresh(person)  # a pair minted on A rotates on B
            # Signing out on B is refused on A within a second.
            await b.stub.Logout(
                pb.LogoutRequest(refresh_token=person.refresh), metadata=person.auth, timeout=10
            )

            async def refused_on_a() -> bool:
                try:
                    await a.stub.GetOrganization(
                        pb.GetOrganizationRequest(organization=org.slug),
                        metadata=person.auth,
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == Code.UNAUTHENTICATED
                return False

            await eventually(refused_on_a, lambda refused: refused)
            await rpc_error(a.refresh(person, org.slug), Code.UNAUTHENTICATED)
    finally:
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in replicas))
        await provisioner.stop()


async def test_repeated_failures_are_throttled_per_client_address(
    saga_env: dict[str, str], tmp_path: Path
) -> None:
    """Many emails tried from one address: refused once the address's failures reach
    the limit, even for a right password (counters in a Redis of the test's own)."""
    redis = EmbeddedRedis(tmp_path / "redis")
    url = redis.start()
    env = {**saga_env, "REDIS_URL": url, "TENANT_LOGIN_MAX_FAILURES_PER_CLIENT": "3"}
    server = await start(TENANT, load_settings("tenant", env, extra=TENANT.extra_settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = TenantApi(channel)
            person = await api.signup()
            for _ in range(3):
                await rpc_error(
                    api.stub.Login(
                        pb.LoginRequest(email=new_email(), password="whatever it is"), timeout=10
                    ),
                    Code.UNAUTHENTICATED,
                )
            err = await rpc_error(api.login(person), Code.RESOURCE_EXHAUSTED)
            assert error_info(err).reason == "TOO_MANY_LOGIN_FAILURES"
            assert error_info(err).metadata["limit"] == "client"
    finally:
        await server.stop()
        redis.stop()
