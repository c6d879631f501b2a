"""ProvisionerService: how long provisioning a tenant takes against a slow API server.

The fake Kubernetes API charges latency by verb (see ``tests/fakekube``): creating a
namespace takes 50 ms, every other write (create, update, delete) 20 ms, reads
nothing. Every call here is a server-side apply; one that creates the object is charged
as a create, one that changes an existing object as an update. Provisioning a tenant is
five objects created, then the isolation-ready label applied to the existing namespace
(an update):

* sequential, one call after another: 50 + 4 x 20 (+ 20 for the label) ms;
* the Provisioner's way: the namespace, then the four guard objects concurrently, then
  the label: 50 + 20 (+ 20) ms.

The fake runs in a process of its own, as a real API server would (in-process, its
request handling would compete with the client for the GIL). Figures (p50/p95 over
the tenants), each for sequential and concurrent:

* "guarded": until the namespace and every guard object exist;
* "ready": the whole apply, isolation-ready label included (it must come last);
* ProvisionTenant over gRPC, end to end (PostgreSQL writes included), concurrent only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from agentready.provisioner.v1 import provisioner_pb2 as pb
from agentready.provisioner.v1 import provisioner_service_pb2_grpc

from provisioner.adapters.backend import Foresight
from provisioner.adapters.kube_http import Prepared
from provisioner.adapters.kubernetes import ISOLATION_MANAGER, KubernetesBackend
from provisioner.app import SPEC
from provisioner.domain import manifests
from provisioner.domain.model import (
    GUARDS,
    ApplyReport,
    ConditionType,
    Observation,
    Quota,
    StepResult,
    TenantSpec,
)
from servicekit.devstack import free_port
from servicekit.server import start
from servicekit.settings import load_settings
from tests.bench.common import bench_environment, ms, percentile

CREATE_NAMESPACE_LATENCY = 0.05  # creating a namespace
WRITE_LATENCY = 0.02  # every other write: creating another object, any update or delete

# The fake's latency rules (see tests/fakekube): the first of verb:resource, verb,
# resource, default that is set applies; reads (get, list) fall to the default, 0.
LATENCY_RULES = {
    "create:namespaces": CREATE_NAMESPACE_LATENCY,
    "create": WRITE_LATENCY,
    "update": WRITE_LATENCY,
    "delete": WRITE_LATENCY,
}


class ConcurrentBackend(KubernetesBackend):
    """The production backend, noting when the guard objects were all in place."""

    guarded_at = 0.0

    async def _mark_isolation(
        self,
        spec: TenantSpec,
        ns: Any,
        steps: list[StepResult],
        label: Prepared,
        foresee: Foresight | None,
        observation: Observation,
    ) -> StepResult:
        self.guarded_at = time.perf_counter()
        return await super()._mark_isolation(spec, ns, steps, label, foresee, observation)


class SequentialBackend(KubernetesBackend):
    """The same calls as :class:`KubernetesBackend`, one after another (the baseline)."""

    guarded_at = 0.0

    async def apply(self, spec: TenantSpec, *, foresee: Foresight | None = None) -> ApplyReport:
        del foresee  # the baseline writes its outcome after the apply
        await self._apply(manifests.namespace(spec))
        objects = manifests.guard_objects(spec)
        for kind in GUARDS:
            await self._apply(objects[kind])
        self.guarded_at = time.perf_counter()
        await self._apply(manifests.isolation_marker(spec, ready=True), manager=ISOLATION_MANAGER)
        return ApplyReport([StepResult(kind) for kind in ConditionType])


# The latency alone, without any client or server processing: (guarded, ready). The
# namespace and the guard objects are created; the isolation-ready label is an update of
# the namespace that now exists.
IDEAL = {
    "sequential": (
        CREATE_NAMESPACE_LATENCY + 4 * WRITE_LATENCY,
        CREATE_NAMESPACE_LATENCY + 4 * WRITE_LATENCY + WRITE_LATENCY,
    ),
    "concurrent": (
        CREATE_NAMESPACE_LATENCY + WRITE_LATENCY,
        CREATE_NAMESPACE_LATENCY + WRITE_LATENCY + WRITE_LATENCY,
    ),
}


def line(label: str, values: Sequence[float], ideal: float | None = None) -> str:
    text = (
        f"  {label:<44} p50 {ms(percentile(values, 50)):>10}   "
        f"p95 {ms(percentile(values, 95)):>10}   (n={len(values)})"
    )
    if ideal is not None:
        text += f"   latency alone {ms(ideal)}"
    return text


async def backend_runs(kubeconfig: Path, tenants: int) -> None:
    backends: list[tuple[str, type[SequentialBackend | ConcurrentBackend]]] = [
        ("sequential", SequentialBackend),
        ("concurrent", ConcurrentBackend),
    ]
    for name, cls in backends:
        backend = cls.from_config(kubeconfig)
        ready: list[float] = []
        guarded: list[float] = []
        try:
            await backend.apply(TenantSpec(f"warm-{name}", ("alice",), Quota(), {}))
            for i in range(tenants):
                spec = TenantSpec(f"{name}-{i:03d}", ("alice",), Quota(), {})
                started = time.perf_counter()
                report = await backend.apply(spec)
                ready.append(time.perf_counter() - started)
                assert report.ok, report.errors
                guarded.append(backend.guarded_at - started)
        finally:
            await backend.close()
        ideal = IDEAL[name]
        print(line(f"{name}: namespace + guard objects", guarded, ideal[0]), flush=True)
        print(line(f"{name}: + isolation-ready label (READY)", ready, ideal[1]), flush=True)


async def rpc_runs(env: dict[str, str], keys: Any, kubeconfig: Path, tenants: int) -> None:
    settings = load_settings(
        "provisioner",
        {**env, "KUBECONFIG": str(kubeconfig), "PROVISIONER_RECONCILE_INTERVAL_SECONDS": "3600"},
        extra=SPEC.extra_settings,
    )
    server = await start(SPEC, settings)
    latencies: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = provisioner_service_pb2_grpc.ProvisionerServiceStub(channel)
            for i in range(tenants + 1):
                org = f"rpc-{i:03d}"
                metadata = (("authorization", f"Bearer {keys.token(org)}"),)
                started = time.perf_counter()
                env_pb = await stub.ProvisionTenant(
                    pb.ProvisionTenantRequest(organization=org, owners=["alice"]),
                    metadata=metadata,
                    timeout=10,
                )
                if i:  # the first call warms connections up
                    latencies.append(time.perf_counter() - started)
                assert env_pb.state == pb.TenantEnvironment.STATE_READY, env_pb.last_error
    finally:
        await server.stop()
    print(line("ProvisionTenant RPC, end to end (READY)", latencies), flush=True)


def main(args: argparse.Namespace) -> None:
    tenants = 10 if getattr(args, "quick", False) else 30
    print(
        f"fake API latency: creating a namespace {CREATE_NAMESPACE_LATENCY * 1000:.0f} ms, "
        f"every other write {WRITE_LATENCY * 1000:.0f} ms, reads 0 ms; "
        f"{tenants} tenants per run",
        flush=True,
    )
    with (
        bench_environment() as (env, keys),
        tempfile.TemporaryDirectory() as folder,
        fake_api_process(Path(folder) / "kubeconfig") as kubeconfig,
    ):
        asyncio.run(backend_runs(kubeconfig, tenants))
        asyncio.run(rpc_runs(env, keys, kubeconfig, tenants))


@contextlib.contextmanager
def fake_api_process(kubeconfig: Path, request_log: Path | None = None) -> Iterator[Path]:
    """The fake API server in a process of its own; yields its kubeconfig. With
    ``request_log``, the fake writes every request it served there as it stops."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakekube",
            "--port",
            str(free_port()),
            "--kubeconfig",
            str(kubeconfig),
            # Handling a request costs the fake (Python, one GIL) about half a
            # millisecond; on this shared machine the kernel would often run it at
            # once on the very core of the client that just sent the request (even at
            # niceness 19), stalling the client, while a real API server runs
            # elsewhere. Under the idle policy it runs only on a core nothing else
            # wants (--nice 19 where there is no such policy). Held answers still
            # leave at normal priority, on time.
            "--idle",
            "--nice",
            "19",
            *(
                argument
                for key, seconds in LATENCY_RULES.items()
                for argument in ("--latency-rule", f"{key}={seconds}")
            ),
            *(("--request-log", str(request_log)) if request_log else ()),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not kubeconfig.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake Kubernetes API server did not start")
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written just after the server listens
        yield kubeconfig
    finally:
        process.terminate()
        process.wait(timeout=10)
