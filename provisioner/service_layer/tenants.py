"""The use cases: provision, read, change the quota, deprovision, reconcile.

Every write records the desired state in PostgreSQL first (one transaction with its
history and request id), then converges the environment towards it. Converging is
idempotent and serialized per tenant by an advisory lock, and its outcome (state,
conditions, last error, backoff) is written back, so a crash at any point leaves a
record the reconcile loop finishes: sagas converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Sequence

import asyncpg

from provisioner.adapters import postgres as pg
from provisioner.adapters.backend import Backend
from provisioner.domain.model import (
    QUOTA_FIELDS,
    ApplyReport,
    BackendError,
    Condition,
    ConditionStatus,
    Environment,
    Observation,
    Quota,
    QuotaChange,
    State,
    conditions_after,
    error_summary,
    state_after,
    unknown_conditions,
)
from provisioner.domain.quantity import parse_quantity
from servicekit.errors import Aborted, FailedPrecondition, FieldViolation, NotFound
from servicekit.requests import RequestKey

log = logging.getLogger(__name__)

RESOURCE = "TenantEnvironment"


@dataclasses.dataclass(frozen=True)
class Timing:
    """How often and how patiently environments are reconciled.

    Attributes:
        interval: seconds between re-checks of a READY environment.
        backoff_base: wait after the first failed reconcile; doubled per failure.
        backoff_max: the longest wait between retries (and the wait after a permanent
            error, which a retry alone will not cure).
        delete_poll: seconds between checks whether a deleted namespace is gone.
    """

    interval: float = 30.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    delete_poll: float = 1.0

    @property
    def grace(self) -> float:
        """How long the loop leaves a just-written spec to the RPC converging it."""
        return self.backoff_base

    def retry_delay(self, failures: int, *, temporary: bool) -> float:
        """Seconds until the next attempt after ``failures`` consecutive failures."""
        if not temporary:
            return self.backoff_max
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, failures - 1))
        return float(delay * random.uniform(0.8, 1.0))  # noqa: S311 - jitter, not secrecy


def same_quantity(a: str, b: str) -> bool:
    """Whether two quantities are equal in value ("1" == "1000m")."""
    return parse_quantity(a) == parse_quantity(b)


def same_quota(a: Quota, b: Quota) -> bool:
    """Whether two quotas are equal in value."""
    return all(same_quantity(getattr(a, f), getattr(b, f)) for f in QUOTA_FIELDS)


class Tenants:
    """The ProvisionerService use cases over one store and one backend."""

    def __init__(self, pool: asyncpg.Pool, backend: Backend, timing: Timing) -> None:
        self.pool = pool
        self.backend = backend
        self.timing = timing
        self._tasks: set[asyncio.Task[None]] = set()

    # -- transactions and locks ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self, organization: str) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, pg.org_transaction(conn, organization) as tx:
            yield tx

    async def _replay(
        self, conn: asyncpg.Connection, organization: str, request: RequestKey | None
    ) -> bool:
        """Whether ``request`` already acted (then the caller answers with the current state)."""
        if request is None:
            return False
        found = await pg.find_request(conn, organization, request.request_id)
        if found is None:
            await pg.save_request(
                conn, organization, request.request_id, request.method, request.fingerprint
            )
            return False
        request.confirm_retry(*found)
        return True

    # -- reads ---------------------------------------------------------------------------

    async def get(self, organization: str, *, observe: bool = True) -> Environment:
        """The environment, with a fresh observation when the backend can give one.

        Raises:
            NotFound: never provisioned.
        """
        async with (
            self.pool.acquire() as conn,
            pg.org_transaction(conn, organization, readonly=True),
        ):
            env = await pg.load(conn, organization)
        if env is None:
            raise NotFound(RESOURCE, organization, metadata={"organization": organization})
        if observe and env.state is not State.DELETED and env.backend is self.backend.kind:
            seen = await self.backend.observe(env.spec())
            if seen is not None:
                env = dataclasses.replace(env, observation=seen)
        return env

    async def list_environments(
        self, *, state: State | None, after: str, limit: int
    ) -> list[Environment]:
        """Environments of every organization, by organization (operators only)."""
        async with self.pool.acquire() as conn:
            return await pg.list_environments(conn, state=state, after=after, limit=limit)

    async def quota_history(
        self, organization: str, *, after: int, limit: int
    ) -> list[QuotaChange]:
        """Quota changes, oldest first.

        Raises:
            NotFound: never provisioned.
        """
        async with self._tx(organization) as conn:
            if await pg.load(conn, organization) is None:
                raise NotFound(RESOURCE, organization, metadata={"organization": organization})
            return await pg.quota_history(conn, organization, after=after, limit=limit)

    # -- writes --------------------------------------------------------------------------

    async def provision(
        self,
        organization: str,
        *,
        owners: Sequence[str],
        quota: Quota,
        labels: dict[str, str],
        actor: str,
        request: RequestKey | None,
    ) -> Environment:
        """Records the desired environment (or the new owners and labels) and converges.

        Raises:
            FailedPrecondition: DELETING or DELETED, or a quota other than the current one.
        """
        async with self._tx(organization) as conn:
            replayed = await self._replay(conn, organization, request)
            env = await pg.load(conn, organization, for_update=True)
            if env is None:
                await pg.insert(
                    conn,
                    organization,
                    owners=owners,
                    quota=quota,
                    labels=labels,
                    backend=self.backend.kind,
                    conditions=unknown_conditions(),
                    due_in=self.timing.grace,
                )
                await pg.add_quota_change(
                    conn,
                    organization,
                    old=None,
                    new=quota,
                    actor=actor,
                    reason="provisioned",
                    request_id=request.request_id if request else "",
                )
            elif not replayed:
                _check_not_removing(env)
                if not same_quota(env.quota, quota):
                    raise FailedPrecondition(
                        f"the environment of {organization!r} has the quota {_show(env.quota)}; "
                        "change it with UpdateTenantQuota",
                        reason="QUOTA_MISMATCH",
                        violations=[FieldViolation("quota", "differs from the current quota")],
                        metadata={"organization": organization},
                    )
                if tuple(owners) != env.owners or dict(labels) != dict(env.labels):
                    await pg.update_spec(
                        conn, organization, owners=owners, labels=labels, due_in=self.timing.grace
                    )
        if replayed:
            return await self.get(organization, observe=False)
        return await self.converge(organization)

    async def update_quota(
        self,
        organization: str,
        *,
        fields: dict[str, str],
        etag: str,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> Environment:
        """Sets the given quota fields (empty = default), records the change, converges.

        Raises:
            NotFound, Aborted (etag), FailedPrecondition (DELETING or DELETED).
        """
        async with self._tx(organization) as conn:
            env = await pg.load(conn, organization, for_update=True)
            if env is None:
                raise NotFound(RESOURCE, organization, metadata={"organization": organization})
            if await self._replay(conn, organization, request):
                return await self.get(organization, observe=False)
            _check_etag(env, etag)
            _check_not_removing(env)
            current = env.quota.to_json()
            current.update({k: v or Quota().to_json()[k] for k, v in fields.items()})
            new = Quota.from_json(current)
            if not same_quota(new, env.quota):
                await pg.update_spec(conn, organization, quota=new, due_in=self.timing.grace)
                await pg.add_quota_change(
                    conn,
                    organization,
                    old=env.quota,
                    new=new,
                    actor=actor,
                    reason=reason,
                    request_id=request.request_id if request else "",
                )
        return await self.converge(organization)

    async def deprovision(
        self, organization: str, *, etag: str, request: RequestKey | None
    ) -> Environment:
        """Marks the environment DELETING, then revokes, denies and deletes.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._tx(organization) as conn:
            env = await pg.load(conn, organization, for_update=True)
            if env is None:
                raise NotFound(RESOURCE, organization, metadata={"organization": organization})
            if await self._replay(conn, organization, request) or env.state.removing:
                return await self.get(organization, observe=False)
            _check_etag(env, etag)
            await pg.start_deletion(conn, organization, due_in=self.timing.grace)
        env = await self.converge(organization)
        if env.state is State.DELETING:
            self._spawn(self._finish_deletion(organization), name=f"deprovision-{organization}")
        return env

    async def reconcile(self, organization: str) -> Environment:
        """Converges now; NOT_FOUND, or FAILED_PRECONDITION when DELETED."""
        env = await self.get(organization, observe=False)
        if env.state is State.DELETED:
            raise FailedPrecondition(
                f"the environment of {organization!r} is deleted",
                reason="ENVIRONMENT_DELETED",
                metadata={"organization": organization},
            )
        return await self.converge(organization)

    # -- converging ----------------------------------------------------------------------

    async def converge(self, organization: str, *, only_if_due: bool = False) -> Environment:
        """One idempotent step towards the desired state, under the tenant's lock.

        Applies the spec (or continues a deletion) and records the outcome. Backend
        errors end up in the status, never raised.

        Args:
            only_if_due: skip unless the environment is still due once the lock is held
                (the loop: another replica or an RPC may have just converged it).
        """
        key = pg.tenant_lock_key(organization)
        async with self.pool.acquire() as conn:
            # A session-level lock: the pool does not reset connections, so it is always
            # released here, and a connection whose lock state is uncertain (cancelled
            # while locking or unlocking) is closed, which releases it server-side.
            try:
                await conn.execute("SELECT pg_advisory_lock($1, $2)", *key)
            except BaseException:
                conn.terminate()
                raise
            try:
                async with pg.org_transaction(conn, organization, readonly=True):
                    env = await pg.load(conn, organization)
                if env is None:
                    raise NotFound(RESOURCE, organization, metadata={"organization": organization})
                if env.state is State.DELETED:
                    return env
                if (
                    only_if_due
                    and env.next_reconcile_at is not None
                    and env.next_reconcile_at > dt.datetime.now(dt.UTC)
                ):
                    return env
                if env.state is State.DELETING:
                    await self._delete_step(conn, env)
                else:
                    report = await self.backend.apply(env.spec())
                    await self._record_apply(conn, env, report)
                async with pg.org_transaction(conn, organization, readonly=True):
                    final = await pg.load(conn, organization)
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
                except BaseException:
                    conn.terminate()
                    raise
        assert final is not None
        return final

    async def _record_apply(
        self, conn: asyncpg.Connection, env: Environment, report: ApplyReport
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        async with pg.org_transaction(conn, env.organization):
            current = await pg.load(conn, env.organization, for_update=True)
            if current is None or current.state.removing:
                return  # deprovisioning began meanwhile; its own steps take over
            conditions = conditions_after(report, current.conditions, now)
            state = state_after(report)
            if report.ok:
                failures = 0
                delay = self.timing.interval
                observed_generation = env.generation
                last_error = ""
            else:
                failures = current.failures + 1
                temporary = all(e.temporary for e in report.errors)
                delay = self.timing.retry_delay(failures, temporary=temporary)
                observed_generation = current.observed_generation
                last_error = error_summary(report)
                log.warning(
                    "reconcile of %s failed (%d in a row): %s",
                    env.organization,
                    failures,
                    last_error,
                    extra={"organization": env.organization},
                )
            observation = (
                report.observation if report.observation != Observation() else current.observation
            )
            changed = _status_changed(
                current,
                state=state,
                conditions=conditions,
                last_error=last_error,
                observed_generation=observed_generation,
                observation=observation,
                backend=self.backend.kind.value,
            )
            if current.generation != env.generation:
                delay = 0.0  # the spec moved on while we applied: go again soon
            await pg.record_status(
                conn,
                env.organization,
                state=state,
                backend=self.backend.kind,
                observed_generation=observed_generation,
                conditions=conditions,
                observation=observation,
                last_error=last_error,
                failures=failures,
                next_reconcile_at=now + dt.timedelta(seconds=delay),
                deletion_progress="",
                changed=changed,
            )

    async def _delete_step(self, conn: asyncpg.Connection, env: Environment) -> None:
        """Deprovisioning, one persisted step at a time: revoke → delete → gone."""
        spec = env.spec()
        progress = env.deletion_progress
        now = dt.datetime.now(dt.UTC)
        error: BackendError | None = None
        gone = False
        try:
            if progress == "":
                await self.backend.revoke(spec)
                progress = "revoked"
            if progress == "revoked":
                await self.backend.delete(spec)
                progress = "deleting"
            gone = await self.backend.gone(spec)
        except BackendError as exc:
            error = exc
        state = State.DELETED if gone else State.DELETING
        if error is not None:
            failures = env.failures + 1
            delay = self.timing.retry_delay(failures, temporary=error.temporary)
            last_error = f"Deprovisioning: {error}"
        else:
            failures = 0
            delay = self.timing.delete_poll
            last_error = ""
        conditions = env.conditions
        observation = env.observation
        if gone:
            conditions = tuple(
                dataclasses.replace(
                    c,
                    status=ConditionStatus.FALSE,
                    reason="Deleted",
                    message="the environment was deprovisioned",
                    last_transition_time=now,
                )
                for c in conditions
            )
            observation = Observation()
        changed = (
            _status_changed(
                env,
                state=state,
                conditions=conditions,
                last_error=last_error,
                observed_generation=env.observed_generation,
                observation=observation,
                backend=self.backend.kind.value,
            )
            or progress != env.deletion_progress
        )
        async with pg.org_transaction(conn, env.organization):
            await pg.record_status(
                conn,
                env.organization,
                state=state,
                backend=self.backend.kind,
                observed_generation=env.observed_generation,
                conditions=conditions,
                observation=observation,
                last_error=last_error,
                failures=failures,
                next_reconcile_at=now + dt.timedelta(seconds=delay),
                deletion_progress=progress,
                changed=changed,
            )

    async def _finish_deletion(self, organization: str) -> None:
        """Polls a deleted namespace until it is gone (the loop does it too, as leader)."""
        deadline = asyncio.get_running_loop().time() + max(60.0, self.timing.backoff_max)
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self.timing.delete_poll)
            try:
                env = await self.converge(organization)
            except Exception:
                log.exception("finishing the deletion of %s failed", organization)
                return
            if env.state is State.DELETED:
                return

    def _spawn(self, coro: object, *, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stops background work started by RPCs."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _status_changed(
    env: Environment,
    *,
    state: State,
    conditions: Sequence[Condition],
    last_error: str,
    observed_generation: int,
    observation: Observation,
    backend: str,
) -> bool:
    """Whether a reconcile changed anything the etag covers (usage alone does not)."""
    if (state, last_error, observed_generation, backend) != (
        env.state,
        env.last_error,
        env.observed_generation,
        env.backend.value,
    ):
        return True
    if len(conditions) != len(env.conditions) or not all(
        a.same_as(b) for a, b in zip(conditions, env.conditions, strict=True)
    ):
        return True
    return (observation.namespace_phase, dict(observation.quota_hard)) != (
        env.observation.namespace_phase,
        dict(env.observation.quota_hard),
    )


def _check_etag(env: Environment, etag: str) -> None:
    if etag and etag != env.etag:
        raise Aborted(
            f"the environment of {env.organization!r} changed (etag {env.etag}); read it again",
            metadata={"organization": env.organization, "etag": env.etag},
        )


def _check_not_removing(env: Environment) -> None:
    if env.state.removing:
        raise FailedPrecondition(
            f"the environment of {env.organization!r} is {env.state.value}",
            reason=f"ENVIRONMENT_{env.state.value}",
            metadata={"organization": env.organization},
        )


def _show(quota: Quota) -> str:
    return f"cpu={quota.cpu}, memory={quota.memory}, storage={quota.storage}"
