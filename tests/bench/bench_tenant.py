"""TenantService: sign-in, reads, organizations created end to end, revocation delay.

The three services run as processes of their own (argon2id at its production
parameters: 64 MiB, 3 passes, 4 lanes); clients run in this process. Figures printed:

* Login: latency of sequential sign-ins and throughput with concurrent clients (bound
  by argon2id, by design);
* GetOrganization: latency and throughput with concurrent clients;
* CreateOrganization until ACTIVE, end to end (TenantService → ProvisionerService →
  GitOps folder, or the fake Kubernetes API at the seed's latencies: creating a
  namespace 50 ms, every other write 20 ms, so 90 ms of API time at the least);
* revocation: from Logout's answer until ConfigService refuses the token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.provisioner.v1 import provisioner_pb2 as ppb
from agentready.provisioner.v1 import provisioner_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2 as pb
from agentready.tenant.v1 import tenant_service_pb2_grpc

from tests.bench.common import bench_environment
from tests.bench.results import RESULTS
from tests.conftest import Keys

if TYPE_CHECKING:
    from agentready.tenant.v1.tenant_service_pb2_grpc import TenantServiceAsyncStub
from tests.e2e.watching import Replica

PASSWORD = "correct horse battery staple"


def summary(name: str, samples: list[float]) -> None:
    """Prints the distribution and adds it to the results table."""
    RESULTS.latency("tenant", name, samples)


async def throughput(
    name: str, call: Callable[[], Awaitable[object]], *, clients: int, seconds: float
) -> None:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    RESULTS.figure("tenant", f"{name}, {clients} concurrent clients", done / elapsed, "/s")


class Session:
    """A signed-up user with a token scoped to its organization."""

    def __init__(self, stub: TenantServiceAsyncStub) -> None:
        self.stub = stub
        self.email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        self.access = ""

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access}"),)

    async def signup(self) -> None:
        await self.stub.CreateUser(
            pb.CreateUserRequest(user=pb.User(email=self.email), password=PASSWORD), timeout=30
        )

    async def login(self, organization: str = "") -> pb.LoginResponse:
        reply: pb.LoginResponse = await self.stub.Login(
            pb.LoginRequest(email=self.email, password=PASSWORD, organization=organization),
            timeout=30,
        )
        self.access = reply.tokens.access_token
        return reply


async def create_organizations(
    stub: TenantServiceAsyncStub, session: Session, count: int, label: str
) -> None:
    samples = []
    states = []
    for _ in range(count):
        slug = f"b{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        org = await stub.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(slug=slug)),
            metadata=session.auth,
            timeout=30,
        )
        samples.append(time.perf_counter() - started)
        states.append(org.state)
    active = sum(1 for s in states if s == pb.Organization.STATE_ACTIVE)
    name = f"CreateOrganization until ACTIVE ({label}; {active}/{count} ACTIVE)"
    if label == "warm-up":
        print(f"{name}: done", flush=True)  # not a figure: connections and caches warm up
    else:
        summary(name, samples)


async def measure(tenant_port: int, config_port: int, rounds: int) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{tenant_port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{config_port}") as config_channel,
    ):
        stub: Any = tenant_service_pb2_grpc.TenantServiceStub(channel)
        config: Any = config_service_pb2_grpc.ConfigServiceStub(config_channel)
        session = Session(stub)
        await session.signup()
        await session.login()
        await create_organizations(stub, session, 3, "warm-up")

        samples = []
        for _ in range(max(10, rounds // 10)):
            started = time.perf_counter()
            await session.login()
            samples.append(time.perf_counter() - started)
        summary("Login (argon2id verify)", samples)
        await throughput("Login", session.login, clients=4, seconds=3)

        await create_organizations(stub, session, rounds, "GitOps backend")

        slug = f"b{uuid.uuid4().hex[:12]}"
        await stub.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(slug=slug)),
            metadata=session.auth,
            timeout=30,
        )
        await session.login(slug)
        request = pb.GetOrganizationRequest(organization=slug)

        async def get() -> object:
            return await stub.GetOrganization(request, metadata=session.auth, timeout=30)

        samples = []
        for _ in range(rounds * 10):
            started = time.perf_counter()
            await get()
            samples.append(time.perf_counter() - started)
        summary("GetOrganization", samples)
        await throughput("GetOrganization", get, clients=16, seconds=3)

        delays = []
        for _ in range(max(5, rounds // 5)):
            await session.login(slug)
            token = session.auth
            await config.ListConfigs(
                config_pb2.ListConfigsRequest(organization=slug), metadata=token, timeout=30
            )
            await stub.Logout(pb.LogoutRequest(), metadata=token, timeout=30)
            answered = time.perf_counter()
            while True:
                try:
                    await config.ListConfigs(
                        config_pb2.ListConfigsRequest(organization=slug),
                        metadata=token,
                        timeout=30,
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        break
                    raise
            delays.append(time.perf_counter() - answered)
        summary("revocation: Logout answered → refused by ConfigService", delays)


@contextlib.contextmanager
def suite(env: dict[str, str], **provisioner_env: str) -> Iterator[dict[str, int]]:
    """ConfigService, ProvisionerService and TenantService as processes."""
    config = Replica(env, "config_service")
    provisioner = Replica({**env, **provisioner_env}, "provisioner")
    tenant = Replica(
        {
            **env,
            "TENANT_PROVISIONER_ADDRESS": f"127.0.0.1:{provisioner.port}",
            "CONFIG_ADDRESS": f"127.0.0.1:{config.port}",
        },
        "tenant_service",
    )
    try:
        yield {"tenant": tenant.port, "config": config.port, "provisioner": provisioner.port}
    finally:
        for replica in (tenant, provisioner, config):
            replica.stop()


def main(args: argparse.Namespace) -> None:
    rounds = 20 if args.quick else 100
    with bench_environment() as (env, keys), tempfile.TemporaryDirectory() as folder:
        env = {
            **env,
            "TENANT_SIGNING_KEY_FILE": str(keys.signing_key_file),
            "PROVISIONER_GITOPS_DIR": str(Path(folder) / "gitops"),
            "PROVISIONER_RECONCILE_INTERVAL_SECONDS": "3600",
            "METRICS_PORT": "0",
        }
        with suite(env, PROVISIONER_BACKEND="gitops") as ports:
            asyncio.run(measure(ports["tenant"], ports["config"], rounds))
            asyncio.run(gitops_share(ports["provisioner"], keys, rounds))
        with (
            fake_api(Path(folder) / "kubeconfig") as kubeconfig,
            suite(env, KUBECONFIG=str(kubeconfig)) as ports,
        ):
            asyncio.run(kube_runs(ports, keys, rounds))


async def kube_runs(ports: dict[str, int], keys: Keys, rounds: int) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['tenant']}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['provisioner']}") as provisioner_channel,
    ):
        stub: Any = tenant_service_pb2_grpc.TenantServiceStub(channel)
        provisioner: Any = provisioner_service_pb2_grpc.ProvisionerServiceStub(provisioner_channel)
        session = Session(stub)
        await session.signup()
        await session.login()
        await create_organizations(stub, session, 3, "warm-up")
        await create_organizations(
            stub, session, rounds, "fake Kubernetes API: namespace 50 ms, other writes 20 ms"
        )
        await provision_directly(provisioner, keys, rounds, "same fake API")


async def provision_directly(provisioner: Any, keys: Keys, rounds: int, label: str) -> None:
    """The decomposition: the Provisioner's share of CreateOrganization, called directly."""
    samples = []
    for _ in range(rounds):
        slug = f"p{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        await provisioner.ProvisionTenant(
            ppb.ProvisionTenantRequest(organization=slug, owners=["ada@example.com"]),
            metadata=(("authorization", f"Bearer {keys.token(slug)}"),),
            timeout=30,
        )
        samples.append(time.perf_counter() - started)
    summary(f"of which ProvisionTenant until READY ({label})", samples)


async def gitops_share(port: int, keys: Keys, rounds: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = provisioner_service_pb2_grpc.ProvisionerServiceStub(channel)
        await provision_directly(stub, keys, rounds, "GitOps backend")


@contextlib.contextmanager
def fake_api(kubeconfig: Path) -> Iterator[Path]:
    """The fake Kubernetes API in a process of its own, at the seed's latencies."""
    from tests.bench.bench_provisioner import fake_api_process

    with fake_api_process(kubeconfig) as path:
        yield path
