"""The reconcile loop: level-triggered, periodic, under the leader lock.

Every replica runs the loop; only the one holding the leader lock reconciles. Each tick
it takes the environments whose ``next_reconcile_at`` has come (a READY one every
interval; a failed one after its backoff; a DELETING one every poll) and converges
them, a few at a time. Objects deleted or changed by hand thus come back within an
interval, and a saga interrupted by a crash is finished by whichever replica leads.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge

from provisioner.adapters import postgres as pg
from provisioner.service_layer.tenants import Tenants
from servicekit.leader import LeaderLock

log = logging.getLogger(__name__)

RECONCILES = Counter(
    "provisioner_reconciles_total",
    "Environments converged by the reconcile loop, by outcome: ok, failed (an error is "
    "recorded in the environment's status) or error (the attempt itself raised).",
    ["outcome"],
)
LEADER = Gauge(
    "provisioner_reconcile_leader", "1 while this replica holds the reconcile leader lock."
)


class ReconcileLoop:
    """Runs reconciliation while this replica is the leader.

    Args:
        tenants: the use cases (their ``converge`` does the work).
        leader: the leader lock.
        tick: seconds between looks for due environments.
        concurrency: environments converged at once.
        batch: environments taken per look.
    """

    def __init__(
        self,
        tenants: Tenants,
        leader: LeaderLock,
        *,
        tick: float,
        concurrency: int = 8,
        batch: int = 100,
    ) -> None:
        self._tenants = tenants
        self.leader = leader
        self._tick = tick
        self._limit = asyncio.Semaphore(concurrency)
        self._batch = batch
        self.passes = 0

    async def run(self) -> None:
        """Forever: check leadership, reconcile what is due, sleep a tick."""
        try:
            while True:
                try:
                    leading = await self.leader.check()
                    LEADER.set(1 if leading else 0)
                    if leading:
                        await self.run_once()
                except Exception:
                    log.exception("reconcile pass failed")
                await asyncio.sleep(self._tick)
        finally:
            LEADER.set(0)
            await self.leader.release()

    async def run_once(self) -> int:
        """One pass over the due environments; returns how many were converged."""
        async with self._tenants.pool.acquire() as conn:
            due = await pg.due(conn, limit=self._batch)
        done = 0

        async def one(organization: str) -> None:
            nonlocal done
            async with self._limit:
                if not self.leader.held:
                    return  # leadership lost mid-pass: leave the rest to the new leader
                try:
                    env = await self._tenants.converge(organization, only_if_due=True)
                    done += 1
                    RECONCILES.labels("failed" if env.last_error else "ok").inc()
                except Exception:
                    RECONCILES.labels("error").inc()
                    log.exception(
                        "reconcile of %s failed", organization, extra={"organization": organization}
                    )

        await asyncio.gather(*(one(org) for org in due))
        self.passes += 1
        return done
