"""The GitOps backend: each tenant as a Kustomize directory, for a GitOps tool to apply.

``<root>/org-<slug>/`` holds ``namespace.yaml``, ``rolebinding.yaml``,
``resourcequota.yaml``, ``limitrange.yaml``, ``networkpolicy.yaml`` and a
``kustomization.yaml`` listing them. A directory is always replaced whole: the new one
is written beside it under a temporary name, flushed, then swapped in with one rename
(``renameat2(RENAME_EXCHANGE)`` where Linux offers it), so a reader (or a ``git add``)
never sees half a tenant. An unchanged tenant is not rewritten at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from provisioner.adapters.backend import Backend, Foresight
from provisioner.domain import manifests
from provisioner.domain.model import (
    ApplyReport,
    BackendError,
    BackendKind,
    ConditionType,
    Observation,
    StepResult,
    TenantSpec,
)

HEADER = "# Written by agentready-provisioner; edits are overwritten on the next reconcile.\n"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _dump(obj: Any) -> str:
    text: str = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
    return HEADER + text


def render(
    spec: TenantSpec,
    *,
    revoked: bool = False,
    platform: Sequence[manifests.PlatformService] = (),
) -> dict[str, str]:
    """File name → content of a tenant directory.

    Args:
        revoked: the deprovisioning variant: no owners' binding, all traffic denied,
            not isolation-ready.
    """
    objects: dict[str, dict[str, Any]] = {
        "namespace.yaml": manifests.namespace(spec, isolation_ready=not revoked)
    }
    if not revoked:
        objects["rolebinding.yaml"] = manifests.role_binding(spec)
    objects["resourcequota.yaml"] = manifests.resource_quota(spec)
    objects["limitrange.yaml"] = manifests.limit_range(spec)
    objects["networkpolicy.yaml"] = manifests.network_policy(
        spec, deny_all=revoked, platform=platform
    )
    files = {name: _dump(obj) for name, obj in objects.items()}
    files["kustomization.yaml"] = _dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": list(objects),
        }
    )
    return files


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two directories (Linux ``renameat2``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


class GitOpsBackend(Backend):
    """Writes tenants into a folder; observed fields stay empty."""

    kind = BackendKind.GITOPS

    def __init__(self, root: Path, *, platform: Sequence[manifests.PlatformService] = ()) -> None:
        self.root = root
        self._platform = tuple(platform)

    def directory(self, spec: TenantSpec) -> Path:
        """Where the tenant's manifests live."""
        return self.root / spec.namespace

    async def apply(self, spec: TenantSpec, *, foresee: Foresight | None = None) -> ApplyReport:
        del foresee  # one write: nothing to overlap with
        try:
            await asyncio.to_thread(self._write, spec, render(spec, platform=self._platform))
        except OSError as exc:
            error = _os_error(exc)
            return ApplyReport([StepResult(ConditionType.NAMESPACE, error)])
        return ApplyReport([StepResult(kind) for kind in ConditionType])

    async def observe(self, spec: TenantSpec) -> Observation | None:
        return Observation()

    async def revoke(self, spec: TenantSpec) -> None:
        if not self.directory(spec).exists():
            return
        try:
            await asyncio.to_thread(self._write, spec, render(spec, revoked=True))
        except OSError as exc:
            raise _os_error(exc) from exc

    async def delete(self, spec: TenantSpec) -> None:
        try:
            await asyncio.to_thread(self._remove, self.directory(spec))
        except OSError as exc:
            raise _os_error(exc) from exc

    async def gone(self, spec: TenantSpec) -> bool:
        return not self.directory(spec).exists()

    async def close(self) -> None:
        return None

    # -- blocking file work, run in a thread --------------------------------------------

    def _write(self, spec: TenantSpec, files: dict[str, str]) -> None:
        target = self.directory(spec)
        if _same(target, files):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".tmp-{spec.namespace}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for name, content in files.items():
                with open(staging / name, "w", encoding="utf-8") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
            if not target.exists():
                staging.rename(target)
            elif _exchange(staging, target):
                pass  # staging now holds the old directory; removed below
            else:
                # No atomic exchange here: move the old one aside, then the new one in.
                aside = self.root / f".old-{spec.namespace}-{uuid.uuid4().hex[:8]}"
                target.rename(aside)
                staging.rename(target)
                staging = aside
            _fsync_dir(self.root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _remove(self, target: Path) -> None:
        if not target.exists():
            return
        aside = self.root / f".deleted-{target.name}-{uuid.uuid4().hex[:8]}"
        target.rename(aside)  # gone from the tree in one step
        _fsync_dir(self.root)
        shutil.rmtree(aside, ignore_errors=True)


def _same(target: Path, files: dict[str, str]) -> bool:
    if not target.is_dir():
        return False
    try:
        present = {p.name for p in target.iterdir()}
        if present != set(files):
            return False
        return all((target / name).read_text(encoding="utf-8") == c for name, c in files.items())
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _os_error(exc: OSError) -> BackendError:
    permanent = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
    return BackendError(
        f"cannot write the GitOps folder: {exc}",
        temporary=not permanent,
        reason="PermissionDenied" if permanent else "WriteFailed",
    )
