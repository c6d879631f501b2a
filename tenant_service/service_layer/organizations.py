"""Organizations and their sagas.

Creating: one transaction records the organization PROVISIONING with its first owner
(and the request id); then :meth:`Organizations.converge` asks the Provisioner for the
environment and marks it ACTIVE once READY. Deleting: one transaction marks it DELETING
and revokes every token scoped to it; converge then deprovisions the environment,
purges its configuration and marks it DELETED.

Every step is idempotent and its outcome is written back (state, reason, failures,
``next_attempt_at``). The RPC converges once right away; whatever is left (the
Provisioner down, a temporary error, a crash between two steps) is found by the saga
loop, which runs on the replica holding the leader lock and converges every
organization whose ``next_attempt_at`` has come, with exponential backoff. A permanent
error (the Provisioner refusing the request) is FAILED with the reason, still retried
at the longest backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping

import asyncpg
from prometheus_client import Counter

from servicekit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
)
from servicekit.keyedlock import KeyedLocks
from servicekit.leader import LeaderLock
from servicekit.requests import RequestKey
from servicekit.revocation import organization_key
from tenant_service.adapters import postgres as pg
from tenant_service.adapters.platform import Platform, StepFailed
from tenant_service.domain.model import Organization, OrgState, matches_etag
from tenant_service.service_layer.tokens import Revoker

log = logging.getLogger(__name__)

SAGA_STEPS = Counter(
    "agentready_organization_saga_steps_total",
    "Organization saga steps, by step and outcome.",
    ["step", "outcome"],
)
RESOURCE = "Organization"
# Tokens scoped to a deleted organization are refused for this long: longer than any
# token TenantService mints for an organization lives (service-account keys: 365 days).
DELETED_ORGANIZATION_REVOCATION_SECONDS = 400 * 86400.0
# Seconds between asking for an environment and writing the organization's move to
# ACTIVE ahead (see _Activation).
ACTIVATION_DELAY = 0.005


@dataclasses.dataclass(frozen=True)
class SagaTiming:
    """Patience of the sagas.

    Attributes:
        grace: seconds the saga loop leaves a new step to the RPC that started it.
        backoff_base: wait after the first failed attempt; doubled per failure.
        backoff_max: the longest wait (and the wait after a permanent error).
        poll: wait while the environment is still being built or removed.
    """

    grace: float = 2.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    poll: float = 1.0

    def retry_in(self, failures: int, *, temporary: bool) -> float:
        """Seconds until the next attempt after ``failures`` consecutive failures."""
        if not temporary:
            return self.backoff_max
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, failures - 1))
        return float(delay * random.uniform(0.8, 1.0))  # noqa: S311 - jitter


class Organizations:
    """Organization use cases and the sagas behind them."""

    def __init__(
        self,
        store: pg.TenantStore,
        platform: Platform,
        revoker: Revoker,
        timing: SagaTiming,
        *,
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._platform = platform
        self._revoker = revoker
        self.timing = timing
        self._reserved = reserved
        self._converging = KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reads --------------------------------------------------------------------------

    async def get(self, slug: str) -> Organization:
        """One organization (any state).

        Raises:
            NotFound: never existed (callers see PERMISSION_DENIED before this).
        """
        async with self._store.single() as conn:  # one statement, one round trip
            org = await pg.read_organization(conn, slug)
        if org is None:
            raise NotFound(RESOURCE, slug, metadata={"organization": slug})
        return org

    async def list_for(
        self, user_id: str, *, after: str, limit: int, show_deleted: bool
    ) -> list[Organization]:
        """The user's organizations, by slug."""
        async with self._store.plain() as conn:
            return await pg.user_organizations(
                conn, user_id, after=after, limit=limit, show_deleted=show_deleted
            )

    # -- create -------------------------------------------------------------------------

    async def create(
        self,
        *,
        slug: str,
        display_name: str,
        labels: Mapping[str, str],
        creator: str,
        request: RequestKey | None,
    ) -> Organization:
        """Records the organization with its creator as owner, then provisions it.

        Raises:
            AlreadyExists: the slug is, or was ever, taken (or is reserved).
        """
        if slug in self._reserved:
            raise AlreadyExists(
                RESOURCE, slug, f"organization slug {slug!r} is reserved by the platform"
            )
        new = functools.partial(
            pg.insert_organization,
            slug=slug,
            display_name=display_name or slug,
            labels=labels,
            created_by=creator,
            attempt_in=self.timing.grace,
        )
        if request is None:
            # One statement, one round trip, not waiting for the disk: the answer
            # waits for it instead (the saga's next write, or the flush written ahead
            # with the activation, makes the organization durable before anyone is
            # told it exists). Lost with PostgreSQL before that, it was never
            # answered: the environment asked for meanwhile is left unowned, and a
            # retry of the same slug takes it up.
            async with self._store.single() as conn:
                created = await new(conn, durable=False)
        else:
            async with self._store.plain() as conn:
                found = await pg.find_request(conn, None, request.request_id)
                if found is not None:
                    request.confirm_retry(found[0], found[1])
                    return await self.get(str(found[2]["organization"]))
                created = await new(conn)
                if created is not None:
                    await pg.save_request(
                        conn,
                        None,
                        request.request_id,
                        request.method,
                        request.fingerprint,
                        {"organization": slug},
                    )
        if created is None:
            raise AlreadyExists(
                RESOURCE, slug, f"organization slug {slug!r} is taken (slugs are never reused)"
            )
        org, owner_email = created
        # The first step right away, with what the insert already knows.
        async with self._lock(slug):
            return await self._provision(org, [owner_email])

    # -- update -------------------------------------------------------------------------

    async def update(
        self,
        slug: str,
        *,
        etag: str,
        display_name: str | None,
        labels: Mapping[str, str] | None,
    ) -> Organization:
        """Changes the display name and/or labels.

        Raises:
            NotFound, Aborted (etag), FailedPrecondition (DELETING or DELETED).
        """
        async with self._store.org(slug) as conn:
            org = await pg.load_organization(conn, slug, for_update=True)
            if org is None:
                raise NotFound(RESOURCE, slug, metadata={"organization": slug})
            check_etag(org, etag)
            check_not_removing(org)
            new_name = org.display_name if display_name is None else (display_name or slug)
            new_labels = org.labels if labels is None else labels
            if new_name == org.display_name and dict(new_labels) == dict(org.labels):
                return org
            return await pg.update_organization(
                conn, slug, display_name=new_name, labels=new_labels
            )

    # -- delete -------------------------------------------------------------------------

    async def delete(self, slug: str, *, etag: str, request: RequestKey | None) -> None:
        """Marks the organization DELETING (its tokens stop working everywhere) and
        starts removing its environment and configuration.

        Raises:
            NotFound, Aborted (etag).
        """
        revoked = {organization_key(slug): time.time() + DELETED_ORGANIZATION_REVOCATION_SECONDS}
        async with self._store.org(slug) as conn:
            org = await pg.load_organization(conn, slug, for_update=True)
            if org is None:
                raise NotFound(RESOURCE, slug, metadata={"organization": slug})
            if request is not None:
                found = await pg.find_request(conn, slug, request.request_id)
                if found is not None:
                    request.confirm_retry(found[0], found[1])
                    return
                await pg.save_request(
                    conn, slug, request.request_id, request.method, request.fingerprint, {}
                )
            if org.state.removing:
                return
            check_etag(org, etag)
            await pg.set_state(conn, slug, OrgState.DELETING, attempt_in=self.timing.grace)
            await self._revoker.record(conn, revoked)
        await self._revoker.publish(revoked)
        self._in_background(slug)

    def _in_background(self, slug: str) -> None:
        task = asyncio.create_task(self._converge_quietly(slug), name=f"saga-{slug}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _converge_quietly(self, slug: str) -> None:
        try:
            await self.converge(slug)
        except Exception:
            log.exception("saga step of %s failed", slug, extra={"organization": slug})

    # -- the saga -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lock(self, slug: str) -> AsyncIterator[None]:
        """One saga step at a time per organization in this process (replicas may
        overlap: every step is idempotent)."""
        async with self._converging.hold(slug):
            yield

    async def converge(self, slug: str) -> Organization:
        """Takes the organization's saga one step further (idempotent)."""
        async with self._lock(slug):
            async with self._store.org(slug, readonly=True) as conn:
                org = await pg.load_organization(conn, slug)
                if org is None:
                    raise NotFound(RESOURCE, slug, metadata={"organization": slug})
                # The version before the owners: a change committed in between is then
                # applied again later, never marked applied without being applied.
                version, applied = await pg.owners_sync(conn, slug)
                owners = [email for _, email in await pg.owners(conn, slug, lock=False)]
            if org.state in (OrgState.PROVISIONING, OrgState.FAILED):
                org = await self._provision(org, owners)
                if org.state is OrgState.ACTIVE:
                    await self._owners_applied(slug, version)  # those owners are granted
                return org
            if org.state is OrgState.DELETING:
                return await self._deprovision(org)
            if org.state is OrgState.ACTIVE and version > applied:
                await self._sync_owners(org, owners, version)
            return org

    def owners_changed(self, slug: str) -> None:
        """The set of owners changed: grant the new one now, in the background (the saga
        loop retries if this fails)."""
        self._in_background(slug)

    async def _sync_owners(self, org: Organization, owners: list[str], version: int) -> None:
        """Applies the current owners to the environment (its RoleBinding)."""
        try:
            env = await self._platform.provision(org.slug, owners)
        except StepFailed as exc:
            SAGA_STEPS.labels("owners", "temporary" if exc.temporary else "permanent").inc()
            await self._owners_applied(org.slug, None)
            return
        if env.state != "READY":
            SAGA_STEPS.labels("owners", "pending").inc()
            await self._owners_applied(org.slug, None)
            return
        SAGA_STEPS.labels("owners", "ready").inc()
        await self._owners_applied(org.slug, version)

    async def _owners_applied(self, slug: str, version: int | None) -> None:
        async with self._store.org(slug) as conn:
            await pg.owners_applied(conn, slug, version, retry_in=self.timing.poll)

    async def _provision(self, org: Organization, owners: list[str]) -> Organization:
        activated: Organization | None = None
        error: StepFailed | None = None
        async with self._activation_ahead(org) as activation:
            try:
                env = await self._platform.provision(org.slug, owners)
            except StepFailed as exc:
                error = exc
            else:
                if env.state == "READY":
                    activated = await activation.confirm()
        # The transaction written ahead is over: the writes below take the row freely.
        if error is not None:
            SAGA_STEPS.labels("provision", "temporary" if error.temporary else "permanent").inc()
            return await self._failed(org, str(error), temporary=error.temporary)
        if env.state == "READY":
            SAGA_STEPS.labels("provision", "ready").inc()
            if activated is not None:
                return activated
            # Waiting for the disk: the organization itself may not be on it yet.
            return await self._move(
                org, OrgState.ACTIVE, expect=(OrgState.PROVISIONING, OrgState.FAILED)
            )
        if env.state == "FAILED":
            SAGA_STEPS.labels("provision", "env_failed").inc()
            return await self._failed(org, env.last_error or "provisioning failed", temporary=True)
        if env.state in ("DELETING", "DELETED"):
            return await self._failed(
                org, f"the environment is {env.state.lower()}", temporary=False
            )
        SAGA_STEPS.labels("provision", "pending").inc()
        return await self._move(
            org,
            org.state,
            reason=org.state_reason,
            attempt_in=self.timing.poll,
            failures=org.failures,
        )

    @contextlib.asynccontextmanager
    async def _activation_ahead(self, org: Organization) -> AsyncIterator[_Activation]:
        """ACTIVE written ahead while the Provisioner builds the environment (see
        :class:`_Activation`); rolled back on leaving unless confirmed."""
        activation = _Activation(self._store, org)
        try:
            yield activation
        finally:
            await activation.close()

    async def _deprovision(self, org: Organization) -> Organization:
        try:
            env = await self._platform.deprovision(org.slug)
            await self._platform.purge_config(org.slug)
        except StepFailed as exc:
            SAGA_STEPS.labels("deprovision", "temporary" if exc.temporary else "permanent").inc()
            failures = org.failures + 1
            log.warning("deleting %s: %s", org.slug, exc, extra={"organization": org.slug})
            return await self._move(
                org,
                OrgState.DELETING,
                reason="",
                failures=failures,
                attempt_in=self.timing.retry_in(failures, temporary=exc.temporary),
            )
        if env.state not in ("DELETED", "GONE"):
            SAGA_STEPS.labels("deprovision", "pending").inc()
            return await self._move(org, OrgState.DELETING, attempt_in=self.timing.poll)
        SAGA_STEPS.labels("deprovision", "deleted").inc()
        async with self._store.org(org.slug) as conn:
            moved = await pg.set_state(
                conn, org.slug, OrgState.DELETED, expect=(OrgState.DELETING,)
            )
            if moved is not None:
                await pg.erase_organization_data(conn, org.slug)
        return moved or await self.get(org.slug)

    async def _failed(self, org: Organization, reason: str, *, temporary: bool) -> Organization:
        failures = org.failures + 1
        # A temporary failure keeps the organization PROVISIONING (still on its way); a
        # permanent one, or one that keeps failing, is FAILED with the reason.
        state = OrgState.PROVISIONING if temporary and failures < 3 else OrgState.FAILED
        log.warning(
            "provisioning %s failed (%s): %s",
            org.slug,
            "temporary" if temporary else "permanent",
            reason,
            extra={"organization": org.slug},
        )
        return await self._move(
            org,
            state,
            reason=reason if state is OrgState.FAILED else "",
            failures=failures,
            attempt_in=self.timing.retry_in(failures, temporary=temporary),
        )

    async def _move(
        self,
        org: Organization,
        state: OrgState,
        *,
        reason: str = "",
        failures: int = 0,
        attempt_in: float = 0.0,
        expect: tuple[OrgState, ...] | None = None,
        durable: bool = True,
    ) -> Organization:
        async with self._store.single() as conn:  # one statement, one round trip
            moved = await pg.set_state(
                conn,
                org.slug,
                state,
                reason=reason,
                failures=failures,
                attempt_in=attempt_in,
                expect=expect if expect is not None else (org.state,),
                durable=durable,
            )
        # None: another replica (or a delete) moved it meanwhile; report what it is.
        return moved or await self.get(org.slug)

    async def run_due(self, limit: int = 100, concurrency: int = 8) -> int:
        """Converges every organization whose saga step is due; returns how many."""
        async with self._store.plain() as conn:
            due = await pg.due_organizations(conn, limit)
        gate = asyncio.Semaphore(concurrency)

        async def one(slug: str) -> None:
            async with gate:
                await self._converge_quietly(slug)

        await asyncio.gather(*(one(slug) for slug in due))
        return len(due)

    async def close(self) -> None:
        """Waits for saga steps started in the background."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SagaLoop:
    """Runs due saga steps on the replica holding the leader lock, and re-publishes
    revocations in force to Redis (repairing any lost publication)."""

    def __init__(
        self,
        organizations: Organizations,
        revoker: Revoker,
        store: pg.TenantStore,
        leader: LeaderLock,
        *,
        tick: float,
        republish_every: float = 30.0,
    ) -> None:
        self._organizations = organizations
        self._revoker = revoker
        self._store = store
        self.leader = leader
        self._tick = tick
        self._republish_every = republish_every
        self.passes = 0

    async def run(self) -> None:
        """Forever: check leadership, converge what is due, sleep a tick."""
        loop = asyncio.get_running_loop()
        next_republish = loop.time()
        try:
            while True:
                try:
                    if await self.leader.check():
                        await self._organizations.run_due()
                        if loop.time() >= next_republish:
                            await self._revoker.republish(self._store.pool)
                            next_republish = loop.time() + self._republish_every
                        self.passes += 1
                except Exception:
                    log.exception("saga pass failed")
                await asyncio.sleep(self._tick)
        finally:
            await self.leader.release()


def check_etag(org: Organization, etag: str) -> None:
    """Raises ABORTED when ``etag`` is given and stale."""
    if not matches_etag(etag, org.version):
        raise Aborted(
            f"organization {org.slug!r} changed since it was read; read it again",
            metadata={"organization": org.slug},
        )


def check_not_removing(org: Organization) -> None:
    """Raises FAILED_PRECONDITION for an organization being (or already) deleted."""
    if org.state.removing:
        raise FailedPrecondition(
            f"organization {org.slug!r} is {org.state.value.lower()}",
            reason="ORGANIZATION_DELETED",
            violations=[FieldViolation("organization", f"is {org.state.value}")],
            metadata={"organization": org.slug},
        )


def check_usable(org: Organization) -> None:
    """Raises PERMISSION_DENIED for work inside a deleted organization."""
    if org.state.removing:
        raise PermissionDenied(
            f"organization {org.slug!r} is {org.state.value.lower()}",
            reason="ORGANIZATION_DELETED",
            metadata={"organization": org.slug},
        )


class _RollBack(Exception):
    """Ends a transaction written ahead without committing it."""


class _Activation:
    """An organization moved to ACTIVE ahead of time, while ProvisionTenant is under
    way: a transaction of its own writes the move shortly after the call is out, and
    commits it once the environment is READY, so the answer waits for one round trip
    after the Provisioner's instead of a whole write; anything else rolls it back.

    The row stays locked meanwhile, so a change of the same organization arriving
    then (a delete, an update) waits for the Provisioner's answer; reads do not. No
    connection is held for it when the pool is more than half busy.
    """

    def __init__(self, store: pg.TenantStore, org: Organization) -> None:
        self._store = store
        self._org = org
        self._verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[Organization | None] | None = None
        pool = store.pool
        free = pool.get_idle_size() + pool.get_max_size() - pool.get_size()
        if free > pool.get_max_size() // 2:
            self._task = asyncio.create_task(self._write(), name=f"activate-{org.slug}")

    async def _write(self) -> Organization | None:
        # Not at once: the Provisioner's first steps (its record, the ownership check)
        # are on the answer's path, this write is not, and on a shared host the two
        # would compete for the processor; the write still lands long before any
        # environment is built.
        await asyncio.sleep(ACTIVATION_DELAY)
        try:
            async with self._store.single() as conn:
                # Everything committed so far (the organization's own insert, which did
                # not wait for the disk) is made durable now, off the answer's path: a
                # transaction with an id of its own waits for the disk as it ends.
                await conn.execute("SELECT pg_current_xact_id()")
                async with conn.transaction():
                    moved = await pg.set_state(
                        conn,
                        self._org.slug,
                        OrgState.ACTIVE,
                        expect=(OrgState.PROVISIONING, OrgState.FAILED),
                        # A crash that lost this commit leaves the saga step due, and
                        # it runs again (it is idempotent) to the same end.
                        durable=False,
                    )
                    if moved is None or not await self._verdict:
                        raise _RollBack
                    return moved
        except _RollBack:
            return None

    async def confirm(self) -> Organization | None:
        """Commits the move; the organization as moved, or None when it was not written
        ahead (then the caller writes it)."""
        if self._task is None:
            return None
        if not self._verdict.done():
            self._verdict.set_result(True)
        try:
            return await asyncio.shield(self._task)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.info("activating %s ahead failed, written now: %s", self._org.slug, exc)
            return None

    async def close(self) -> None:
        """Rolls back what was not confirmed and waits for the transaction to end."""
        if self._task is None:
            return
        if not self._verdict.done():
            self._verdict.set_result(False)
        if not self._task.done():
            try:
                # Waits without taking on the task's error: a write ahead that failed
                # changes nothing the caller writes next.
                await asyncio.wait({self._task})
            except asyncio.CancelledError:
                self._task.cancel()  # we were cancelled: the transaction ends as it can
                raise
        with contextlib.suppress(Exception, asyncio.CancelledError):
            self._task.result()
