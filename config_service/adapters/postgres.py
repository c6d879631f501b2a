"""ConfigService's queries. Every function takes a connection that is already inside
an organization transaction (:meth:`ConfigStore.transaction`), except the few that
work across organizations and say so."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg

from config_service.domain.model import Change, Entry
from config_service.domain.schema import ServiceSchema, StoredSchema
from config_service.domain.values import ConfigValue
from servicekit.db import organization_transaction

# The role organization-scoped work runs as: row-level security applies to it.
TENANT_ROLE = "agentready_config"


class ConfigStore:
    """Entry point to the ``config`` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def transaction(
        self, organization: str, *, snapshot: bool = False, durable: bool = True
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees ``organization`` only.

        Args:
            snapshot: a read-only REPEATABLE READ transaction, so several queries see
                one consistent state (a WatchConfig snapshot).
        """
        async with organization_transaction(
            self.pool,
            organization,
            role=TENANT_ROLE,
            isolation="repeatable_read" if snapshot else "read_committed",
            readonly=snapshot,
            durable=durable,
        ) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def single(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection with no transaction open, for one statement that is its own
        transaction and sets row-level security up itself (:func:`read_entry`)."""
        async with self.pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def write(self, organization: str) -> AsyncIterator[asyncpg.Connection]:
        """A transaction for a write; call :func:`begin_write` first thing in it (it
        switches to the tenant role and organization and takes the write lock)."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def revisions(self, organizations: Sequence[str]) -> dict[str, int]:
        """Current revision of each organization (across organizations: the poller)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT organization, revision FROM config.organizations "
                "WHERE organization = ANY($1::text[])",
                list(organizations),
            )
        return {row["organization"]: row["revision"] for row in rows}

    async def purge(self, organization: str) -> None:
        """Deletes everything stored for ``organization`` (it is being deleted), after
        the writes in flight: they hold its revision row, which is locked first."""
        async with self.transaction(organization) as conn:
            await lock_organization(conn, organization)
            for table in (
                "history",
                "entries",
                "schemas",
                "requests",
                "clients",
                "organizations",
            ):
                await conn.execute(
                    f"DELETE FROM config.{table} WHERE organization = $1",  # noqa: S608 - fixed names
                    organization,
                )

    async def known_organizations(self) -> list[str]:
        """Every organization with configuration (across organizations: compaction)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT organization FROM config.organizations")
        return [row["organization"] for row in rows]


@dataclasses.dataclass(frozen=True)
class WriteState:
    """What a write sees once it holds the organization's lock."""

    revision: int
    compacted: int
    entries: dict[tuple[str, str], Entry]
    schemas: dict[str, ServiceSchema]
    # What an earlier attempt with the write's request id recorded: (method,
    # fingerprint, result), or None.
    request: tuple[str, str, dict[str, Any]] | None = None
    # The version of each schema read (by service): what config.commit_write checks.
    schema_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    # Which life of the organization was read (its revisions start over after a purge;
    # see migration 0011): what config.commit_write checks too. None: no row yet, or
    # not read (config.begin_write).
    incarnation: int | None = None


async def begin_write(
    conn: asyncpg.Connection,
    organization: str,
    keys: Sequence[tuple[str, str]],
    schema_services: Iterable[str],
    *,
    request_id: str = "",
) -> WriteState:
    """Enters the organization, locks its revision and reads what the write needs (and
    what an earlier attempt with ``request_id`` recorded), in one round trip
    (``config.begin_write``)."""
    return await _write_state(conn, "begin_write", organization, keys, schema_services, request_id)


async def read_for_write(
    conn: asyncpg.Connection,
    organization: str,
    keys: Sequence[tuple[str, str]],
    schema_services: Iterable[str],
    *,
    request_id: str = "",
) -> WriteState:
    """What :func:`begin_write` reads (and the versions of the schemas), without a
    lock and in a statement that is a transaction of its own
    (``config.read_for_write``; on a connection with no transaction open): the first
    half of an optimistic write, which :func:`commit_write` finishes."""
    return await _write_state(
        conn, "read_for_write", organization, keys, schema_services, request_id
    )


async def _write_state(
    conn: asyncpg.Connection,
    function: str,
    organization: str,
    keys: Sequence[tuple[str, str]],
    schema_services: Iterable[str],
    request_id: str,
) -> WriteState:
    row = await conn.fetchrow(
        f"SELECT * FROM config.{function}($1, $2::text[], $3::text[], $4::text[], $5)",  # noqa: S608 - our function names
        organization,
        [service for service, _ in keys],
        [key for _, key in keys],
        sorted(set(schema_services)),
        request_id,
    )
    assert row is not None
    found = row["request"]
    return WriteState(
        int(row["revision"]),
        int(row["compact_revision"]),
        {(e["service"], e["key"]): Entry.from_json(e) for e in row["entries"]},
        {name: ServiceSchema.from_json(s) for name, s in row["schemas"].items()},
        (found["method"], found["fingerprint"], found["response"]) if found else None,
        {name: int(version) for name, version in (row.get("schema_versions") or {}).items()},
        row.get("incarnation"),
    )


class Committed(enum.Enum):
    """How :func:`commit_write` ended."""

    OK = "ok"
    # Something the write was decided on changed after it was read: nothing written.
    CONFLICT = "conflict"
    # The write would take the organization past a limit: nothing written.
    LIMIT = "limit"


async def commit_write(
    conn: asyncpg.Connection,
    organization: str,
    read: WriteState,
    changes: Sequence[Change],
    now: dt.datetime,
    *,
    limits: Usage,
    request: RequestRecord | None = None,
) -> tuple[Committed, Usage, Usage]:
    """Writes one revision decided on ``read`` (from :func:`read_for_write`) in one
    statement that is a transaction of its own (``config.commit_write``), unless the
    organization's revision, a schema read or the request id's record changed since,
    or the write would take the organization past ``limits``, or it is not the
    incarnation read. Returns (how it ended, the usage after the write, what the write
    adds); the usage is what it would be for LIMIT, and the current one, with nothing
    added, for CONFLICT."""
    services = sorted({c.service for c in changes if c.new_value is not None})
    row = await conn.fetchrow(
        "SELECT * FROM config.commit_write("
        "$1, $2, $3::text[], $4::jsonb, $5::jsonb, $6, $7, $8, $9, $10, $11, $12::jsonb, $13)",
        organization,
        read.revision,
        services,
        {name: read.schema_versions[name] for name in services if name in read.schema_versions},
        _change_rows(changes),
        now,
        limits.keys,
        limits.bytes,
        request.request_id if request else "",
        request.method if request else "",
        request.fingerprint if request else "",
        request.result if request else None,
        read.incarnation,
    )
    assert row is not None
    return (
        Committed(row["outcome"]),
        Usage(int(row["key_count"]), int(row["stored_bytes"])),
        Usage(int(row["added_keys"]), int(row["added_bytes"])),
    )


async def lock_organization(conn: asyncpg.Connection, organization: str) -> None:
    """Locks the organization's revision row until commit (creating it on first use),
    as every value write does (:func:`commit_write`, :func:`begin_write`)."""
    await conn.execute(
        "INSERT INTO config.organizations (organization) VALUES ($1) "
        "ON CONFLICT (organization) DO NOTHING",
        organization,
    )
    await conn.execute(
        "SELECT 1 FROM config.organizations WHERE organization = $1 FOR UPDATE", organization
    )


async def read_revision(conn: asyncpg.Connection, organization: str) -> tuple[int, int]:
    """(current revision, compacted-through revision), without locking; (0, 0) if new."""
    row = await conn.fetchrow(
        "SELECT revision, compact_revision FROM config.organizations WHERE organization = $1",
        organization,
    )
    return (int(row["revision"]), int(row["compact_revision"])) if row else (0, 0)


async def revision_of(conn: asyncpg.Connection, organization: str) -> tuple[int, int]:
    """:func:`read_revision` in one statement that is a transaction of its own
    (``config.revision_of``, on a connection with no transaction open)."""
    row = await conn.fetchrow("SELECT * FROM config.revision_of($1)", organization)
    assert row is not None
    return int(row["revision"]), int(row["compact_revision"])


async def find_request(
    conn: asyncpg.Connection, organization: str, request_id: str
) -> tuple[str, str, dict[str, Any]] | None:
    """(method, fingerprint, stored result) of an earlier request with this id."""
    row = await conn.fetchrow(
        "SELECT method, fingerprint, response FROM config.requests "
        "WHERE organization = $1 AND request_id = $2",
        organization,
        request_id,
    )
    if row is None:
        return None
    return row["method"], row["fingerprint"], row["response"]


async def save_request(
    conn: asyncpg.Connection,
    organization: str,
    request_id: str,
    method: str,
    fingerprint: str,
    result: dict[str, Any],
) -> None:
    """Records the result of a request id, in the transaction that produced it."""
    await conn.execute(
        "INSERT INTO config.requests (organization, request_id, method, fingerprint, response) "
        "VALUES ($1, $2, $3, $4, $5)",
        organization,
        request_id,
        method,
        fingerprint,
        result,
    )


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        service=row["service"],
        key=row["key"],
        value=ConfigValue.from_json(row["value"]),
        revision=int(row["revision"]),
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )


async def read_entry(
    conn: asyncpg.Connection, organization: str, service: str, key: str
) -> Entry | ServiceSchema | None:
    """One key in one statement (``config.read_entry``, on a connection with no
    transaction open): its entry when set, else its service's schema, else None."""
    row = await conn.fetchrow(
        "SELECT * FROM config.read_entry($1, $2, $3)", organization, service, key
    )
    if row is None:
        return None
    if row["is_set"]:
        return Entry(
            service=service,
            key=key,
            value=ConfigValue.from_json(row["value"]),
            revision=int(row["revision"]),
            updated_at=row["updated_at"],
            updated_by=row["updated_by"],
        )
    return ServiceSchema.from_json(row["schema"])


@dataclasses.dataclass(frozen=True)
class WatchStart:
    """Where a WatchConfig stream starts: the organization's revision, the revision
    its history is compacted through and its last commit time, and, when the stream
    starts with a snapshot, the entries of the services watched."""

    revision: int
    compacted: int
    commit_time: dt.datetime | None
    snapshot: bool
    entries: list[Entry]


async def watch_start(
    conn: asyncpg.Connection, organization: str, services: Sequence[str], start_revision: int
) -> WatchStart:
    """Reads where a stream that asks to start after ``start_revision`` (0: with a
    snapshot) starts, in one statement (``config.watch_start``, on a connection with
    no transaction open), so with one consistent view."""
    rows = await conn.fetch(
        "SELECT * FROM config.watch_start($1, $2::text[], $3)",
        organization,
        list(services),
        start_revision,
    )
    head = rows[0]
    return WatchStart(
        revision=int(head["org_revision"]),
        compacted=int(head["org_compact_revision"]),
        commit_time=head["commit_time"],
        snapshot=bool(head["is_snapshot"]),
        entries=[_entry(row) for row in rows[1:]],
    )


async def list_entries(
    conn: asyncpg.Connection,
    organization: str,
    *,
    services: Sequence[str] = (),
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> list[Entry]:
    """Entries ordered by (service, key), optionally of some services, after a key."""
    after_service, after_key = after or ("", "")
    rows = await conn.fetch(
        "SELECT service, key, value, revision, updated_at, updated_by FROM config.entries "
        "WHERE organization = $1 "
        "  AND (cardinality($2::text[]) = 0 OR service = ANY($2::text[])) "
        "  AND (service, key) > ($3, $4) "
        "ORDER BY service, key LIMIT $5",
        organization,
        list(services),
        after_service,
        after_key,
        limit,
    )
    return [_entry(row) for row in rows]


@dataclasses.dataclass(frozen=True)
class Usage:
    """What an organization stores: its keys and their size (names and values)."""

    keys: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """A request id's record (AIP-155), written with the write that answers it."""

    request_id: str
    method: str
    fingerprint: str
    result: dict[str, Any]


def _change_rows(changes: Sequence[Change]) -> list[dict[str, Any]]:
    """Changes as the write statements take them: one JSON array (cheaper to encode
    than a dozen arrays)."""
    return [
        {
            "seq": c.seq,
            "service": c.service,
            "key": c.key,
            "change_type": c.kind,
            "old_value": c.old_value.to_json() if c.old_value else None,
            "new_value": c.new_value.to_json() if c.new_value else None,
            "actor": c.actor,
            "reason": c.reason,
            "request_id": c.request_id,
        }
        for c in changes
    ]


async def read_usage(conn: asyncpg.Connection, organization: str) -> tuple[Usage, int]:
    """(the organization's usage, the encoded size of its schemas)."""
    row = await conn.fetchrow(
        "SELECT coalesce((SELECT key_count FROM config.organizations WHERE organization = $1), 0)"
        "         AS keys, "
        "       coalesce((SELECT stored_bytes FROM config.organizations "
        "                  WHERE organization = $1), 0) AS bytes, "
        "       (SELECT coalesce(sum(octet_length(schema::text)), 0) FROM config.schemas "
        "         WHERE organization = $1) AS schema_bytes",
        organization,
    )
    assert row is not None
    return Usage(int(row["keys"]), int(row["bytes"])), int(row["schema_bytes"])


def _stored_schema(row: asyncpg.Record) -> StoredSchema:
    return StoredSchema(
        service=row["service"],
        schema=ServiceSchema.from_json(row["schema"]),
        version=int(row["version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def other_schemas_bytes(conn: asyncpg.Connection, organization: str, service: str) -> int:
    """Encoded size of the organization's schemas other than ``service``'s, with the
    organization's schema writes serialized until commit (so two at once cannot
    overshoot the organization's limit together)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('agentready:schemas:' || $1, 0))",
        organization,
    )
    total = await conn.fetchval(
        "SELECT coalesce(sum(octet_length(schema::text)), 0) FROM config.schemas "
        "WHERE organization = $1 AND service <> $2",
        organization,
        service,
    )
    return int(total)


async def load_schema(
    conn: asyncpg.Connection, organization: str, service: str, *, lock: bool = False
) -> StoredSchema | None:
    """One service's schema, locked until commit when ``lock``."""
    row = await conn.fetchrow(
        "SELECT service, schema, version, created_at, updated_at FROM config.schemas "  # noqa: S608 - constant text
        "WHERE organization = $1 AND service = $2" + (" FOR UPDATE" if lock else ""),
        organization,
        service,
    )
    return _stored_schema(row) if row else None


async def list_schemas(
    conn: asyncpg.Connection, organization: str, *, after: str, limit: int
) -> list[StoredSchema]:
    """Schemas ordered by service, after the service ``after``."""
    rows = await conn.fetch(
        "SELECT service, schema, version, created_at, updated_at FROM config.schemas "
        "WHERE organization = $1 AND service > $2 ORDER BY service LIMIT $3",
        organization,
        after,
        limit,
    )
    return [_stored_schema(row) for row in rows]


async def upsert_schema(
    conn: asyncpg.Connection, organization: str, service: str, schema: ServiceSchema
) -> StoredSchema:
    """Registers or replaces a schema, bumping its version."""
    row = await conn.fetchrow(
        "INSERT INTO config.schemas (organization, service, schema) VALUES ($1, $2, $3) "
        "ON CONFLICT (organization, service) DO UPDATE SET schema = EXCLUDED.schema, "
        "  version = config.schemas.version + 1, updated_at = now() "
        "RETURNING service, schema, version, created_at, updated_at",
        organization,
        service,
        schema.to_json(),
    )
    assert row is not None
    return _stored_schema(row)


async def delete_schema(conn: asyncpg.Connection, organization: str, service: str) -> None:
    """Removes a schema."""
    await conn.execute(
        "DELETE FROM config.schemas WHERE organization = $1 AND service = $2",
        organization,
        service,
    )


def _change(row: asyncpg.Record) -> Change:
    return Change(
        revision=int(row["revision"]),
        seq=int(row["seq"]),
        service=row["service"],
        key=row["key"],
        kind=row["change_type"],
        old_value=ConfigValue.from_json(row["old_value"]) if row["old_value"] else None,
        new_value=ConfigValue.from_json(row["new_value"]) if row["new_value"] else None,
        actor=row["actor"],
        reason=row["reason"],
        request_id=row["request_id"],
        created_at=row["created_at"],
    )


_HISTORY_COLUMNS = (
    "revision, seq, service, key, change_type, old_value, new_value, actor, reason, "
    "request_id, created_at"
)
_HISTORY_COLUMNS_OF_H = ", ".join(f"h.{c.strip()}" for c in _HISTORY_COLUMNS.split(","))


async def changes_between(
    conn: asyncpg.Connection, organization: str, after: int, upto: int
) -> list[Change]:
    """Every change of revisions ``after`` < r <= ``upto``, in commit order, in one
    statement that is a transaction of its own (``config.changes_between``, on a
    connection with no transaction open)."""
    rows = await conn.fetch(
        "SELECT * FROM config.changes_between($1, $2, $3)", organization, after, upto
    )
    return [_change(row) for row in rows]


async def list_history(
    conn: asyncpg.Connection,
    organization: str,
    *,
    service: str,
    key: str,
    start_revision: int,
    end_revision: int,
    after: tuple[int, int],
    limit: int,
    max_bytes: int,
) -> tuple[list[Change], int]:
    """History oldest first, filtered, after the (revision, seq) position ``after``: at
    most ``limit`` rows, fewer when their values pass ``max_bytes``, and one more when
    more follow. The cut is made in the database, on each row's ``value_bytes``, so
    only the values of the rows returned are read.

    Returns:
        The changes, and how many of them a page may hold (the rest, one at most, only
        tells that more follow).
    """
    rows = await conn.fetch(
        "WITH page AS ("  # noqa: S608 - constant columns
        "  SELECT revision, seq,"
        "    coalesce(sum(value_bytes) OVER before, 0) AS before_bytes,"
        "    coalesce(sum(value_bytes) OVER before_previous, 0) AS before_previous_bytes"
        "  FROM config.history"
        "  WHERE organization = $1"
        "    AND ($2 = '' OR service = $2) AND ($3 = '' OR key = $3)"
        "    AND revision >= $4 AND ($5::bigint = 0 OR revision <= $5)"
        "    AND (revision, seq) > ($6, $7)"
        "  WINDOW before AS (ORDER BY revision, seq"
        "                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),"
        "         before_previous AS (ORDER BY revision, seq"
        "                    ROWS BETWEEN UNBOUNDED PRECEDING AND 2 PRECEDING)"
        "  ORDER BY revision, seq LIMIT $8 + 1) "
        f"SELECT {_HISTORY_COLUMNS_OF_H}, p.before_bytes "
        "FROM page p JOIN config.history h"
        "  ON h.organization = $1 AND h.revision = p.revision AND h.seq = p.seq "
        "WHERE p.before_previous_bytes <= $9 "
        "ORDER BY p.revision, p.seq",
        organization,
        service,
        key,
        start_revision,
        end_revision,
        after[0],
        after[1],
        limit,
        max_bytes,
    )
    # Rows that begin within the budget may be on the page; the first one past it (if
    # read) only tells that more follow.
    fitting = sum(1 for row in rows if row["before_bytes"] <= max_bytes)
    return [_change(row) for row in rows], min(limit, fitting)


async def first_changes_after(
    conn: asyncpg.Connection, organization: str, revision: int, service: str, key: str
) -> list[Change]:
    """For each key (optionally of one service or one key), its first change after
    ``revision``: its ``old_value`` is the key's value at ``revision``."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (service, key) {_HISTORY_COLUMNS} "  # noqa: S608
        "FROM config.history "
        "WHERE organization = $1 AND revision > $2 "
        "  AND ($3 = '' OR service = $3) AND ($4 = '' OR key = $4) "
        "ORDER BY service, key, revision, seq",
        organization,
        revision,
        service,
        key,
    )
    return [_change(row) for row in rows]


async def compact(conn: asyncpg.Connection, organization: str, through: int) -> int:
    """Drops history at or below ``through``; returns the rows removed."""
    await conn.execute(
        "UPDATE config.organizations SET compact_revision = GREATEST(compact_revision, $2) "
        "WHERE organization = $1",
        organization,
        through,
    )
    result = await conn.execute(
        "DELETE FROM config.history WHERE organization = $1 AND revision <= $2",
        organization,
        through,
    )
    return int(result.split()[-1])
