"""The one interface every backend implements: apply, observe, revoke, delete, gone.

Each method is idempotent, so the service layer can retry any of them and a crash
between two of them leaves nothing the next reconcile cannot finish.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

from provisioner.domain.model import ApplyReport, BackendKind, Observation, TenantSpec

# Told the report an apply will return if its last call succeeds, while that call is
# under way (see :meth:`Backend.apply`).
Foresight = Callable[[ApplyReport], Awaitable[None]]


class Backend(abc.ABC):
    """Where a tenant's objects are written (a cluster, or a GitOps folder)."""

    kind: BackendKind

    @abc.abstractmethod
    async def apply(self, spec: TenantSpec, *, foresee: Foresight | None = None) -> ApplyReport:
        """Makes the environment match ``spec``: the namespace first, then the guard
        objects, then (only when every guard object exists) the isolation-ready label.

        Failures are reported per object in the report, never raised.

        Args:
            foresee: awaited, at most once, with the report the apply will return if
                its last call succeeds, while that call is on its way (a backend whose
                last step takes no time need not call it). The caller may prepare
                its outcome meanwhile; it must not raise, and the apply returns the
                report as it turned out, which may differ.
        """

    @abc.abstractmethod
    async def observe(self, spec: TenantSpec) -> Observation | None:
        """What is there now (namespace phase, quota hard and used); ``None`` when it
        cannot be seen right now."""

    @abc.abstractmethod
    async def revoke(self, spec: TenantSpec) -> None:
        """First step of deprovisioning: drops the isolation-ready label and the
        owners' binding, and denies all traffic.

        Raises:
            BackendError: a step failed; nothing is left half-revoked that a retry
                would not finish.
        """

    @abc.abstractmethod
    async def delete(self, spec: TenantSpec) -> None:
        """Starts removing the namespace (and with it everything in it).

        Raises:
            BackendError: the removal could not be started.
        """

    @abc.abstractmethod
    async def gone(self, spec: TenantSpec) -> bool:
        """Whether the namespace no longer exists.

        Raises:
            BackendError: it cannot be told right now.
        """

    async def check_claim(self, spec: TenantSpec) -> None:
        """Checks that the environment's namespace is ours to use: absent, or carrying
        our labels for this organization (never someone else's, taken over).

        Raises:
            BackendError: reason ``NamespaceNotOurs`` (permanent) when it is not, or a
                temporary error when it cannot be told right now.
        """
        del spec  # a backend whose objects are all its own has nothing to check

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases connections and threads."""
