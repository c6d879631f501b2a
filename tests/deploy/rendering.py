"""Renders deploy/'s Kustomize overlays once per test session.

``kubectl kustomize`` (kustomize built into kubectl, no cluster needed) when kubectl is
installed; otherwise the tests that need rendered objects are skipped with the reason.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from servicekit.devstack import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ("dev", "prod")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# The suite's own servers: service name → (Deployment, python -m module).
SERVERS = {
    "tenant": ("agentready-tenant", "tenant_service"),
    "config": ("agentready-config", "config_service"),
    "provisioner": ("agentready-provisioner", "provisioner"),
}

Obj = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered here")
    return found


@functools.cache
def _render(path: str, binary: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        [binary, "kustomize", path], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(overlay: str) -> list[Obj]:
    """The objects of ``deploy/overlays/<overlay>`` (or ``base``), as kubectl renders them."""
    path = DEPLOY / "base" if overlay == "base" else DEPLOY / "overlays" / overlay
    return list(_render(str(path), kubectl()))


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels / matchExpressions) matches ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values")
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))
