"""Rollout status across replicas: each watcher reports the revision it applied or
refused, and ListConfigClients on any replica shows every client, its lag and its
last refusal; a client that goes away drops out after the grace period."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.watcher import AsyncConfigWatcher

from servicekit.devstack import REPO_ROOT
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, eventually, rpc_error
from tests.e2e.test_arkctl import arkctl_path
from tests.e2e.watching import Replica
from tests.rpcerrors import field_violations


@pytest.fixture(scope="module")
async def replicas(server_env: dict[str, str]) -> AsyncIterator[list[Replica]]:
    env = {**server_env, "CONFIG_CLIENT_GRACE_SECONDS": "10", "METRICS_PORT": "0"}
    started = await asyncio.gather(*(asyncio.to_thread(Replica, env) for _ in range(2)))
    yield list(started)
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in started))


async def clients(stub: Any, org: str, md: Any, selector: str = "") -> dict[str, Any]:
    page = await stub.ListConfigClients(
        config_pb2.ListConfigClientsRequest(organization=org, label_selector=selector),
        metadata=md,
        timeout=10,
    )
    return {c.client_id: c for c in page.clients}


def refuse_bad(entries: Mapping[tuple[str, str], Any]) -> None:
    if ("app", "bad") in entries:
        raise ValueError("'bad' must not be set")


async def arkctl(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Runs the installed arkctl; (exit code, standard output)."""
    process = await asyncio.create_subprocess_exec(
        arkctl_path(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


async def test_rollout_status_across_replicas_with_a_refusal_and_a_client_gone(
    replicas: list[Replica], keys: Keys, tmp_path: Path
) -> None:
    org = f"roll-{uuid.uuid4().hex[:8]}"
    token = keys.token(org)
    md = bearer(token)
    first, second = (f"127.0.0.1:{r.port}" for r in replicas)
    pod = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO_ROOT / "tests" / "e2e" / "clients" / "watch_forever.py"),
        second,
        org,
        "jobs/worker-0",
        "app=worker",
        env={**os.environ, "AGENTREADY_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert pod.stdout is not None
        ready = await asyncio.wait_for(pod.stdout.readline(), 60)
        assert ready.split()[0] == b"ready"
        async with (
            grpc.aio.insecure_channel(first) as channel,
            AsyncConfigWatcher(
                first,
                org,
                token=token,
                client_id="web/a",
                labels={"app": "web"},
                report_interval=0.5,
            ),
            AsyncConfigWatcher(
                second,
                org,
                token=token,
                client_id="web/b",
                labels={"app": "web"},
                report_interval=0.5,
                validator=refuse_bad,
            ) as picky,
        ):
            stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
            good = await stub.SetConfig(
                config_pb2.SetConfigRequest(
                    organization=org, service="app", key="k", value=config_pb2.Value(int_value=1)
                ),
                metadata=md,
            )
            # Asked on the first replica: the clients of both, all at the new revision.
            everyone = await eventually(
                lambda: clients(stub, org, md),
                lambda c: (
                    set(c) == {"web/a", "web/b", "jobs/worker-0"}
                    and all(x.applied_revision == good.revision for x in c.values())
                ),
            )
            assert all(x.lag == 0 and x.rejected_revision == 0 for x in everyone.values())
            assert dict(everyone["jobs/worker-0"].labels) == {"app": "worker"}

            bad = await stub.SetConfig(
                config_pb2.SetConfigRequest(
                    organization=org, service="app", key="bad", value=config_pb2.Value(int_value=1)
                ),
                metadata=md,
            )
            seen = await eventually(
                lambda: clients(stub, org, md, "app=web"),
                lambda c: (
                    set(c) == {"web/a", "web/b"}
                    and c["web/a"].applied_revision == bad.revision
                    and c["web/b"].rejected_revision == bad.revision
                ),
            )
            refused = seen["web/b"]
            assert (refused.applied_revision, refused.lag) == (good.revision, 1)
            assert "'bad' must not be set" in refused.rejection_reason
            assert refused.HasField("rejected_at")
            # The refusing pod keeps serving its last good state.
            assert picky.revision == good.revision
            assert ("app", "bad") not in picky.entries()
            # The worker (a process of its own) reports the change in its own time: the
            # rollout below is read once it has, so its status is settled.
            workers = await eventually(
                lambda: clients(stub, org, md, "app!=web"),
                lambda c: (
                    set(c) == {"jobs/worker-0"}
                    and c["jobs/worker-0"].applied_revision == bad.revision
                ),
            )
            assert list(workers) == ["jobs/worker-0"]

            # What a deploy pipeline runs after the change: the refusal fails the wait
            # (exit 8) with the straggler named; the workers alone have all applied it.
            env = {
                **os.environ,
                "XDG_CONFIG_HOME": str(tmp_path),
                "ARKCTL_CONFIG_ADDRESS": first,
                "ARKCTL_ORG": org,
                "ARKCTL_TOKEN": token,
            }
            code, out = await arkctl(env, "-o", "json", "config", "rollout", "--wait")
            assert code == 8
            report = json.loads(out)
            assert (report["revision"], report["complete"]) == (bad.revision, False)
            statuses = {c["client"]: c["status"] for c in report["clients"]}
            assert statuses == {"web/a": "applied", "web/b": "refused", "jobs/worker-0": "applied"}
            code, out = await arkctl(
                env, "-o", "json", "config", "rollout", "-l", "app!=web", "--wait"
            )
            assert (code, json.loads(out)["complete"]) == (0, True)
            # A selector nobody matches (a typo) fails the wait instead of passing it.
            code, out = await arkctl(
                env,
                "-o",
                "json",
                "config",
                "rollout",
                "-l",
                "app=wrokers",
                "--wait",
                "--wait-timeout",
                "0",
            )
            assert (code, json.loads(out)["clients"]) == (8, [])
            code, out = await arkctl(env, "config", "rollout")
            assert code == 0
            assert f"revision {bad.revision}: 2 of 3 clients applied it" in out

            # The pod in its own process is killed: no goodbye. It drops out after the
            # grace period; the others, still reporting, stay.
            pod.kill()
            await pod.wait()
            left = await eventually(
                lambda: clients(stub, org, md), lambda c: "jobs/worker-0" not in c
            )
            assert set(left) == {"web/a", "web/b"}
    finally:
        if pod.returncode is None:
            pod.kill()
            await pod.wait()


async def test_reports_are_checked_and_scoped_to_the_organization(
    replicas: list[Replica], keys: Keys
) -> None:
    org = f"roll-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as channel:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        err = await rpc_error(
            stub.ReportConfigStatus(
                config_pb2.ReportConfigStatusRequest(
                    organization=org,
                    client_id="bad id with spaces",
                    labels={"-x": "y"},
                    applied_revision=-1,
                ),
                metadata=bearer(keys.token(org, "viewer")),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert {"client_id", "labels[-x]", "applied_revision"} <= set(field_violations(err))
        # Another organization's token can neither report nor list.
        other = bearer(keys.token("someone-else", "viewer"))
        await rpc_error(
            stub.ReportConfigStatus(
                config_pb2.ReportConfigStatusRequest(organization=org, client_id="x"),
                metadata=other,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await rpc_error(
            stub.ListConfigClients(
                config_pb2.ListConfigClientsRequest(organization=org), metadata=other
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await rpc_error(
            stub.ListConfigClients(
                config_pb2.ListConfigClientsRequest(organization=org, label_selector="a=b=c,="),
                metadata=bearer(keys.token(org, "viewer")),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
