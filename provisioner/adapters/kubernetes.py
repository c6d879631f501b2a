"""The Kubernetes backend: server-side apply over asyncio HTTP.

Calls go out on the event loop through :class:`~provisioner.adapters.kube_http.KubeHttp`
(asyncio streams, pooled keep-alive connections; the official client only loads the connection
settings), so calls that do not depend on each other run concurrently without threads:
the four guard objects after the namespace. The calls that follow the namespace (the
guards, the label) are prepared, encoded and all, while the namespace is being
created, so its answer is followed at once by their requests. Each call has a timeout
and is retried, with jittered exponential backoff, while its error is temporary.

Field managers: ``agentready-provisioner`` owns everything we apply, except the
namespace's ``agentready.io/isolation-ready`` label, which a second manager
(``agentready-provisioner-isolation``) owns. Re-applying the namespace therefore never
touches the label, and an unchanged tenant costs no write at all (every resourceVersion
stays as it was). The apply's answer is the object as stored, so the label's presence
and the quota's status are read from it, without a GET.

The calls, and so the RBAC the Provisioner needs (deploy/base/provisioner/clusterrole.yaml):
namespaces get/patch/create/delete; rolebindings patch/create/delete; resourcequotas
get/patch/create; limitranges and networkpolicies patch/create; ``bind`` on the
ClusterRole ``admin``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from provisioner.adapters.backend import Backend, Foresight
from provisioner.adapters.kube_http import (
    JSON,
    KubeHttp,
    Prepared,
    classify,
    load_configuration,
    object_path,
)
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

__all__ = ["KubernetesBackend", "classify"]

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
ISOLATION_MANAGER = f"{manifests.MANAGER}-isolation"
# The resource (URL plural) of each kind the manifests use.
PLURALS = {
    "Namespace": "namespaces",
    "RoleBinding": "rolebindings",
    "ResourceQuota": "resourcequotas",
    "LimitRange": "limitranges",
    "NetworkPolicy": "networkpolicies",
}


def manifest_path(obj: manifests.Manifest) -> str:
    """The REST path of the object a manifest describes."""
    meta = obj["metadata"]
    return object_path(
        obj["apiVersion"], PLURALS[obj["kind"]], meta["name"], meta.get("namespace", "")
    )


def _namespace_path(spec: TenantSpec) -> str:
    return object_path("v1", "namespaces", spec.namespace)


class KubernetesBackend(Backend):
    """Applies tenants to a cluster.

    Args:
        http: the connection to the API server.
        attempts: tries per call while its error is temporary.
        retry_base: first backoff between tries, doubled each time, with jitter.
    """

    kind = BackendKind.KUBERNETES

    def __init__(
        self,
        http: KubeHttp,
        *,
        attempts: int = 3,
        retry_base: float = 0.2,
        platform: Sequence[manifests.PlatformService] = (),
    ) -> None:
        self._http = http
        self._platform = tuple(platform)
        self._attempts = max(1, attempts)
        self._retry_base = retry_base

    @classmethod
    def from_config(
        cls,
        kubeconfig: Path | None,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        retry_base: float = 0.2,
        connections: int = 16,
        platform: Sequence[manifests.PlatformService] = (),
    ) -> Self:
        """From a kubeconfig file, or in-cluster when ``kubeconfig`` is None.

        Args:
            timeout: seconds per request (connecting and answering).
            connections: pooled connections to the API server, at most.
        """
        configuration = load_configuration(str(kubeconfig) if kubeconfig else None)
        http = KubeHttp(configuration, timeout=timeout, pool_size=connections)
        return cls(http, attempts=attempts, retry_base=retry_base, platform=platform)

    async def close(self) -> None:
        await self._http.close()

    # -- the call path ---------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """One API call, retried while its error is temporary; its JSON answer.

        Args:
            accept: HTTP statuses that are an answer, not a failure (e.g. 404 on a
                delete): the call returns None at once.
        """
        return await self._send(
            self._http.prepare(
                method, path, query=query, body=body, content_type=content_type, accept=accept
            )
        )

    async def _send(self, request: Prepared) -> Any:
        """:meth:`_call` of a prepared request."""
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._http.send(request)
            except BackendError as error:
                if not error.temporary or attempt == self._attempts:
                    raise
                delay = self._retry_base * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)  # noqa: S311
                if error.retry_after is not None:
                    delay = max(delay, error.retry_after)
                log.info(
                    "kubernetes call %s %s failed (%s); retry %d in %.2fs",
                    request.method,
                    request.target,
                    error,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _prepare_apply(
        self, obj: manifests.Manifest, *, manager: str = "", accept: tuple[int, ...] = ()
    ) -> Prepared:
        """Server-side apply of ``obj`` (forced: we own these fields), prepared."""
        return self._http.prepare(
            "PATCH",
            manifest_path(obj),
            query=(("fieldManager", manager or manifests.MANAGER), ("force", "true")),
            body=obj,
            content_type=APPLY,
            accept=accept,
        )

    async def _apply(
        self, obj: manifests.Manifest, *, manager: str = "", accept: tuple[int, ...] = ()
    ) -> Any:
        """Server-side apply of ``obj``; the stored object."""
        return await self._send(self._prepare_apply(obj, manager=manager, accept=accept))

    # -- the interface ---------------------------------------------------------------

    async def apply(self, spec: TenantSpec, *, foresee: Foresight | None = None) -> ApplyReport:
        namespace = asyncio.ensure_future(self._apply(manifests.namespace(spec)))
        try:
            await asyncio.sleep(0)  # the namespace's request goes out first
            # The calls that follow it are prepared while it is being created: after
            # its answer they only have to be written out.
            objects = manifests.guard_objects(spec, platform=self._platform)
            guards = [self._prepare_apply(objects[kind]) for kind in GUARDS]
            label = self._prepare_apply(
                manifests.isolation_marker(spec, ready=True), manager=ISOLATION_MANAGER
            )
            ns = await namespace
        except BackendError as exc:
            return ApplyReport([StepResult(ConditionType.NAMESPACE, exc)])
        finally:
            namespace.cancel()  # when it is still running: preparing failed
        phase = str(((ns or {}).get("status") or {}).get("phase") or "")
        if phase == "Terminating":
            waiting = BackendError(
                f"namespace {spec.namespace} is still being deleted",
                temporary=True,
                reason="NamespaceTerminating",
            )
            return ApplyReport(
                [StepResult(ConditionType.NAMESPACE, waiting)], Observation(namespace_phase=phase)
            )
        outcomes = await asyncio.gather(
            *(self._send(request) for request in guards), return_exceptions=True
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
        observation = Observation(phase, quota_hard, quota_used)
        steps.append(await self._mark_isolation(spec, ns or {}, steps, label, foresee, observation))
        return ApplyReport(steps, observation)

    async def _mark_isolation(
        self,
        spec: TenantSpec,
        ns: Any,
        steps: list[StepResult],
        label: Prepared,
        foresee: Foresight | None,
        observation: Observation,
    ) -> StepResult:
        """The isolation-ready label: set once every guard exists, removed otherwise.

        ``ns`` is the namespace as the apply answered it: whether the label is there
        already is read from it (no GET, and no write when nothing changes). ``label``
        is the apply that sets it, prepared; ``foresee`` is told the report of a
        success while it is on its way.
        """
        labels = (ns.get("metadata") or {}).get("labels") or {}
        labelled = labels.get(manifests.ISOLATION_LABEL) == "true"
        failed = [s for s in steps if s.error is not None]
        try:
            if not failed:
                if labelled:  # already there: no write, nothing changes
                    return StepResult(ConditionType.ISOLATION)
                if foresee is None:
                    await self._send(label)
                    return StepResult(ConditionType.ISOLATION)
                done = StepResult(ConditionType.ISOLATION)
                sending = asyncio.ensure_future(self._send(label))
                try:
                    await asyncio.sleep(0)  # the request goes out first
                    await foresee(ApplyReport([*steps, done], observation))
                    await sending
                finally:
                    sending.cancel()  # when still running: foresee failed, or we were
                return done
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
            "PATCH",
            _namespace_path(spec),
            query=(("fieldManager", ISOLATION_MANAGER),),
            body={"metadata": {"labels": {manifests.ISOLATION_LABEL: None}}},
            content_type=MERGE,
            accept=(404,),
        )

    async def observe(self, spec: TenantSpec) -> Observation | None:
        quota_path = object_path("v1", "resourcequotas", manifests.QUOTA_NAME, spec.namespace)
        try:
            ns, quota = await asyncio.gather(
                self._call("GET", _namespace_path(spec), accept=(404,)),
                self._call("GET", quota_path, accept=(404,)),
            )
        except BackendError as exc:
            log.info("cannot observe %s: %s", spec.namespace, exc)
            return None
        phase = str(((ns or {}).get("status") or {}).get("phase") or "")
        status = (quota or {}).get("status") or {}
        return Observation(phase, dict(status.get("hard") or {}), dict(status.get("used") or {}))

    async def revoke(self, spec: TenantSpec) -> None:
        deny_all = manifests.network_policy(spec, deny_all=True)
        binding_path = object_path(
            "rbac.authorization.k8s.io/v1",
            "rolebindings",
            manifests.ROLE_BINDING_NAME,
            spec.namespace,
        )

        async def deny() -> None:
            # Applying a namespaced object never creates its namespace: a namespace that
            # is gone answers 404, one that is going 403 NamespaceTerminating. Either
            # way no traffic is left to deny.
            try:
                await self._apply(deny_all, accept=(404,))
            except BackendError as exc:
                if exc.reason != "NamespaceTerminating":
                    raise

        results = await asyncio.gather(
            self._remove_isolation_label(spec),
            self._call("DELETE", binding_path, accept=(404,)),
            deny(),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    @staticmethod
    def _ours(spec: TenantSpec, ns: Any) -> bool:
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        return bool(
            labels.get(manifests.MANAGED_BY_LABEL) == manifests.MANAGER
            and labels.get(manifests.ORGANIZATION_LABEL) == spec.organization
        )

    async def check_claim(self, spec: TenantSpec) -> None:
        found = await self._call("GET", _namespace_path(spec), accept=(404,))
        if found is not None and not self._ours(spec, found):
            raise BackendError(
                f"namespace {spec.namespace} exists and was not created by the Provisioner "
                f"for {spec.organization!r}; an operator must label it "
                f"{manifests.MANAGED_BY_LABEL}={manifests.MANAGER} and "
                f"{manifests.ORGANIZATION_LABEL}={spec.organization} to hand it over",
                temporary=False,
                reason="NamespaceNotOurs",
            )

    async def delete(self, spec: TenantSpec) -> None:
        found = await self._call("GET", _namespace_path(spec), accept=(404,))
        if found is not None and not self._ours(spec, found):
            # Never delete what we did not create (or no longer own).
            log.warning("not deleting namespace %s: it does not carry our labels", spec.namespace)
            return
        # 404: already gone; 409: already terminating.
        await self._call("DELETE", _namespace_path(spec), accept=(404, 409))

    async def gone(self, spec: TenantSpec) -> bool:
        found = await self._call("GET", _namespace_path(spec), accept=(404,))
        # A namespace that is not ours is not the environment's: ours is gone.
        return found is None or not self._ours(spec, found)
