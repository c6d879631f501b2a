"""The Kubernetes backend: server-side apply through the official client.

The client is synchronous, so every call runs on a dedicated thread pool and the event
loop never blocks; calls that do not depend on each other run concurrently (the guard
objects after the namespace). Each call has a timeout and is retried, with jittered
exponential backoff, while its error is temporary.

Field managers: ``agentready-provisioner`` owns everything we apply, except the
namespace's ``agentready.io/isolation-ready`` label, which a second manager
(``agentready-provisioner-isolation``) owns. Re-applying the namespace therefore never
touches the label, and an unchanged tenant costs no write at all (every resourceVersion
stays as it was).

The calls, and so the RBAC the Provisioner needs (deploy/base/provisioner/clusterrole.yaml):
namespaces get/patch/create/delete; rolebindings patch/create/delete; resourcequotas
get/patch/create; limitranges and networkpolicies patch/create; ``bind`` on the
ClusterRole ``admin``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from provisioner.adapters.backend import Backend
from provisioner.domain import manifests
from provisioner.domain.model import (
    GUARDS,
    ApplyReport,
    BackendError,
    BackendKind,
    ConditionType,
    Observation,
    StepResult,
    TenantSpec,
)

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
ISOLATION_MANAGER = f"{manifests.MANAGER}-isolation"
# Errors a retry of the same call may cure.
_TEMPORARY_STATUS = frozenset({404, 408, 409, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 10.0


def classify(exc: BaseException) -> BackendError:
    """A client exception as a :class:`BackendError`, temporary or permanent."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason = str(exc.reason or "Error")
        message = str(exc.reason or "")
        causes: list[dict[str, Any]] = []
        try:
            body = json.loads(exc.body) if exc.body else {}
        except (TypeError, ValueError):
            body = {}
        if isinstance(body, dict):
            reason = str(body.get("reason") or reason)
            message = str(body.get("message") or message)
            causes = list((body.get("details") or {}).get("causes") or [])
        retry_after: float | None = None
        header = (exc.headers or {}).get("Retry-After") if exc.headers else None
        if header:
            try:
                retry_after = min(float(header), _MAX_RETRY_AFTER)
            except ValueError:
                retry_after = None
        temporary = status in _TEMPORARY_STATUS
        if status == 403 and any(c.get("reason") == "NamespaceTerminating" for c in causes):
            temporary, reason = True, "NamespaceTerminating"
        return BackendError(
            f"HTTP {status}: {message}" if status else message,
            temporary=temporary,
            reason=reason.replace(" ", ""),
            retry_after=retry_after,
            status=status,
        )
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return BackendError(f"timed out: {exc}", temporary=True, reason="Timeout")
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        exc.reason, urllib3.exceptions.TimeoutError
    ):
        return BackendError(f"timed out: {exc.reason}", temporary=True, reason="Timeout")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return BackendError(f"unreachable: {exc}", temporary=True, reason="Unreachable")
    return BackendError(f"{type(exc).__name__}: {exc}", temporary=False, reason="ClientError")


def _json_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls the client without building its typed models (costly, and not needed): the
    answer as plain JSON, or None for an empty body."""
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        data = response.data
    finally:
        response.release_conn()
    return json.loads(data) if data else None


def load_client(kubeconfig: str | None, *, pool_size: int) -> client.ApiClient:
    """An API client from a kubeconfig file, or in-cluster when ``kubeconfig`` is None.

    Retries are left to :class:`KubernetesBackend`, which tells temporary errors apart.
    """
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    configuration.retries = False
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class KubernetesBackend(Backend):
    """Applies tenants to a cluster.

    Args:
        api_client: a configured client (see :func:`load_client`).
        timeout: seconds per request (connect and read).
        attempts: tries per call while its error is temporary.
        retry_base: first backoff between tries, doubled each time, with jitter.
        workers: threads for the blocking client (and its connection pool size).
    """

    kind = BackendKind.KUBERNETES

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        retry_base: float = 0.2,
        workers: int = 16,
    ) -> None:
        self._api = api_client
        self._core = client.CoreV1Api(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)
        self._net = client.NetworkingV1Api(api_client)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._retry_base = retry_base
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="provisioner-kube")

    @classmethod
    def from_config(cls, kubeconfig: Path | None, **options: Any) -> Self:
        """From a kubeconfig file, or in-cluster when ``kubeconfig`` is None."""
        workers = int(options.get("workers", 16))
        return cls(
            load_client(str(kubeconfig) if kubeconfig else None, pool_size=workers), **options
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._api.close)

    # -- the call path ---------------------------------------------------------------

    async def _call(
        self, fn: Callable[..., Any], *args: Any, accept: tuple[int, ...] = (), **kwargs: Any
    ) -> Any:
        """``fn(*args, **kwargs)`` on the pool, retried while its error is temporary.

        Args:
            accept: HTTP statuses that are an answer, not a failure (e.g. 404 on a
                delete): the call returns None at once.
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(_json_call, fn, *args, _request_timeout=self._timeout, **kwargs)
        for attempt in range(1, self._attempts + 1):
            try:
                return await loop.run_in_executor(self._executor, call)
            except Exception as exc:  # the client raises many kinds; classify them all
                error = classify(exc)
                if error.status in accept:
                    return None
                if not error.temporary or attempt == self._attempts:
                    raise error from exc
                delay = self._retry_base * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)  # noqa: S311
                if error.retry_after is not None:
                    delay = max(delay, error.retry_after)
                log.info(
                    "kubernetes call %s failed (%s); retry %d in %.2fs",
                    getattr(fn, "__name__", "?"),
                    error,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _apply(
        self, fn: Callable[..., Any], *args: Any, manager: str = "", accept: tuple[int, ...] = ()
    ) -> Any:
        return await self._call(
            fn,
            *args,
            field_manager=manager or manifests.MANAGER,
            force=True,
            _content_type=APPLY,
            accept=accept,
        )

    # -- the interface ---------------------------------------------------------------

    async def apply(self, spec: TenantSpec) -> ApplyReport:
        try:
            ns = await self._apply(
                self._core.patch_namespace, spec.namespace, manifests.namespace(spec)
            )
        except BackendError as exc:
            return ApplyReport([StepResult(ConditionType.NAMESPACE, exc)])
        phase = str((ns.get("status") or {}).get("phase") or "")
        if phase == "Terminating":
            waiting = BackendError(
                f"namespace {spec.namespace} is still being deleted",
                temporary=True,
                reason="NamespaceTerminating",
            )
            return ApplyReport(
                [StepResult(ConditionType.NAMESPACE, waiting)], Observation(namespace_phase=phase)
            )
        objects = manifests.guard_objects(spec)
        writers: dict[ConditionType, Callable[..., Any]] = {
            ConditionType.RBAC: self._rbac.patch_namespaced_role_binding,
            ConditionType.QUOTA: self._core.patch_namespaced_resource_quota,
            ConditionType.LIMIT_RANGE: self._core.patch_namespaced_limit_range,
            ConditionType.NETWORK_POLICY: self._net.patch_namespaced_network_policy,
        }
        outcomes = await asyncio.gather(
            *(
                self._apply(
                    writers[kind], objects[kind]["metadata"]["name"], spec.namespace, objects[kind]
                )
                for kind in GUARDS
            ),
            return_exceptions=True,
        )
        steps = [StepResult(ConditionType.NAMESPACE)]
        quota_hard: dict[str, str] = {}
        quota_used: dict[str, str] = {}
        for kind, outcome in zip(GUARDS, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                steps.append(StepResult(kind, classify(outcome)))
                continue
            steps.append(StepResult(kind))
            if kind is ConditionType.QUOTA:
                status = (outcome or {}).get("status") or {}
                quota_hard = dict(status.get("hard") or {})
                quota_used = dict(status.get("used") or {})
        steps.append(await self._mark_isolation(spec, ns, steps))
        return ApplyReport(steps, Observation(phase, quota_hard, quota_used))

    async def _mark_isolation(
        self, spec: TenantSpec, ns: Any, steps: list[StepResult]
    ) -> StepResult:
        """The isolation-ready label: set once every guard exists, removed otherwise."""
        labels = (ns.get("metadata") or {}).get("labels") or {}
        labelled = labels.get(manifests.ISOLATION_LABEL) == "true"
        failed = [s for s in steps if s.error is not None]
        try:
            if not failed:
                if not labelled:  # already there: no write, nothing changes
                    await self._apply(
                        self._core.patch_namespace,
                        spec.namespace,
                        manifests.isolation_marker(spec, ready=True),
                        manager=ISOLATION_MANAGER,
                    )
                return StepResult(ConditionType.ISOLATION)
            if labelled:
                await self._remove_isolation_label(spec)
        except BackendError as exc:
            return StepResult(ConditionType.ISOLATION, exc)
        missing = ", ".join(s.condition.value for s in failed)
        return StepResult(
            ConditionType.ISOLATION,
            BackendError(
                f"not isolation-ready until these hold: {missing}",
                temporary=all(s.error is not None and s.error.temporary for s in failed),
                reason="GuardObjectsMissing",
            ),
        )

    async def _remove_isolation_label(self, spec: TenantSpec) -> None:
        # A merge patch, not an apply: it never creates a namespace that is gone.
        await self._call(
            self._core.patch_namespace,
            spec.namespace,
            {"metadata": {"labels": {manifests.ISOLATION_LABEL: None}}},
            field_manager=ISOLATION_MANAGER,
            _content_type=MERGE,
            accept=(404,),
        )

    async def observe(self, spec: TenantSpec) -> Observation | None:
        try:
            ns, quota = await asyncio.gather(
                self._call(self._core.read_namespace, spec.namespace, accept=(404,)),
                self._call(
                    self._core.read_namespaced_resource_quota,
                    manifests.QUOTA_NAME,
                    spec.namespace,
                    accept=(404,),
                ),
            )
        except BackendError as exc:
            log.info("cannot observe %s: %s", spec.namespace, exc)
            return None
        phase = str(((ns or {}).get("status") or {}).get("phase") or "")
        status = (quota or {}).get("status") or {}
        return Observation(phase, dict(status.get("hard") or {}), dict(status.get("used") or {}))

    async def revoke(self, spec: TenantSpec) -> None:
        deny_all = manifests.network_policy(spec, deny_all=True)

        async def deny() -> None:
            # Applying a namespaced object never creates its namespace: a namespace that
            # is gone answers 404, one that is going 403 NamespaceTerminating. Either
            # way no traffic is left to deny.
            try:
                await self._apply(
                    self._net.patch_namespaced_network_policy,
                    manifests.NETWORK_POLICY_NAME,
                    spec.namespace,
                    deny_all,
                    accept=(404,),
                )
            except BackendError as exc:
                if exc.reason != "NamespaceTerminating":
                    raise

        results = await asyncio.gather(
            self._remove_isolation_label(spec),
            self._call(
                self._rbac.delete_namespaced_role_binding,
                manifests.ROLE_BINDING_NAME,
                spec.namespace,
                accept=(404,),
            ),
            deny(),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def delete(self, spec: TenantSpec) -> None:
        # 404: already gone; 409: already terminating.
        await self._call(self._core.delete_namespace, spec.namespace, accept=(404, 409))

    async def gone(self, spec: TenantSpec) -> bool:
        found = await self._call(self._core.read_namespace, spec.namespace, accept=(404,))
        return found is None
