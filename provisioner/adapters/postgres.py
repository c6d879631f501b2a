"""The ``provisioner`` schema: environments, quota history, request ids.

Organization-scoped functions take a connection inside :func:`org_transaction` (or a
:class:`TenantSession` transaction); the few that span organizations say so.
Connections are passed in (not taken from the pool here) so that a reconcile can hold
its tenant lock and do its queries on one connection, and can never starve the pool
waiting for a second one.

Round trips are what a use case pays for here (each is a wait on the server, a few
hundred microseconds), so the writes answer with the row as written (``RETURNING``)
instead of being read back, and what belongs together goes in one statement: a new
environment with its first quota-history entry, a request id with the check whether it
was seen before, the tenant lock with the transaction's row-level-security settings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Sequence

import asyncpg

from provisioner.domain.model import (
    BackendKind,
    Condition,
    Environment,
    Observation,
    Quota,
    QuotaChange,
    State,
)

# The role organization-scoped work runs as: row-level security applies to it.
TENANT_ROLE = "agentready_provisioner"

_COLUMNS = (
    "organization, owners, quota, labels, generation, state, backend, observed_generation, "
    "conditions, observed, last_error, deletion_progress, failures, next_reconcile_at, "
    "version, created_at, updated_at, reconciled_at"
)


_SET_TENANT = (
    "SELECT set_config('role', $1, true), set_config('app.org_id', $2, true), "
    "set_config('synchronous_commit', $3, true)"
)


@contextlib.asynccontextmanager
async def org_transaction(
    conn: asyncpg.Connection, organization: str, *, readonly: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``conn`` in which row-level security sees only ``organization``."""
    async with conn.transaction(readonly=readonly):
        await conn.execute(_SET_TENANT, TENANT_ROLE, organization, "on")
        yield conn


def tenant_lock_key(organization: str) -> int:
    """The advisory lock of one tenant: 64 bits of SHA-256 (a 32-bit key could be made
    to collide with another tenant's by choosing a slug)."""
    digest = hashlib.sha256(f"agentready:provisioner:tenant:{organization}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TenantSession:
    """One pooled connection working on one tenant, and that tenant's advisory lock.

    The lock serializes everything that converges a tenant (RPCs and the reconcile
    loop, across replicas). It is a session-level lock, so it outlives the
    transactions: taken in the first one, held through the backend calls that follow,
    released when the session ends (see :func:`tenant_session`).

    Taking it costs no round trip of its own: the first :meth:`transaction` tries it
    (``pg_try_advisory_lock``) in the statement that sets row-level security up, and
    :attr:`locked` tells whether it got it. When another session holds it, that
    transaction goes on without it (recording a desired state need not wait for a
    converge in progress) and :meth:`lock` waits for it afterwards; whatever was read
    before then must be read again.
    """

    def __init__(self, conn: asyncpg.Connection, organization: str) -> None:
        self.conn = conn
        self.organization = organization
        self.locked = False
        self._key = tenant_lock_key(organization)
        # A lock request went out and its answer was not seen (cancelled, connection
        # lost): whether the lock is held is unknown, so the connection must be closed.
        self._unsure = False

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, durable: bool = True
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which row-level security sees only this tenant; it tries the
        tenant lock first unless it is held already. ``durable=False``: its commit does
        not wait for the disk (for a status the next reconcile would write again)."""
        commit = "on" if durable else "off"
        async with self.conn.transaction(readonly=readonly):
            if self.locked:
                await self.conn.execute(_SET_TENANT, TENANT_ROLE, self.organization, commit)
            else:
                self._unsure = True
                self.locked = bool(
                    await self.conn.fetchval(
                        "SELECT pg_try_advisory_lock($3), "
                        "set_config('role', $1, true), set_config('app.org_id', $2, true), "
                        "set_config('synchronous_commit', $4, true)",
                        TENANT_ROLE,
                        self.organization,
                        self._key,
                        commit,
                    )
                )
                self._unsure = False
            yield self.conn

    @contextlib.asynccontextmanager
    async def bare_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sets nothing up, for statements that set row-level
        security up themselves (:func:`record_new`)."""
        async with self.conn.transaction():
            yield self.conn

    async def lock(self) -> None:
        """Waits for the tenant lock unless it is held already.

        Called outside any transaction: no row lock is held while waiting, so a
        converge holding the tenant lock can always write its status and finish.
        """
        if self.locked:
            return
        self._unsure = True
        await self.conn.execute("SELECT pg_advisory_lock($1)", self._key)
        self.locked, self._unsure = True, False

    def discard(self) -> None:
        """Marks the connection's state unknown (a transaction left open, say): the
        session ends by closing it, which releases whatever it holds."""
        self._unsure = True

    async def _end(self) -> None:
        if self._unsure:
            self.conn.terminate()  # closing the session releases whatever it holds
            return
        if self.locked:
            try:
                await self.conn.execute("SELECT pg_advisory_unlock($1)", self._key)
            except BaseException:
                self.conn.terminate()
                raise
            self.locked = False


@contextlib.asynccontextmanager
async def tenant_session(pool: asyncpg.Pool, organization: str) -> AsyncIterator[TenantSession]:
    """A :class:`TenantSession` on a pooled connection.

    The pool does not reset connections, so the lock is always released here, and a
    connection whose lock state is uncertain (cancelled while locking or unlocking) is
    closed, which releases it server-side.
    """
    async with pool.acquire() as conn:
        session = TenantSession(conn, organization)
        try:
            yield session
        finally:
            await session._end()


def environment(row: asyncpg.Record) -> Environment:
    """A row of ``environments`` as the domain sees it."""
    return Environment(
        organization=row["organization"],
        owners=tuple(row["owners"]),
        quota=Quota.from_json(row["quota"]),
        labels=dict(row["labels"]),
        state=State(row["state"]),
        backend=BackendKind(row["backend"]),
        generation=int(row["generation"]),
        observed_generation=int(row["observed_generation"]),
        version=int(row["version"]),
        conditions=tuple(Condition.from_json(c) for c in row["conditions"]),
        observation=Observation.from_json(row["observed"]),
        last_error=row["last_error"],
        failures=int(row["failures"]),
        create_time=row["created_at"],
        update_time=row["updated_at"],
        last_reconcile_time=row["reconciled_at"],
        deletion_progress=row["deletion_progress"],
        next_reconcile_at=row["next_reconcile_at"],
    )


async def load(
    conn: asyncpg.Connection, organization: str, *, for_update: bool = False
) -> Environment | None:
    """The environment of ``organization``, or None; ``for_update`` locks its row."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM provisioner.environments WHERE organization = $1"  # noqa: S608
        + (" FOR UPDATE" if for_update else ""),
        organization,
    )
    return environment(row) if row else None


async def create(
    conn: asyncpg.Connection,
    organization: str,
    *,
    owners: Sequence[str],
    quota: Quota,
    labels: dict[str, str],
    backend: BackendKind,
    conditions: Sequence[Condition],
    due_in: float,
    actor: str,
    request_id: str,
) -> Environment | None:
    """A new environment, PROVISIONING, due for reconciliation in ``due_in`` seconds
    (the caller converges it at once; the loop steps in only if that never finishes),
    with its initial quota in the history; one statement.

    Returns:
        The new environment, or None when ``organization`` has one already (nothing
        written; it is not locked either).
    """
    row = await conn.fetchrow(
        "WITH env AS ("  # noqa: S608
        " INSERT INTO provisioner.environments "
        " (organization, owners, quota, labels, state, backend, conditions, next_reconcile_at)"
        " VALUES ($1, $2, $3, $4, 'PROVISIONING', $5, $6, now() + make_interval(secs => $7))"
        f" ON CONFLICT (organization) DO NOTHING RETURNING {_COLUMNS}"
        "), history AS ("
        " INSERT INTO provisioner.quota_history "
        " (organization, seq, old_quota, new_quota, actor, reason, request_id)"
        " SELECT organization, (SELECT COALESCE(MAX(seq), 0) + 1 FROM provisioner.quota_history"
        "  WHERE organization = $1), NULL, quota, $8, 'provisioned', $9 FROM env"
        f") SELECT {_COLUMNS} FROM env",
        organization,
        list(owners),
        quota.to_json(),
        labels,
        backend.value,
        [c.to_json() for c in conditions],
        due_in,
        actor,
        request_id,
    )
    return environment(row) if row else None


async def record_new(
    session: TenantSession,
    *,
    owners: Sequence[str],
    quota: Quota,
    labels: dict[str, str],
    backend: BackendKind,
    conditions: Sequence[Condition],
    due_in: float,
    actor: str,
) -> Environment | None:
    """:func:`create` without a request id, in one statement (see
    ``provisioner.record_new`` in the migrations) that also sets row-level security up
    and tries the tenant lock (:attr:`TenantSession.locked` says whether the session
    holds it now; the lock outlives a rollback). Inside
    :meth:`TenantSession.bare_transaction`, or on its own: then it is a transaction
    of its own, committed durably as it ends.

    Returns:
        The new environment, or None when the organization has one already (nothing
        written).
    """
    session._unsure = True
    row = await session.conn.fetchrow(
        "SELECT r.locked, (r.env).* FROM provisioner.record_new("
        "$1, $2, $3, $4, $5, $6, $7, $8, $9) r",
        session.organization,
        session._key,
        list(owners),
        quota.to_json(),
        labels,
        backend.value,
        [c.to_json() for c in conditions],
        due_in,
        actor,
    )
    session.locked = session.locked or bool(row["locked"])
    session._unsure = False
    return environment(row) if row["organization"] is not None else None


async def update_spec(
    conn: asyncpg.Connection,
    organization: str,
    *,
    owners: Sequence[str] | None = None,
    quota: Quota | None = None,
    labels: dict[str, str] | None = None,
    due_in: float,
) -> Environment:
    """Changes the desired spec: a new generation and version, due in ``due_in`` s.

    Returns:
        The environment as written.
    """
    row = await conn.fetchrow(
        "UPDATE provisioner.environments SET "  # noqa: S608
        "owners = COALESCE($2, owners), quota = COALESCE($3, quota), "
        "labels = COALESCE($4, labels), generation = generation + 1, version = version + 1, "
        "updated_at = now(), next_reconcile_at = now() + make_interval(secs => $5) "
        f"WHERE organization = $1 RETURNING {_COLUMNS}",
        organization,
        list(owners) if owners is not None else None,
        quota.to_json() if quota is not None else None,
        labels,
        due_in,
    )
    return environment(row)


async def record_status(
    session: TenantSession,
    *,
    state: State,
    backend: BackendKind,
    observed_generation: int,
    conditions: Sequence[Condition],
    observation: Observation,
    last_error: str,
    failures: int,
    next_reconcile_at: dt.datetime,
    deletion_progress: str,
    changed: bool,
    applied_generation: int | None = None,
    durable: bool = True,
) -> Environment | None:
    """Writes a reconcile's outcome, in one statement of its own (one round trip, see
    ``provisioner.record_status`` in the migrations); the version (etag) moves only
    when ``changed``. The session must hold the tenant lock and have no transaction
    open.

    Args:
        applied_generation: for the outcome of an apply, the generation applied. Then
            nothing is written once deprovisioning has begun (its own steps take over),
            and the environment is due at once when its spec moved past that generation
            meanwhile. Both are decided on the row as it is when written.
        durable: whether the commit waits for the disk.

    Returns:
        The environment as written; None when nothing was (deprovisioning began).
    """
    assert session.locked, "a status is written under the tenant lock"
    row = await session.conn.fetchrow(
        "SELECT * FROM provisioner.record_status("
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        session.organization,
        durable,
        state.value,
        backend.value,
        observed_generation,
        [c.to_json() for c in conditions],
        observation.to_json(),
        last_error,
        failures,
        next_reconcile_at,
        deletion_progress,
        changed,
        applied_generation,
    )
    return environment(row) if row else None


async def start_deletion(
    conn: asyncpg.Connection, organization: str, *, due_in: float
) -> Environment:
    """DELETING, due for reconciliation in ``due_in`` seconds; the environment as written."""
    row = await conn.fetchrow(
        "UPDATE provisioner.environments SET state = 'DELETING', version = version + 1, "  # noqa: S608
        "updated_at = now(), next_reconcile_at = now() + make_interval(secs => $2), "
        f"failures = 0 WHERE organization = $1 RETURNING {_COLUMNS}",
        organization,
        due_in,
    )
    return environment(row)


async def add_quota_change(
    conn: asyncpg.Connection,
    organization: str,
    *,
    old: Quota | None,
    new: Quota,
    actor: str,
    reason: str,
    request_id: str,
) -> None:
    """Appends to the quota history (call with the environment's row locked)."""
    await conn.execute(
        "INSERT INTO provisioner.quota_history "
        "(organization, seq, old_quota, new_quota, actor, reason, request_id) "
        "SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6 "
        "FROM provisioner.quota_history WHERE organization = $1",
        organization,
        old.to_json() if old is not None else None,
        new.to_json(),
        actor,
        reason,
        request_id,
    )


async def quota_history(
    conn: asyncpg.Connection, organization: str, *, after: int, limit: int
) -> list[QuotaChange]:
    """Quota changes after sequence number ``after``, oldest first."""
    rows = await conn.fetch(
        "SELECT organization, seq, old_quota, new_quota, actor, reason, request_id, created_at "
        "FROM provisioner.quota_history WHERE organization = $1 AND seq > $2 "
        "ORDER BY seq LIMIT $3",
        organization,
        after,
        limit,
    )
    return [
        QuotaChange(
            organization=r["organization"],
            seq=int(r["seq"]),
            old_quota=Quota.from_json(r["old_quota"]) if r["old_quota"] is not None else None,
            new_quota=Quota.from_json(r["new_quota"]),
            actor=r["actor"],
            reason=r["reason"],
            request_id=r["request_id"],
            create_time=r["created_at"],
        )
        for r in rows
    ]


async def claim_request(
    conn: asyncpg.Connection, organization: str, request_id: str, method: str, fingerprint: str
) -> tuple[str, str] | None:
    """Records a request id in the transaction that acts on it, unless it was seen before.

    Returns:
        None when the id is new (recorded now); else the (method, fingerprint) of the
        earlier request. A concurrent request with the same id waits for this one's
        transaction and then finds its record.
    """
    claimed = await conn.fetchval(
        "INSERT INTO provisioner.requests (organization, request_id, method, fingerprint) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (organization, request_id) DO NOTHING "
        "RETURNING true",
        organization,
        request_id,
        method,
        fingerprint,
    )
    if claimed:
        return None
    row = await conn.fetchrow(
        "SELECT method, fingerprint FROM provisioner.requests "
        "WHERE organization = $1 AND request_id = $2",
        organization,
        request_id,
    )
    return (row["method"], row["fingerprint"])


# -- across organizations --------------------------------------------------------------


async def list_environments(
    conn: asyncpg.Connection, *, state: State | None, after: str, limit: int
) -> list[Environment]:
    """Environments ordered by organization, after ``after`` (across organizations)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM provisioner.environments "  # noqa: S608
        "WHERE organization > $1 AND ($2::text IS NULL OR state = $2) "
        "ORDER BY organization LIMIT $3",
        after,
        state.value if state is not None else None,
        limit,
    )
    return [environment(r) for r in rows]


async def due(conn: asyncpg.Connection, *, limit: int) -> list[str]:
    """Organizations whose next reconcile time has come (across organizations)."""
    rows = await conn.fetch(
        "SELECT organization FROM provisioner.environments "
        "WHERE state <> 'DELETED' AND next_reconcile_at <= now() "
        "ORDER BY next_reconcile_at LIMIT $1",
        limit,
    )
    return [r["organization"] for r in rows]
