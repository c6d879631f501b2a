"""The use cases: provision, read, change the quota, deprovision, reconcile.

Every write records the desired state in PostgreSQL first (one transaction with its
history and request id), then converges the environment towards it. Converging is
idempotent and serialized per tenant by an advisory lock, and its outcome (state,
conditions, last error, backoff) is written back, so a crash at any point leaves a
record the reconcile loop finishes: sagas converge.

The lock is taken by the write's own transaction when it is free (see
:class:`~provisioner.adapters.postgres.TenantSession`), so the row that transaction
wrote is what gets applied, without reading it again; when another converge holds the
lock, the desired state is recorded all the same, and the environment is read again
once the lock is ours. Status columns (state, conditions, failures, last error, the
observation) are written only under the lock, so the row read under it stays current
through the apply except for what the RPCs may change meanwhile (the spec, a
deletion), which the status write checks on the row itself. Provisioning a tenant
thus costs two transactions around the backend calls: one records the spec (and takes
the lock), the other the outcome, answering with the row as written.
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
    ConditionType,
    Environment,
    Observation,
    Quota,
    QuotaChange,
    State,
    StepResult,
    TenantSpec,
    conditions_after,
    error_summary,
    state_after,
    unknown_conditions,
)
from provisioner.domain.quantity import parse_quantity
from servicekit.errors import Aborted, FailedPrecondition, FieldViolation, NotFound
from servicekit.keyedlock import KeyedLocks
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
        self._ending: set[asyncio.Task[None]] = set()
        self._gates = KeyedLocks()

    @contextlib.asynccontextmanager
    async def _session(self, organization: str) -> AsyncIterator[pg.TenantSession]:
        """A tenant session, one per tenant at a time in this process: callers of the
        same tenant queue here, without a pooled connection, so a burst of calls for
        one tenant cannot take the pool from the others (at most one connection per
        tenant and replica waits on the tenant's advisory lock).

        A session that ends normally is closed in a task of its own (the tenant lock
        released, the connection back in the pool, the next caller of the tenant let
        in, in that order), so the caller's answer does not wait for the unlock's
        round trip; its last write is committed by then. One that ends with an error
        is closed before the error goes on.
        """
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._gates.hold(organization))
        try:
            session = await stack.enter_async_context(pg.tenant_session(self.pool, organization))
            yield session
        except BaseException:
            await stack.aclose()
            raise
        task = asyncio.create_task(self._end_session(stack), name=f"end-session-{organization}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    @staticmethod
    async def _end_session(stack: contextlib.AsyncExitStack) -> None:
        try:
            await stack.aclose()
        except Exception:  # the connection was closed instead, which releases the lock
            log.warning("ending a tenant session failed", exc_info=True)

    # -- transactions and locks ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self, organization: str) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, pg.org_transaction(conn, organization) as tx:
            yield tx

    async def _replay(
        self, conn: asyncpg.Connection, organization: str, request: RequestKey | None
    ) -> bool:
        """Whether ``request`` already acted (then the caller answers with the current
        state); records it otherwise."""
        if request is None:
            return False
        found = await pg.claim_request(
            conn, organization, request.request_id, request.method, request.fingerprint
        )
        if found is None:
            return False
        request.confirm_retry(*found)
        return True

    async def _load_locked(self, session: pg.TenantSession) -> Environment:
        """The environment, read while holding its lock (waiting for the lock if need be).

        Raises:
            NotFound: never provisioned.
        """
        async with session.transaction(readonly=True) as conn:
            env = await pg.load(conn, session.organization)
        if not session.locked:
            await session.lock()
            async with session.transaction(readonly=True) as conn:
                env = await pg.load(conn, session.organization)
        if env is None:
            raise NotFound(
                RESOURCE, session.organization, metadata={"organization": session.organization}
            )
        return env

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
            FailedPrecondition: DELETING or DELETED, a quota other than the current one,
                or a namespace of that name that is not ours (nothing is recorded).
        """
        spec = TenantSpec(organization, tuple(owners), quota, labels)
        # The session first: its BEGIN goes out just before the ownership GET, the
        # record's two round trips being the longer way to the apply.
        async with self._session(organization) as session, self._claim_asked(spec) as claim:
            if request is None:
                # The common first call: one statement records the environment and
                # tries the lock while the ownership check is under way; the commit
                # waits for its answer (a namespace that is not ours records nothing).
                # A new environment whose lock this session got is applied as soon as
                # both answers are in, its commit on the way meanwhile: the status is
                # written on the same connection only once the commit is done. Should
                # the commit fail, the namespace may exist unrecorded; it is ours
                # (labelled so), and the caller's retry takes it up.
                committed = asyncio.Event()
                applying: asyncio.Future[ApplyReport] | None = None
                outcome: _Outcome | None = None
                try:
                    async with session.bare_transaction():
                        env = await pg.record_new(
                            session,
                            owners=owners,
                            quota=quota,
                            labels=labels,
                            backend=self.backend.kind,
                            conditions=unknown_conditions(),
                            due_in=self.timing.grace,
                            actor=actor,
                        )
                        claimed = await claim
                        if env is not None and claimed and session.locked:
                            outcome = _Outcome(self, session, env, free=committed)
                            applying = asyncio.ensure_future(
                                self.backend.apply(env.spec(), foresee=outcome.foresee)
                            )
                            await asyncio.sleep(0)  # the apply starts before the commit
                except BaseException:
                    if applying is not None:
                        applying.cancel()
                    raise
                if applying is not None and outcome is not None:
                    committed.set()
                    with outcome:
                        return await outcome.record(await applying)
                if env is not None:
                    return await self._converge_locked(session, env, claim_checked=claimed)
            async with session.transaction() as conn:
                replayed = await self._replay(conn, organization, request)
                env = await pg.create(
                    conn,
                    organization,
                    owners=owners,
                    quota=quota,
                    labels=labels,
                    backend=self.backend.kind,
                    conditions=unknown_conditions(),
                    due_in=self.timing.grace,
                    actor=actor,
                    request_id=request.request_id if request else "",
                )
                if env is None:  # provisioned before
                    env = await pg.load(conn, organization, for_update=True)
                    assert env is not None  # rows are never deleted
                    if replayed:
                        return env
                    _check_not_removing(env)
                    if not same_quota(env.quota, quota):
                        raise FailedPrecondition(
                            f"the environment of {organization!r} has the quota "
                            f"{_show(env.quota)}; change it with UpdateTenantQuota",
                            reason="QUOTA_MISMATCH",
                            violations=[FieldViolation("quota", "differs from the current quota")],
                            metadata={"organization": organization},
                        )
                    if tuple(owners) != env.owners or dict(labels) != dict(env.labels):
                        env = await pg.update_spec(
                            conn,
                            organization,
                            owners=owners,
                            labels=labels,
                            due_in=self.timing.grace,
                        )
                claimed = await claim
            return await self._converge_locked(session, env, claim_checked=claimed)

    @contextlib.asynccontextmanager
    async def _claim_asked(self, spec: TenantSpec) -> AsyncIterator[asyncio.Future[bool]]:
        """Asks whether the namespace is ours, in the background: the caller awaits the
        answer before it commits (a namespace that is not ours records nothing), and
        the API call costs no time of its own on the way to the apply. The answer is
        whether ownership was confirmed (False: it could not be told now, and the
        converge asks again). Stopped, or its outcome taken, when the caller ends early
        (a replay, an error)."""
        # Its request goes out as the caller's first statement waits for its answer.
        claim = asyncio.ensure_future(self._check_claim(spec))
        try:
            yield claim
        finally:
            claim.cancel()
            with contextlib.suppress(asyncio.CancelledError, FailedPrecondition):
                await claim

    async def _check_claim(self, spec: TenantSpec) -> bool:
        try:
            await self.backend.check_claim(spec)
        except BackendError as exc:
            if exc.reason != "NamespaceNotOurs":
                return False  # cannot tell now: the desired state is recorded, converge asks
            raise FailedPrecondition(
                str(exc),
                reason="NAMESPACE_NOT_OURS",
                violations=[FieldViolation("organization", f"{spec.namespace} is not ours")],
                metadata={"organization": spec.organization, "namespace": spec.namespace},
            ) from None
        return True

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
        async with self._session(organization) as session:
            async with session.transaction() as conn:
                env = await pg.load(conn, organization, for_update=True)
                if env is None:
                    raise NotFound(RESOURCE, organization, metadata={"organization": organization})
                if await self._replay(conn, organization, request):
                    return env
                _check_etag(env, etag)
                _check_not_removing(env)
                current = env.quota.to_json()
                current.update({k: v or Quota().to_json()[k] for k, v in fields.items()})
                new = Quota.from_json(current)
                if not same_quota(new, env.quota):
                    old = env.quota
                    env = await pg.update_spec(
                        conn, organization, quota=new, due_in=self.timing.grace
                    )
                    await pg.add_quota_change(
                        conn,
                        organization,
                        old=old,
                        new=new,
                        actor=actor,
                        reason=reason,
                        request_id=request.request_id if request else "",
                    )
            return await self._converge_locked(session, env)

    async def deprovision(
        self, organization: str, *, etag: str, request: RequestKey | None
    ) -> Environment:
        """Marks the environment DELETING, then revokes, denies and deletes.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._session(organization) as session:
            async with session.transaction() as conn:
                env = await pg.load(conn, organization, for_update=True)
                if env is None:
                    raise NotFound(RESOURCE, organization, metadata={"organization": organization})
                if await self._replay(conn, organization, request) or env.state.removing:
                    return env
                _check_etag(env, etag)
                env = await pg.start_deletion(conn, organization, due_in=self.timing.grace)
            env = await self._converge_locked(session, env)
        if env.state is State.DELETING:
            self._spawn(self._finish_deletion(organization), name=f"deprovision-{organization}")
        return env

    async def reconcile(self, organization: str) -> Environment:
        """Converges now; NOT_FOUND, or FAILED_PRECONDITION when DELETED."""
        async with self._session(organization) as session:
            env = await self._load_locked(session)
            if env.state is State.DELETED:
                raise FailedPrecondition(
                    f"the environment of {organization!r} is deleted",
                    reason="ENVIRONMENT_DELETED",
                    metadata={"organization": organization},
                )
            return await self._converge_locked(session, env)

    # -- converging ----------------------------------------------------------------------

    async def converge(self, organization: str, *, only_if_due: bool = False) -> Environment:
        """One idempotent step towards the desired state, under the tenant's lock.

        Applies the spec (or continues a deletion) and records the outcome. Backend
        errors end up in the status, never raised.

        Args:
            only_if_due: skip unless the environment is still due once the lock is held
                (the loop: another replica or an RPC may have just converged it).
        """
        async with self._session(organization) as session:
            env = await self._load_locked(session)
            if (
                only_if_due
                and env.next_reconcile_at is not None
                and env.next_reconcile_at > dt.datetime.now(dt.UTC)
            ):
                return env
            return await self._converge_locked(session, env)

    async def _converge_locked(
        self, session: pg.TenantSession, env: Environment, *, claim_checked: bool = False
    ) -> Environment:
        """:meth:`converge` once the lock is held; ``env`` was read under it (or written
        by this session's own transaction, which took it).

        Args:
            claim_checked: whether the caller made sure the namespace is ours to use
                (ProvisionTenant does, before it records anything). Otherwise it is
                checked here before anything is applied: a namespace that was deleted
                and made again by someone else meanwhile is never taken over, the
                environment fails with the reason instead; so does one whose owner
                cannot be told now (the API failing), until a later attempt can.
        """
        if not session.locked:  # another converge held it: ours now, and read afresh
            env = await self._load_locked(session)
        if env.state is State.DELETED:
            return env
        if env.state is State.DELETING:
            return await self._delete_step(session, env)
        spec = env.spec()
        if not claim_checked:
            try:
                await self.backend.check_claim(spec)
            except BackendError as exc:
                report = ApplyReport([StepResult(ConditionType.NAMESPACE, exc)])
                return await self._record_apply(session, env, report)
        with _Outcome(self, session, env) as outcome:
            return await outcome.record(await self.backend.apply(spec, foresee=outcome.foresee))

    async def _record_apply(
        self, session: pg.TenantSession, env: Environment, report: ApplyReport
    ) -> Environment:
        """Writes an apply's outcome; the environment as recorded."""
        recorded = await self._write_apply(session, env, report)
        if recorded is None:  # deprovisioning began meanwhile; its own steps take over
            async with session.transaction(readonly=True) as conn:
                recorded = await pg.load(conn, env.organization)
        assert recorded is not None  # rows are never deleted
        return recorded

    async def _write_apply(
        self, session: pg.TenantSession, env: Environment, report: ApplyReport
    ) -> Environment | None:
        """Writes an apply's outcome; the environment as written, or None when nothing
        was (deprovisioning began meanwhile).

        Computed from ``env``, read under the lock: no one else writes the status
        meanwhile. A spec change or a deletion that began during the apply is taken
        into account by the write itself (see :func:`pg.record_status`).
        """
        now = dt.datetime.now(dt.UTC)
        conditions = conditions_after(report, env.conditions, now)
        state = state_after(report)
        if report.ok:
            failures = 0
            delay = self.timing.interval
            observed_generation = env.generation
            last_error = ""
        else:
            failures = env.failures + 1
            temporary = all(e.temporary for e in report.errors)
            delay = self.timing.retry_delay(failures, temporary=temporary)
            observed_generation = env.observed_generation
            last_error = error_summary(report)
            log.warning(
                "reconcile of %s failed (%d in a row): %s",
                env.organization,
                failures,
                last_error,
                extra={"organization": env.organization},
            )
        observation = report.observation if report.observation != Observation() else env.observation
        changed = _status_changed(
            env,
            state=state,
            conditions=conditions,
            last_error=last_error,
            observed_generation=observed_generation,
            observation=observation,
            backend=self.backend.kind.value,
        )
        # The status is derived from what the backend answered: a crash that lost this
        # commit leaves the environment due, and the next reconcile writes it again.
        return await pg.record_status(
            session,
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
            applied_generation=env.generation,
            durable=False,
        )

    async def _delete_step(self, session: pg.TenantSession, env: Environment) -> Environment:
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
                # The contract answers DELETING first, whatever the backend: whether
                # the namespace is gone is checked by the next step (a poll, or the
                # loop), even where removal is immediate (a GitOps folder).
            else:
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
        recorded = await pg.record_status(
            session,
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
        assert recorded is not None  # unconditional: rows are never deleted
        return recorded

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
        """Stops background work started by RPCs (sessions still ending end first: each
        holds a pooled connection)."""
        await asyncio.gather(*self._ending, return_exceptions=True)
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


class _Outcome:
    """An apply's outcome, written under the tenant lock by the session that applied.

    When the backend foresees the report of a success (:data:`Foresight`), the outcome
    is written ahead, in a transaction left open while the apply's last call is on
    its way, and only committed once the report turns out the same: one round trip
    after the last answer instead of a whole write. Otherwise (another report, the
    write ahead failing) that transaction is rolled back and the outcome written
    after the apply. The row stays locked meanwhile: a desired-state write of the
    same tenant arriving then (a new spec, a deletion) waits for that one call, and
    is taken into account by the next converge as it would be after a write.

    Used as a context manager around the apply: leaving it with an error (a
    cancellation) while the transaction is open closes the session's connection
    instead of reusing it, which rolls back and releases the tenant lock.

    Args:
        free: set once the session's connection may take statements (the caller's
            own commit is done); None when it may at once.
    """

    def __init__(
        self,
        tenants: Tenants,
        session: pg.TenantSession,
        env: Environment,
        *,
        free: asyncio.Event | None = None,
    ) -> None:
        self._tenants = tenants
        self._session = session
        self._env = env
        self._free = free
        self._open: asyncpg.transaction.Transaction | None = None
        self._ahead: tuple[ApplyReport, Environment] | None = None

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._open is not None:
            self._session.discard()

    async def _connection_free(self) -> None:
        if self._free is not None:
            await self._free.wait()

    async def foresee(self, report: ApplyReport) -> None:
        """Writes ``report``'s outcome ahead (see the class); never raises an error."""
        await self._connection_free()
        transaction = self._session.conn.transaction()
        try:
            self._open = transaction
            await transaction.start()
            written = await self._tenants._write_apply(self._session, self._env, report)
            if written is not None:
                self._ahead = (report, written)
                return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.info("writing an outcome ahead failed, written after the apply: %s", exc)
        await self._rollback()

    async def _rollback(self) -> None:
        self._ahead = None
        transaction, self._open = self._open, None
        if transaction is None:
            return
        try:
            await transaction.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            self._session.discard()  # whatever it holds goes with the connection

    async def record(self, report: ApplyReport) -> Environment:
        """The outcome of ``report``, committed; the environment as recorded."""
        await self._connection_free()
        if self._ahead is not None and self._open is not None:
            foreseen, written = self._ahead
            if report == foreseen:
                await self._open.commit()
                self._open = self._ahead = None
                return written
        await self._rollback()
        return await self._tenants._record_apply(self._session, self._env, report)
