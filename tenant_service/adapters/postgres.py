"""The ``tenant`` schema's queries.

Organization-scoped functions take a connection inside :meth:`TenantStore.org` (row-level
security sees only that organization); the functions that span organizations or belong
to none (users, tokens, a user's organizations, the saga scan) take a plain connection
from :meth:`TenantStore.plain` and say so. Every query is parameterized.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

from servicekit.db import organization_transaction
from tenant_service.domain.model import (
    Member,
    Note,
    Organization,
    OrgState,
    Project,
    Role,
    ServiceAccountKey,
    User,
)

# The role organization-scoped work runs as: row-level security applies to it.
TENANT_ROLE = "agentready_tenant"


class TenantStore:
    """Entry point to the ``tenant`` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def org(
        self, organization: str, *, readonly: bool = False, durable: bool = True
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees ``organization`` only (``durable``: see
        :func:`servicekit.db.organization_transaction`)."""
        async with organization_transaction(
            self.pool, organization, role=TENANT_ROLE, readonly=readonly, durable=durable
        ) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def single(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection with no transaction open, for one statement that is its own
        transaction and sets row-level security up itself (see :func:`set_state`)."""
        async with self.pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def plain(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction for work that belongs to no single organization."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn


# -- users -----------------------------------------------------------------------------

_USER_COLUMNS = "id, email, display_name, version, created_at, updated_at"


def _user(row: asyncpg.Record) -> User:
    return User(
        id=str(row["id"]),
        email=row["email"],
        display_name=row["display_name"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_user(
    conn: asyncpg.Connection, *, email: str, display_name: str, password_hash: str
) -> User | None:
    """Creates a user; None when the email is taken."""
    row = await conn.fetchrow(
        f"INSERT INTO tenant.users (id, email, display_name, password_hash) "  # noqa: S608
        f"VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING RETURNING {_USER_COLUMNS}",
        uuid.uuid4(),
        email,
        display_name,
        password_hash,
    )
    return _user(row) if row else None


async def user_by_id(conn: asyncpg.Connection, user_id: str) -> User | None:
    """A user by id."""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM tenant.users WHERE id = $1",  # noqa: S608
        uuid.UUID(user_id),
    )
    return _user(row) if row else None


async def user_by_email(conn: asyncpg.Connection, email: str) -> User | None:
    """A user by normalised email."""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM tenant.users WHERE email = $1",  # noqa: S608
        email,
    )
    return _user(row) if row else None


async def credentials(conn: asyncpg.Connection, email: str) -> tuple[User, str] | None:
    """A user and its password hash, by normalised email."""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, password_hash FROM tenant.users WHERE email = $1",  # noqa: S608
        email,
    )
    return (_user(row), row["password_hash"]) if row else None


async def set_password_hash(conn: asyncpg.Connection, user_id: str, password_hash: str) -> None:
    """Replaces a hash made with outdated parameters."""
    await conn.execute(
        "UPDATE tenant.users SET password_hash = $2 WHERE id = $1",
        uuid.UUID(user_id),
        password_hash,
    )


async def shares_organization(conn: asyncpg.Connection, a: str, b: str) -> bool:
    """Whether two users are members of a common organization (across organizations)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tenant.members x JOIN tenant.members y "
            "USING (organization) WHERE x.user_id = $1 AND y.user_id = $2)",
            uuid.UUID(a),
            uuid.UUID(b),
        )
    )


# -- refresh tokens ---------------------------------------------------------------------


async def insert_refresh(
    conn: asyncpg.Connection,
    *,
    token_id: str,
    family: str,
    user_id: str,
    organization: str | None,
    secret_hash: bytes,
    expires_at: dt.datetime,
    access_jti: str,
    access_expires_at: dt.datetime,
) -> None:
    """Records a minted token pair."""
    await conn.execute(
        "INSERT INTO tenant.refresh_tokens (id, family, user_id, organization, secret_hash, "
        "expires_at, access_jti, access_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        uuid.UUID(token_id),
        uuid.UUID(family),
        uuid.UUID(user_id),
        organization,
        secret_hash,
        expires_at,
        uuid.UUID(access_jti),
        access_expires_at,
    )


async def refresh_row(conn: asyncpg.Connection, token_id: str) -> asyncpg.Record | None:
    """A refresh token's row, locked for rotation."""
    return await conn.fetchrow(
        "SELECT id, family, user_id, organization, secret_hash, expires_at, used_at, "
        "revoked_at FROM tenant.refresh_tokens WHERE id = $1 FOR UPDATE",
        uuid.UUID(token_id),
    )


async def mark_refresh_used(conn: asyncpg.Connection, token_id: str) -> None:
    """Marks a refresh token spent (rotation)."""
    await conn.execute(
        "UPDATE tenant.refresh_tokens SET used_at = now() WHERE id = $1", uuid.UUID(token_id)
    )


async def revoke_refresh(conn: asyncpg.Connection, token_id: str) -> list[tuple[str, float]]:
    """Revokes one refresh token; returns its live access token (jti, expiry)."""
    rows = await conn.fetch(
        "UPDATE tenant.refresh_tokens SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE id = $1 RETURNING access_jti, access_expires_at",
        uuid.UUID(token_id),
    )
    return _live_access(rows)


async def revoke_family(conn: asyncpg.Connection, family: str) -> list[tuple[str, float]]:
    """Revokes every refresh token of a family; returns their live access tokens."""
    rows = await conn.fetch(
        "UPDATE tenant.refresh_tokens SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE family = $1 RETURNING access_jti, access_expires_at",
        uuid.UUID(family),
    )
    return _live_access(rows)


async def revoke_member_tokens(
    conn: asyncpg.Connection, organization: str, user_id: str
) -> list[tuple[str, float]]:
    """Revokes a user's token pairs scoped to an organization (removed or re-roled);
    returns the access tokens still live."""
    rows = await conn.fetch(
        "UPDATE tenant.refresh_tokens SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE organization = $1 AND user_id = $2 AND (revoked_at IS NULL "
        "OR access_expires_at > now()) RETURNING access_jti, access_expires_at",
        organization,
        uuid.UUID(user_id),
    )
    return _live_access(rows)


def _live_access(rows: Sequence[asyncpg.Record]) -> list[tuple[str, float]]:
    now = dt.datetime.now(dt.UTC)
    return [
        (str(row["access_jti"]), row["access_expires_at"].timestamp())
        for row in rows
        if row["access_expires_at"] > now
    ]


# -- revocations ------------------------------------------------------------------------


async def record_revocations(conn: asyncpg.Connection, entries: Mapping[str, float]) -> None:
    """Stores revocations (the source of truth for Redis)."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO tenant.revocations (key, until) "
        "SELECT k, to_timestamp(u) FROM unnest($1::text[], $2::float8[]) AS t(k, u) "
        "ON CONFLICT (key) DO UPDATE SET until = greatest(tenant.revocations.until, "
        "excluded.until)",
        list(entries),
        list(entries.values()),
    )


async def revocations_in_force(conn: asyncpg.Connection) -> dict[str, float]:
    """Every revocation not yet lapsed (to publish them again)."""
    rows = await conn.fetch(
        "SELECT key, extract(epoch FROM until)::float8 AS until FROM tenant.revocations "
        "WHERE until > now()"
    )
    return {row["key"]: row["until"] for row in rows}


async def prune_revocations(conn: asyncpg.Connection) -> list[str]:
    """Deletes lapsed revocations (and spent tokens); returns the keys deleted."""
    await conn.execute(
        "DELETE FROM tenant.refresh_tokens WHERE expires_at < now() - interval '1 day'"
    )
    rows = await conn.fetch("DELETE FROM tenant.revocations WHERE until < now() RETURNING key")
    return [row["key"] for row in rows]


# -- request records --------------------------------------------------------------------


async def find_request(
    conn: asyncpg.Connection, organization: str | None, request_id: str
) -> tuple[str, str, dict[str, Any]] | None:
    """(method, fingerprint, stored answer) of an earlier request with this id."""
    if organization is None:
        row = await conn.fetchrow(
            "SELECT method, fingerprint, response FROM tenant.global_requests "
            "WHERE request_id = $1",
            request_id,
        )
    else:
        row = await conn.fetchrow(
            "SELECT method, fingerprint, response FROM tenant.requests "
            "WHERE organization = $1 AND request_id = $2",
            organization,
            request_id,
        )
    return (row["method"], row["fingerprint"], row["response"]) if row else None


async def save_request(
    conn: asyncpg.Connection,
    organization: str | None,
    request_id: str,
    method: str,
    fingerprint: str,
    response: dict[str, Any],
) -> None:
    """Records the answer to a request id in the transaction that produced it."""
    if organization is None:
        await conn.execute(
            "INSERT INTO tenant.global_requests (request_id, method, fingerprint, response) "
            "VALUES ($1, $2, $3, $4)",
            request_id,
            method,
            fingerprint,
            response,
        )
    else:
        await conn.execute(
            "INSERT INTO tenant.requests (organization, request_id, method, fingerprint, "
            "response) VALUES ($1, $2, $3, $4, $5)",
            organization,
            request_id,
            method,
            fingerprint,
            response,
        )


# -- organizations ----------------------------------------------------------------------

_ORG_COLUMNS = (
    "organization, uid, display_name, state, state_reason, labels, version, created_at, "
    "updated_at, deleted_at, failures"
)


def _org(row: asyncpg.Record) -> Organization:
    return Organization(
        slug=row["organization"],
        uid=str(row["uid"]),
        display_name=row["display_name"],
        state=OrgState(row["state"]),
        state_reason=row["state_reason"],
        labels=dict(row["labels"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        failures=row["failures"],
    )


async def slug_taken(conn: asyncpg.Connection, slug: str) -> bool:
    """Whether a slug was ever used (across organizations: slugs are never reused)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tenant.organizations WHERE organization = $1)", slug
        )
    )


async def insert_organization(
    conn: asyncpg.Connection,
    *,
    slug: str,
    display_name: str,
    labels: Mapping[str, str],
    created_by: str,
    attempt_in: float,
    durable: bool = True,
) -> tuple[Organization, str] | None:
    """Records a new organization PROVISIONING with its creator as owner; the
    organization and the creator's email (the saga's next step needs it), or None
    when the slug was ever taken (nothing written).

    One statement: on a connection with no transaction open it is a transaction of
    its own, committed as it ends (one round trip), waiting for the disk only when
    ``durable`` (inside a transaction, the transaction's commit decides).
    """
    row = await conn.fetchrow(
        "WITH org AS (INSERT INTO tenant.organizations (organization, uid, display_name, "  # noqa: S608
        "state, labels, created_by, next_attempt_at) VALUES ($1, $2, $3, 'PROVISIONING', $4, "
        "$5, now() + make_interval(secs => $6)) ON CONFLICT (organization) DO NOTHING "
        f"RETURNING {_ORG_COLUMNS}), "
        "owner AS (INSERT INTO tenant.members (organization, user_id, role) "
        "SELECT organization, $5::uuid, 'owner' FROM org) "
        f"SELECT {_ORG_COLUMNS}, (SELECT email FROM tenant.users WHERE id = $5::uuid) "
        "AS owner_email, set_config('synchronous_commit', $7, true) AS durability FROM org",
        slug,
        uuid.uuid4(),
        display_name,
        dict(labels),
        created_by,
        attempt_in,
        "on" if durable else "off",
    )
    return (_org(row), str(row["owner_email"])) if row else None


async def load_organization(
    conn: asyncpg.Connection, slug: str, *, for_update: bool = False
) -> Organization | None:
    """One organization (inside its transaction)."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_ORG_COLUMNS} FROM tenant.organizations WHERE organization = $1{lock}",  # noqa: S608
        slug,
    )
    return _org(row) if row else None


async def read_organization(conn: asyncpg.Connection, slug: str) -> Organization | None:
    """One organization in one statement (``tenant.read_organization`` in the
    migrations), on a connection with no transaction open: its own transaction, with
    row-level security set up inside."""
    row = await conn.fetchrow("SELECT * FROM tenant.read_organization($1)", slug)
    return _org(row) if row else None


async def update_organization(
    conn: asyncpg.Connection, slug: str, *, display_name: str, labels: Mapping[str, str]
) -> Organization:
    """Sets the editable fields; bumps the version."""
    row = await conn.fetchrow(
        "UPDATE tenant.organizations SET display_name = $2, labels = $3, "  # noqa: S608
        "version = version + 1, updated_at = now() WHERE organization = $1 "
        f"RETURNING {_ORG_COLUMNS}",
        slug,
        display_name,
        dict(labels),
    )
    assert row is not None
    return _org(row)


async def set_state(
    conn: asyncpg.Connection,
    slug: str,
    state: OrgState,
    *,
    reason: str = "",
    expect: Sequence[OrgState] = (),
    failures: int = 0,
    attempt_in: float = 0.0,
    durable: bool = True,
) -> Organization | None:
    """Moves an organization to ``state`` if it is in one of ``expect`` (any when
    empty); None when it was not.

    One statement (``tenant.set_state`` in the migrations): inside a transaction it
    joins it; on a connection with none open it is a transaction of its own, one round
    trip, whose commit waits for the disk only when ``durable``.
    """
    row = await conn.fetchrow(
        "SELECT * FROM tenant.set_state($1, $2, $3, $4, $5, $6, $7)",
        slug,
        durable,
        state.value,
        reason,
        failures,
        attempt_in,
        [s.value for s in expect],
    )
    return _org(row) if row else None


async def due_organizations(conn: asyncpg.Connection, limit: int) -> list[str]:
    """Organizations whose saga step is due (across organizations: the saga loop)."""
    rows = await conn.fetch(
        "SELECT organization FROM tenant.organizations WHERE (state IN "
        "('PROVISIONING', 'FAILED', 'DELETING') OR (state = 'ACTIVE' AND "
        "owners_version > owners_applied)) AND next_attempt_at <= now() "
        "ORDER BY next_attempt_at LIMIT $1",
        limit,
    )
    return [row["organization"] for row in rows]


async def owners_changed(conn: asyncpg.Connection, organization: str, attempt_in: float) -> None:
    """The set of owners changed: the environment must grant the new one (a saga step
    due in ``attempt_in`` seconds, unless one is due sooner)."""
    await conn.execute(
        "UPDATE tenant.organizations SET owners_version = owners_version + 1, "
        "next_attempt_at = LEAST(next_attempt_at, now() + make_interval(secs => $2)) "
        "WHERE organization = $1",
        organization,
        attempt_in,
    )


async def owners_sync(conn: asyncpg.Connection, organization: str) -> tuple[int, int]:
    """(owners_version, owners_applied) of an organization."""
    row = await conn.fetchrow(
        "SELECT owners_version, owners_applied FROM tenant.organizations WHERE organization = $1",
        organization,
    )
    return (int(row["owners_version"]), int(row["owners_applied"])) if row else (0, 0)


async def owners_applied(
    conn: asyncpg.Connection, organization: str, version: int | None, *, retry_in: float = 0.0
) -> None:
    """Records that the owners of ``version`` are granted (or, with ``version`` None,
    that applying them failed: the step is due again in ``retry_in`` seconds)."""
    if version is None:
        await conn.execute(
            "UPDATE tenant.organizations SET failures = failures + 1, "
            "next_attempt_at = now() + make_interval(secs => $2) WHERE organization = $1",
            organization,
            retry_in,
        )
        return
    await conn.execute(
        "UPDATE tenant.organizations SET owners_applied = GREATEST(owners_applied, $2), "
        "failures = 0 WHERE organization = $1",
        organization,
        version,
    )


async def user_organizations(
    conn: asyncpg.Connection, user_id: str, *, after: str, limit: int, show_deleted: bool
) -> list[Organization]:
    """The organizations a user is a member of, by slug (across organizations)."""
    rows = await conn.fetch(
        f"SELECT {', '.join('o.' + c.strip() for c in _ORG_COLUMNS.split(','))} "  # noqa: S608
        "FROM tenant.members m JOIN tenant.organizations o USING (organization) "
        "WHERE m.user_id = $1 AND o.organization > $2 AND ($3 OR o.state <> 'DELETED') "
        "ORDER BY o.organization LIMIT $4",
        uuid.UUID(user_id),
        after,
        show_deleted,
        limit,
    )
    return [_org(row) for row in rows]


async def organization_state(conn: asyncpg.Connection, slug: str) -> OrgState | None:
    """The state of an organization (across organizations: sign-in checks)."""
    value = await conn.fetchval(
        "SELECT state FROM tenant.organizations WHERE organization = $1", slug
    )
    return OrgState(value) if value else None


async def erase_organization_data(conn: asyncpg.Connection, slug: str) -> None:
    """Deletes what a DELETED organization no longer needs (members stay: they show
    who may still read the record; the slug stays: it is never reused)."""
    for table in ("notes", "projects", "service_account_keys", "requests"):
        await conn.execute(
            f"DELETE FROM tenant.{table} WHERE organization = $1",  # noqa: S608 - fixed names
            slug,
        )


# -- members ----------------------------------------------------------------------------

_MEMBER_COLUMNS = (
    "m.organization, m.user_id, u.email, m.role, m.version, m.created_at, m.updated_at"
)


def _member(row: asyncpg.Record) -> Member:
    return Member(
        organization=row["organization"],
        user_id=str(row["user_id"]),
        email=row["email"],
        role=Role(row["role"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_member(
    conn: asyncpg.Connection, organization: str, user_id: str, role: Role
) -> Member | None:
    """Adds a member; None when already one."""
    inserted = await conn.fetchval(
        "INSERT INTO tenant.members (organization, user_id, role) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        organization,
        uuid.UUID(user_id),
        role.value,
    )
    if inserted is None:
        return None
    return await load_member(conn, organization, user_id)


async def load_member(
    conn: asyncpg.Connection, organization: str, user_id: str, *, for_update: bool = False
) -> Member | None:
    """One membership."""
    lock = " FOR UPDATE OF m" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_MEMBER_COLUMNS} FROM tenant.members m JOIN tenant.users u "  # noqa: S608
        f"ON u.id = m.user_id WHERE m.organization = $1 AND m.user_id = $2{lock}",
        organization,
        uuid.UUID(user_id),
    )
    return _member(row) if row else None


async def list_members(
    conn: asyncpg.Connection, organization: str, *, after: str, limit: int
) -> list[Member]:
    """Members by email."""
    rows = await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM tenant.members m JOIN tenant.users u "  # noqa: S608
        "ON u.id = m.user_id WHERE m.organization = $1 AND u.email > $2 "
        "ORDER BY u.email LIMIT $3",
        organization,
        after,
        limit,
    )
    return [_member(row) for row in rows]


async def owners(
    conn: asyncpg.Connection, organization: str, *, lock: bool = True
) -> list[tuple[str, str]]:
    """(user id, email) of every owner; locked by default: owner changes serialize on
    them, so two concurrent demotions cannot leave the organization without one."""
    rows = await conn.fetch(
        "SELECT m.user_id, u.email FROM tenant.members m JOIN tenant.users u "  # noqa: S608
        "ON u.id = m.user_id WHERE m.organization = $1 AND m.role = 'owner' "
        f"ORDER BY u.email{' FOR UPDATE OF m' if lock else ''}",
        organization,
    )
    return [(str(row["user_id"]), row["email"]) for row in rows]


async def set_member_role(
    conn: asyncpg.Connection, organization: str, user_id: str, role: Role
) -> Member:
    """Changes a member's role; bumps the version."""
    await conn.execute(
        "UPDATE tenant.members SET role = $3, version = version + 1, updated_at = now() "
        "WHERE organization = $1 AND user_id = $2",
        organization,
        uuid.UUID(user_id),
        role.value,
    )
    member = await load_member(conn, organization, user_id)
    assert member is not None
    return member


async def delete_member(conn: asyncpg.Connection, organization: str, user_id: str) -> None:
    """Removes a membership."""
    await conn.execute(
        "DELETE FROM tenant.members WHERE organization = $1 AND user_id = $2",
        organization,
        uuid.UUID(user_id),
    )


async def count(conn: asyncpg.Connection, table: str, organization: str) -> int:
    """Rows of an organization in one of its tables (for limits)."""
    assert table in ("members", "projects", "notes", "service_account_keys")
    return int(
        await conn.fetchval(
            f"SELECT count(*) FROM tenant.{table} WHERE organization = $1",  # noqa: S608
            organization,
        )
    )


async def lock_organization(conn: asyncpg.Connection, organization: str) -> None:
    """Serializes writes that check a per-organization limit."""
    await conn.execute(
        "SELECT 1 FROM tenant.organizations WHERE organization = $1 FOR UPDATE", organization
    )


# -- projects ---------------------------------------------------------------------------

_PROJECT_COLUMNS = "organization, id, display_name, description, version, created_at, updated_at"


def _project(row: asyncpg.Record) -> Project:
    return Project(
        organization=row["organization"],
        id=row["id"],
        display_name=row["display_name"],
        description=row["description"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_project(
    conn: asyncpg.Connection, organization: str, project: str, display_name: str, description: str
) -> Project | None:
    """Creates a project; None when the id is taken."""
    row = await conn.fetchrow(
        "INSERT INTO tenant.projects (organization, id, display_name, description) "  # noqa: S608
        f"VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING {_PROJECT_COLUMNS}",
        organization,
        project,
        display_name,
        description,
    )
    return _project(row) if row else None


async def load_project(
    conn: asyncpg.Connection, organization: str, project: str, *, for_update: bool = False
) -> Project | None:
    """One project."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_PROJECT_COLUMNS} FROM tenant.projects "  # noqa: S608
        f"WHERE organization = $1 AND id = $2{lock}",
        organization,
        project,
    )
    return _project(row) if row else None


async def list_projects(
    conn: asyncpg.Connection, organization: str, *, after: str, limit: int
) -> list[Project]:
    """Projects by id."""
    rows = await conn.fetch(
        f"SELECT {_PROJECT_COLUMNS} FROM tenant.projects "  # noqa: S608
        "WHERE organization = $1 AND id > $2 ORDER BY id LIMIT $3",
        organization,
        after,
        limit,
    )
    return [_project(row) for row in rows]


async def update_project(
    conn: asyncpg.Connection, organization: str, project: str, display_name: str, description: str
) -> Project:
    """Sets the editable fields; bumps the version."""
    row = await conn.fetchrow(
        "UPDATE tenant.projects SET display_name = $3, description = $4, "  # noqa: S608
        "version = version + 1, updated_at = now() WHERE organization = $1 AND id = $2 "
        f"RETURNING {_PROJECT_COLUMNS}",
        organization,
        project,
        display_name,
        description,
    )
    assert row is not None
    return _project(row)


async def delete_project(conn: asyncpg.Connection, organization: str, project: str) -> None:
    """Deletes a project and (by cascade) its notes."""
    await conn.execute(
        "DELETE FROM tenant.projects WHERE organization = $1 AND id = $2", organization, project
    )


# -- notes ------------------------------------------------------------------------------

_NOTE_COLUMNS = (
    "organization, project, id, title, body, author_user_id, version, created_at, updated_at"
)


def _note(row: asyncpg.Record) -> Note:
    return Note(
        organization=row["organization"],
        project=row["project"],
        id=str(row["id"]),
        title=row["title"],
        body=row["body"],
        author_user_id=row["author_user_id"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_note(
    conn: asyncpg.Connection, organization: str, project: str, title: str, body: str, author: str
) -> Note:
    """Creates a note."""
    row = await conn.fetchrow(
        "INSERT INTO tenant.notes (organization, project, id, title, body, author_user_id) "  # noqa: S608
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_NOTE_COLUMNS}",
        organization,
        project,
        uuid.uuid4(),
        title,
        body,
        author,
    )
    assert row is not None
    return _note(row)


async def load_note(
    conn: asyncpg.Connection,
    organization: str,
    project: str,
    note: str,
    *,
    for_update: bool = False,
) -> Note | None:
    """One note of a project."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_NOTE_COLUMNS} FROM tenant.notes "  # noqa: S608
        f"WHERE organization = $1 AND project = $2 AND id = $3{lock}",
        organization,
        project,
        uuid.UUID(note),
    )
    return _note(row) if row else None


async def list_notes(
    conn: asyncpg.Connection,
    organization: str,
    *,
    project: str,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[Note]:
    """Notes, most recently created first, of one project or (project "") all."""
    after_time, after_id = after or (None, None)
    rows = await conn.fetch(
        f"SELECT {_NOTE_COLUMNS} FROM tenant.notes WHERE organization = $1 "  # noqa: S608
        "AND ($2 = '' OR project = $2) "
        "AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid)) "
        "ORDER BY created_at DESC, id DESC LIMIT $5",
        organization,
        project,
        after_time,
        uuid.UUID(after_id) if after_id else None,
        limit,
    )
    return [_note(row) for row in rows]


async def update_note(
    conn: asyncpg.Connection, organization: str, note: str, title: str, body: str
) -> Note:
    """Sets the editable fields; bumps the version."""
    row = await conn.fetchrow(
        "UPDATE tenant.notes SET title = $3, body = $4, version = version + 1, "  # noqa: S608
        "updated_at = now() WHERE organization = $1 AND id = $2 "
        f"RETURNING {_NOTE_COLUMNS}",
        organization,
        uuid.UUID(note),
        title,
        body,
    )
    assert row is not None
    return _note(row)


async def delete_note(conn: asyncpg.Connection, organization: str, note: str) -> None:
    """Deletes a note."""
    await conn.execute(
        "DELETE FROM tenant.notes WHERE organization = $1 AND id = $2",
        organization,
        uuid.UUID(note),
    )


# -- service-account keys ---------------------------------------------------------------

_KEY_COLUMNS = "organization, id, display_name, scopes, expires_at, created_at"


def _key(row: asyncpg.Record) -> ServiceAccountKey:
    return ServiceAccountKey(
        organization=row["organization"],
        id=str(row["id"]),
        display_name=row["display_name"],
        scopes=tuple(row["scopes"]),
        expires_at=row["expires_at"],
        created_at=row["created_at"],
    )


async def insert_key(
    conn: asyncpg.Connection,
    organization: str,
    *,
    key_id: str,
    display_name: str,
    scopes: Sequence[str],
    token_hash: bytes,
    created_by: str,
    expires_at: dt.datetime,
    created_at: dt.datetime,
) -> ServiceAccountKey:
    """Records a key (its token's hash only)."""
    row = await conn.fetchrow(
        "INSERT INTO tenant.service_account_keys (organization, id, display_name, scopes, "  # noqa: S608
        "token_hash, created_by, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        f"RETURNING {_KEY_COLUMNS}",
        organization,
        uuid.UUID(key_id),
        display_name,
        list(scopes),
        token_hash,
        created_by,
        expires_at,
        created_at,
    )
    assert row is not None
    return _key(row)


async def load_key(
    conn: asyncpg.Connection, organization: str, key_id: str
) -> ServiceAccountKey | None:
    """One key."""
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM tenant.service_account_keys "  # noqa: S608
        "WHERE organization = $1 AND id = $2 FOR UPDATE",
        organization,
        uuid.UUID(key_id),
    )
    return _key(row) if row else None


async def list_keys(
    conn: asyncpg.Connection,
    organization: str,
    *,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[ServiceAccountKey]:
    """Keys, oldest first."""
    after_time, after_id = after or (None, None)
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM tenant.service_account_keys WHERE organization = $1 "  # noqa: S608
        "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid)) "
        "ORDER BY created_at, id LIMIT $4",
        organization,
        after_time,
        uuid.UUID(after_id) if after_id else None,
        limit,
    )
    return [_key(row) for row in rows]


async def delete_key(conn: asyncpg.Connection, organization: str, key_id: str) -> None:
    """Deletes a key's record."""
    await conn.execute(
        "DELETE FROM tenant.service_account_keys WHERE organization = $1 AND id = $2",
        organization,
        uuid.UUID(key_id),
    )


def dumps(value: Any) -> str:
    """JSON for request records."""
    return json.dumps(value, separators=(",", ":"), default=str)
