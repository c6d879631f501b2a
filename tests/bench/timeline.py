"""`python -m tests.bench.timeline [--orgs 100]`: where CreateOrganization's time goes.

Runs the suite against the fake Kubernetes API at the seed's latencies (as
``tests.bench.tenant`` does), creates ``--orgs`` organizations one after another and
lays each one's Kubernetes API requests, as the fake logged them (arrival as the
kernel stamped it, answer as it was written), beside the client's own send and receive
times: both sides read the machine's monotonic clock. The p50 of each gap is printed:

* ``to the namespace``: from the client's send until the namespace's create arrives
  (TenantService's record, the hop to the Provisioner, its record and ownership check);
* ``namespace``: the create's own time in the fake (50 ms charged);
* ``namespace → guards``: from that answer until the first guard arrives, and until the
  last one has;
* ``guards``: from the first guard's arrival until the last guard's answer;
* ``guards → label``: from the last guard's answer until the label's patch arrives;
* ``label``: the patch's own time (20 ms charged);
* ``label → client``: from its answer until the client has the organization ACTIVE
  (the outcome written, two hops back).

Nothing is asserted; it is a measuring tool, for changes to the path of a creation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from agentready.tenant.v1 import tenant_pb2 as pb
from agentready.tenant.v1 import tenant_service_pb2_grpc

from tests.bench.bench_provisioner import fake_api_process
from tests.bench.bench_tenant import Session, suite
from tests.bench.common import bench_environment

WARM_UP = 3


async def timed_creations(port: int, count: int) -> list[tuple[str, float, float]]:
    """``(slug, sent, received)`` on the monotonic clock, per organization, ``count``
    of them after a few to warm up."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = tenant_service_pb2_grpc.TenantServiceStub(channel)
        session = Session(stub)
        await session.signup()
        await session.login()
        timed = []
        for index in range(WARM_UP + count):
            slug = f"t{uuid.uuid4().hex[:12]}"
            request = pb.CreateOrganizationRequest(organization=pb.Organization(slug=slug))
            sent = time.monotonic()
            org = await stub.CreateOrganization(request, metadata=session.auth, timeout=30)
            received = time.monotonic()
            if org.state != pb.Organization.STATE_ACTIVE:
                raise RuntimeError(f"organization {slug} is not ACTIVE: {org.state_reason}")
            if index >= WARM_UP:
                timed.append((slug, sent, received))
        return timed


def _arrival(record: dict[str, Any]) -> float:
    return float(record["started"])


def _gaps(sent: float, received: float, requests: list[dict[str, Any]]) -> dict[str, float] | None:
    """Milliseconds per phase of one creation, or None when its requests are not the
    usual ones (a retry, a missing record)."""
    # Server-side apply: every object is a PATCH; the namespace's first one creates
    # it, its last one adds the label.
    writes = sorted((r for r in requests if r["method"] in ("PATCH", "POST")), key=_arrival)
    namespace = [r for r in writes if r["resource"] == "namespaces"]
    guards = [r for r in writes if r["resource"] != "namespaces"]
    gets = [r for r in requests if r["method"] == "GET"]
    if len(namespace) != 2 or not guards:
        return None
    ns, patch = namespace
    first_guard = min(r["started"] for r in guards)
    last_guard_in = max(r["started"] for r in guards)
    last_guard_out = max(r["finished"] for r in guards)
    ms = 1000.0
    return {
        "to the ownership GET": (min(map(_arrival, gets)) - sent) * ms if gets else 0.0,
        "to the namespace": (ns["started"] - sent) * ms,
        "namespace": (ns["finished"] - ns["started"]) * ms,
        "namespace → first guard": (first_guard - ns["finished"]) * ms,
        "namespace → last guard": (last_guard_in - ns["finished"]) * ms,
        "guards": (last_guard_out - first_guard) * ms,
        "guards → label": (patch["started"] - last_guard_out) * ms,
        "label": (patch["finished"] - patch["started"]) * ms,
        "label → client": (received - patch["finished"]) * ms,
        "total": (received - sent) * ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.timeline", description=__doc__)
    parser.add_argument("--orgs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "requests.jsonl"
        with bench_environment() as (env, keys):
            env = {
                **env,
                "TENANT_SIGNING_KEY_FILE": str(keys.signing_key_file),
                "PROVISIONER_RECONCILE_INTERVAL_SECONDS": "3600",
            }
            with (
                fake_api_process(Path(folder) / "kubeconfig", request_log=log) as kubeconfig,
                suite(env, KUBECONFIG=str(kubeconfig)) as ports,
            ):
                timed = asyncio.run(timed_creations(ports["tenant"], args.orgs))
        by_namespace: dict[str, list[dict[str, Any]]] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            name = record["namespace"] or (
                record["name"] if record["resource"] == "namespaces" else ""
            )
            by_namespace.setdefault(name, []).append(record)
    phases: dict[str, list[float]] = {}
    skipped = 0
    for slug, sent, received in timed:
        gaps = _gaps(sent, received, by_namespace.get(f"org-{slug}", []))
        if gaps is None:
            skipped += 1
            continue
        for name, value in gaps.items():
            phases.setdefault(name, []).append(value)
    print(f"{len(timed) - skipped} organizations ({skipped} left out: unusual requests)")
    for name, values in phases.items():
        print(
            f"{name:>24}: p50 {statistics.median(values):7.2f} ms   "
            f"p90 {statistics.quantiles(values, n=10)[-1]:7.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
