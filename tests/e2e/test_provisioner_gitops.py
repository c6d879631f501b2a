"""The GitOps backend: without a cluster, each tenant is a Kustomize directory a person
(or Argo CD / Flux) can read, valid against the official schemas, written atomically,
repaired when edited, and removed on deprovisioning."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from agentready.provisioner.v1 import provisioner_pb2 as pb

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import (
    Caller,
    conditions,
    eventually,
    new_org,
    prov_database_url,
    start_provisioner,
    state,
)

__all__ = ["prov_database_url"]

FILES = {
    "kustomization.yaml",
    "namespace.yaml",
    "rolebinding.yaml",
    "resourcequota.yaml",
    "limitrange.yaml",
    "networkpolicy.yaml",
}


@pytest.fixture(scope="module")
def gitops_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gitops") / "tenants"


@pytest.fixture(scope="module")
async def server(
    server_env: dict[str, str], prov_database_url: str, gitops_dir: Path
) -> AsyncIterator[RunningServer]:
    # No KUBECONFIG and not in a pod: "auto" picks the GitOps folder.
    running = await start_provisioner(
        server_env,
        prov_database_url,
        PROVISIONER_GITOPS_DIR=str(gitops_dir),
        PROVISIONER_RECONCILE_INTERVAL_SECONDS="3600",
        PROVISIONER_DELETE_POLL_SECONDS="0.05",
    )
    yield running
    await running.stop()


@pytest.fixture
async def api(server: RunningServer, keys: Keys) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Caller.of(channel, keys, new_org())


def listing(folder: Path) -> set[str]:
    """Names of the entries of ``folder``."""
    return {p.name for p in folder.iterdir()}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


async def test_a_tenant_is_a_valid_kustomize_directory(api: Caller, gitops_dir: Path) -> None:
    env = await api.provision(["alice"], quota=pb.Quota(cpu="4"), labels={"team": "ml"})
    assert env.backend == pb.TenantEnvironment.BACKEND_GITOPS
    assert state(env) == "READY"
    assert set(conditions(env).values()) == {("TRUE", "Applied")}
    assert (env.namespace_phase, dict(env.quota_hard)) == ("", {})  # nothing to observe
    folder = gitops_dir / f"org-{api.org}"
    assert {p.name for p in folder.iterdir()} == FILES
    kustomization = load(folder / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == FILES - {"kustomization.yaml"}
    for name in FILES - {"kustomization.yaml"}:
        manifest = load(folder / name)
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)  # raises when invalid
    ns = load(folder / "namespace.yaml")
    labels = ns["metadata"]["labels"]
    assert labels["agentready.io/isolation-ready"] == "true"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["team"] == "ml"
    quota = load(folder / "resourcequota.yaml")
    assert quota["spec"]["hard"]["limits.cpu"] == "4"
    assert not [n for n in listing(gitops_dir) if n.startswith(".")]  # no leftovers


def test_the_directory_renders_with_kubectl_kustomize(tmp_path: Path) -> None:
    from provisioner.adapters.gitops import render
    from provisioner.domain.model import Quota, TenantSpec

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the schema validation above still ran")
    spec = TenantSpec("acme", ("alice",), Quota(), {"team": "ml"})
    for name, content in render(spec).items():
        (tmp_path / name).write_text(content)
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rendered = list(yaml.safe_load_all(out))
    assert sorted(o["kind"] for o in rendered) == [
        "LimitRange",
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "RoleBinding",
    ]
    assert {o["metadata"].get("namespace", "org-acme") for o in rendered} == {"org-acme"}
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


async def test_unchanged_tenants_are_not_rewritten_and_changes_swap_whole(
    api: Caller, gitops_dir: Path
) -> None:
    await api.provision(["alice"])
    folder = gitops_dir / f"org-{api.org}"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    await api.provision(["alice"])
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before

    env = await api.update_quota(quota=pb.Quota(memory="64Gi"), reason="bigger models")
    assert state(env) == "READY"
    quota = load(folder / "resourcequota.yaml")
    assert quota["spec"]["hard"]["limits.memory"] == "64Gi"
    # A new directory replaced the old one whole: every file is new.
    after = {p.name: p.stat().st_ino for p in folder.iterdir()}
    assert all(after[name] != before[name][0] for name in after)
    assert not [n for n in listing(gitops_dir) if n.startswith(".")]


async def test_an_edited_or_deleted_file_is_restored_on_reconcile(
    api: Caller, gitops_dir: Path
) -> None:
    await api.provision(["alice"])
    folder = gitops_dir / f"org-{api.org}"
    (folder / "networkpolicy.yaml").unlink()
    (folder / "rolebinding.yaml").write_text("# emptied by hand\n")
    assert state(await api.reconcile()) == "READY"
    assert {p.name for p in folder.iterdir()} == FILES
    binding = load(folder / "rolebinding.yaml")
    assert binding["subjects"][0]["name"] == "alice"


async def test_deprovisioning_removes_the_directory(api: Caller, gitops_dir: Path) -> None:
    await api.provision(["alice"])
    folder = gitops_dir / f"org-{api.org}"
    assert folder.is_dir()
    await api.deprovision()
    env = await eventually(api.get, lambda e: state(e) == "DELETED", timeout=5)
    assert env.last_error == ""
    assert not folder.exists()
    assert not [n for n in listing(gitops_dir) if api.org in n]


async def test_deprovisioning_answers_deleting_first_as_the_contract_says(api: Caller) -> None:
    await api.provision(["alice"])
    answered = await api.deprovision()
    assert state(answered) == "DELETING"
    await eventually(api.get, lambda e: state(e) == "DELETED", timeout=10)
