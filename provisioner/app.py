"""Wiring of ProvisionerService into the shared server start-up.

Picks the backend (a cluster through a kubeconfig or in-cluster credentials, or a GitOps
folder), builds the use cases and the servicer, and starts the reconcile loop, which
reconciles only while this replica holds the leader lock.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from agentready.provisioner.v1 import provisioner_service_pb2, provisioner_service_pb2_grpc

from provisioner.adapters.backend import Backend
from provisioner.adapters.gitops import GitOpsBackend
from provisioner.adapters.kubernetes import KubernetesBackend
from provisioner.domain.manifests import parse_platform_services
from provisioner.domain.model import Quota
from provisioner.domain.quantity import QuantityError, parse_quantity
from provisioner.entrypoints.grpc_api import ProvisionerServiceServicer
from provisioner.service_layer.loop import ReconcileLoop
from provisioner.service_layer.tenants import Tenants, Timing
from servicekit.errors import SettingsError
from servicekit.leader import LeaderLock, leader_lock_key
from servicekit.server import Resources, ServiceSpec
from servicekit.settings import ExtraSetting, Settings

log = logging.getLogger(__name__)

SERVICE_NAME = provisioner_service_pb2.DESCRIPTOR.services_by_name["ProvisionerService"].full_name
BACKENDS = ("auto", "kubernetes", "gitops")

SETTINGS = {
    "PROVISIONER_BACKEND": ExtraSetting(
        "auto",
        "Where tenant objects go: `kubernetes`, `gitops`, or `auto` (Kubernetes when "
        "`KUBECONFIG` is set or the server runs in a pod, else GitOps).",
    ),
    "PROVISIONER_GITOPS_DIR": ExtraSetting(
        ".data/gitops",
        "Folder of the GitOps backend (one Kustomize directory per tenant), relative "
        "to the working directory.",
    ),
    "KUBECONFIG": ExtraSetting(
        "(unset)",
        "Path of the kubeconfig the Kubernetes backend uses (its current context).",
    ),
    "KUBERNETES_SERVICE_HOST": ExtraSetting(
        "(unset)",
        "Set by Kubernetes in every pod; without `KUBECONFIG` the pod's service account is used.",
    ),
    "PROVISIONER_RECONCILE_INTERVAL_SECONDS": ExtraSetting(
        "30",
        "How often a READY environment is re-applied (objects changed or deleted by hand "
        "come back); the loop looks for due environments at least every second.",
        kind="seconds",
        lo=0.05,
        hi=86400,
    ),
    "PROVISIONER_RECONCILE_CONCURRENCY": ExtraSetting(
        "8",
        "Environments the reconcile loop converges at once.",
        kind="int",
        lo=1,
        hi=256,
    ),
    "PROVISIONER_BACKOFF_BASE_SECONDS": ExtraSetting(
        "1",
        "Wait before re-trying an environment after its first failed reconcile; doubles "
        "per consecutive failure.",
        kind="seconds",
        lo=0.01,
        hi=3600,
    ),
    "PROVISIONER_BACKOFF_MAX_SECONDS": ExtraSetting(
        "300",
        "Longest wait between retries of a failing environment, and the wait after a "
        "permanent error (403, 422 ...).",
        kind="seconds",
        lo=0.01,
        hi=86400,
    ),
    "PROVISIONER_DELETE_POLL_SECONDS": ExtraSetting(
        "1",
        "How often a deleted namespace is checked until it is gone.",
        kind="seconds",
        lo=0.01,
        hi=600,
    ),
    "PROVISIONER_KUBE_TIMEOUT_SECONDS": ExtraSetting(
        "10",
        "Timeout of each Kubernetes API request.",
        kind="seconds",
        lo=0.1,
        hi=600,
    ),
    "PROVISIONER_KUBE_ATTEMPTS": ExtraSetting(
        "3",
        "Tries per Kubernetes API call while its error is temporary (timeouts, 429, 5xx).",
        kind="int",
        lo=1,
        hi=20,
    ),
    "PROVISIONER_KUBE_RETRY_BASE_SECONDS": ExtraSetting(
        "0.2",
        "Backoff before the second try of a call; doubles per try, with jitter (a "
        "`Retry-After` from the server wins when longer).",
        kind="seconds",
        lo=0,
        hi=60,
    ),
    "PROVISIONER_KUBE_WORKERS": ExtraSetting(
        "16",
        "Pooled connections (concurrent requests) to the Kubernetes API.",
        kind="int",
        lo=1,
        hi=256,
    ),
    "PROVISIONER_MAX_QUOTA_CPU": ExtraSetting(
        "64",
        "Largest CPU quota a tenant may give itself; above it only an operator may set it.",
    ),
    "PROVISIONER_MAX_QUOTA_MEMORY": ExtraSetting(
        "256Gi", "Largest memory quota a tenant may give itself (operators may go above)."
    ),
    "PROVISIONER_MAX_QUOTA_STORAGE": ExtraSetting(
        "1Ti", "Largest storage quota a tenant may give itself (operators may go above)."
    ),
    "PROVISIONER_PLATFORM_EGRESS": ExtraSetting(
        "agentready/agentready-config:50052",
        "Platform services tenant pods may reach through their namespace's default-deny "
        "NetworkPolicy, as `<namespace>/<app.kubernetes.io/name>:<port>`, comma-separated "
        "(default: ConfigService, so pods can watch their configuration); empty: none.",
    ),
    "PROVISIONER_LEADER_LOCK": ExtraSetting(
        "agentready:provisioner:leader",
        "Name of the PostgreSQL advisory lock the reconcile leader holds; replicas "
        "sharing it elect one leader.",
    ),
}


def _given(value: str) -> str:
    """Documented "(unset)" defaults mean no value."""
    return "" if value == "(unset)" else value


def choose_backend(extra: Mapping[str, Any]) -> str:
    """``kubernetes`` or ``gitops``, from the settings.

    Raises:
        SettingsError: an unknown backend, or ``kubernetes`` without any credentials.
    """
    wanted = str(extra["PROVISIONER_BACKEND"]).lower()
    if wanted not in BACKENDS:
        raise SettingsError(
            f"PROVISIONER_BACKEND={wanted!r}: expected one of {', '.join(BACKENDS)}"
        )
    kubeconfig = _given(extra["KUBECONFIG"])
    in_cluster = bool(_given(extra["KUBERNETES_SERVICE_HOST"]))
    if kubeconfig and not Path(kubeconfig).is_file():
        raise SettingsError(f"KUBECONFIG={kubeconfig!r}: no such file")
    if wanted == "auto":
        return "kubernetes" if kubeconfig or in_cluster else "gitops"
    if wanted == "kubernetes" and not (kubeconfig or in_cluster):
        raise SettingsError(
            "PROVISIONER_BACKEND=kubernetes needs KUBECONFIG or in-cluster credentials"
        )
    return wanted


def max_quota(extra: Mapping[str, Any]) -> Quota:
    """The platform's maximum tenant quota, from the settings.

    Raises:
        SettingsError: a value is not a Kubernetes quantity.
    """
    values = {}
    for field in ("cpu", "memory", "storage"):
        name = f"PROVISIONER_MAX_QUOTA_{field.upper()}"
        try:
            parse_quantity(str(extra[name]))
        except QuantityError as exc:
            raise SettingsError(f"{name}={extra[name]!r}: {exc}") from None
        values[field] = str(extra[name])
    return Quota(**values)


def build_backend(settings: Settings) -> Backend:
    """The backend the settings name."""
    extra = settings.extra
    try:
        platform = parse_platform_services(str(extra["PROVISIONER_PLATFORM_EGRESS"]))
    except ValueError as exc:
        raise SettingsError(f"PROVISIONER_PLATFORM_EGRESS: {exc}") from exc
    if choose_backend(extra) == "gitops":
        return GitOpsBackend(Path(extra["PROVISIONER_GITOPS_DIR"]).absolute(), platform=platform)
    kubeconfig = _given(extra["KUBECONFIG"])
    try:
        return KubernetesBackend.from_config(
            Path(kubeconfig) if kubeconfig else None,
            timeout=extra["PROVISIONER_KUBE_TIMEOUT_SECONDS"],
            attempts=extra["PROVISIONER_KUBE_ATTEMPTS"],
            retry_base=extra["PROVISIONER_KUBE_RETRY_BASE_SECONDS"],
            # No threads any more (the calls run on the event loop): the setting now
            # bounds the pooled connections alone.
            connections=extra["PROVISIONER_KUBE_WORKERS"],
            platform=platform,
        )
    except Exception as exc:  # the config loaders raise several kinds
        raise SettingsError(f"cannot load the Kubernetes configuration: {exc}") from exc


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Builds ProvisionerService and starts its reconcile loop."""
    settings = resources.settings
    extra = settings.extra
    backend = build_backend(settings)
    interval = float(extra["PROVISIONER_RECONCILE_INTERVAL_SECONDS"])
    timing = Timing(
        interval=interval,
        backoff_base=extra["PROVISIONER_BACKOFF_BASE_SECONDS"],
        backoff_max=extra["PROVISIONER_BACKOFF_MAX_SECONDS"],
        delete_poll=extra["PROVISIONER_DELETE_POLL_SECONDS"],
    )
    tenants = Tenants(resources.pool, backend, timing)
    leader = LeaderLock(
        settings.database_url, key=leader_lock_key(extra["PROVISIONER_LEADER_LOCK"])
    )
    loop = ReconcileLoop(
        tenants,
        leader,
        tick=min(interval, 1.0, timing.delete_poll),
        concurrency=extra["PROVISIONER_RECONCILE_CONCURRENCY"],
    )
    servicer = ProvisionerServiceServicer(tenants, max_quota=max_quota(extra))
    provisioner_service_pb2_grpc.add_ProvisionerServiceServicer_to_server(servicer, server)
    log.info("provisioner backend: %s", backend.kind.value)
    resources.parts["reconcile_loop"] = loop
    resources.run_in_background(loop.run(), name="provisioner-reconcile", stop_when_stopping=True)

    async def close() -> None:
        await tenants.close()
        await backend.close()

    resources.on_shutdown(close)


SPEC = ServiceSpec(
    name="provisioner",
    schema="provisioner",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    public_methods=frozenset(),
    extra_settings=SETTINGS,
)
