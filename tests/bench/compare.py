"""`python -m tests.bench.compare REV [--measure create-organization|set-config]`: one
call's latency, this checkout against another commit, side by side on the same machine.

The benchmark's figures move with the host (a shared virtual machine here: its speed
changes from one hour to the next), so a change is judged against its base measured
at the same time. Each round runs the whole suite of each side in turn (ConfigService,
ProvisionerService and TenantService as processes, on a scratch database of their
own) against one fake Kubernetes API at the seed's latencies, and times
``--orgs`` organizations one after another after three to warm up; the p50 of every
round and of all rounds are printed. With ``--measure set-config``, each side is one
ConfigService replica instead, and ``--orgs`` sequential SetConfig calls of one key of
one organization are timed (the health check and GetConfig beside them, for the
machine's pace). The other commit is checked out in a temporary git worktree (its code
only: the fake API, the clients and this script are this checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.bench.bench_config import Ours, _health, _timed
from tests.bench.bench_tenant import fake_api, suite
from tests.bench.common import bench_environment
from tests.bench.timeline import timed_creations
from tests.e2e.watching import Replica


async def _create(port: int, count: int) -> list[float]:
    """Milliseconds per CreateOrganization until ACTIVE, ``count`` after the warm-up."""
    return [(received - sent) * 1000 for _, sent, received in await timed_creations(port, count)]


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a temporary worktree."""
    folder = Path(tempfile.mkdtemp(prefix="agentready-compare-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(folder), revision], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], check=False)


@contextlib.contextmanager
def _working_in(folder: Path) -> Iterator[None]:
    """Servers started meanwhile run that tree's code (``python -m`` looks in the
    working directory first)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _run_side(tree: Path, kubeconfig: Path, count: int) -> list[float]:
    with bench_environment() as (env, keys):
        env = {
            **env,
            "TENANT_SIGNING_KEY_FILE": str(keys.signing_key_file),
            "PROVISIONER_RECONCILE_INTERVAL_SECONDS": "3600",
        }
        with _working_in(tree), suite(env, KUBECONFIG=str(kubeconfig)) as ports:
            return asyncio.run(_create(ports["tenant"], count))


async def _set_config(port: int, token: str, organization: str, count: int) -> list[float]:
    """Milliseconds per sequential SetConfig; the health check's and GetConfig's p50
    printed beside them."""
    ours = Ours(port, organization, token)
    try:
        await ours.set()
        health = await _health(port, count)
        get = await _timed(ours.get, count)
        samples = [s * 1000 for s in await _timed(ours.set, count)]
    finally:
        await ours.close()
    print(
        f"  health {statistics.median(health) * 1000:.3f} ms, "
        f"GetConfig {statistics.median(get) * 1000:.3f} ms",
        flush=True,
    )
    return samples


def _run_config_side(tree: Path, count: int) -> list[float]:
    with bench_environment() as (env, keys), _working_in(tree):
        replica = Replica({**env, "CONFIG_POLL_INTERVAL_SECONDS": "1"})
        try:
            organization = f"compare-{uuid.uuid4().hex[:8]}"
            return asyncio.run(
                _set_config(replica.port, keys.token(organization), organization, count)
            )
        finally:
            replica.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare", description=__doc__)
    parser.add_argument("revision", help="the commit to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--orgs", type=int, default=100, help="organizations (or calls) per side and round"
    )
    parser.add_argument(
        "--measure", choices=("create-organization", "set-config"), default="create-organization"
    )
    args = parser.parse_args()
    here = Path.cwd()
    results: dict[str, list[float]] = {args.revision: [], "this checkout": []}
    with (
        _worktree(args.revision) as other,
        tempfile.TemporaryDirectory() as folder,
        fake_api(Path(folder) / "kubeconfig") as kubeconfig,
    ):
        for round_ in range(1, args.rounds + 1):
            for name, tree in ((args.revision, other), ("this checkout", here)):
                if args.measure == "set-config":
                    samples = _run_config_side(tree, args.orgs)
                else:
                    samples = _run_side(tree, kubeconfig, args.orgs)
                results[name] += samples
                print(
                    f"round {round_}, {name}: p50 {statistics.median(samples):.2f} ms",
                    flush=True,
                )
    for name, samples in results.items():
        print(f"{name}: p50 {statistics.median(samples):.2f} ms over {len(samples)} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
