"""PostgreSQL: the connection pool and versioned, per-schema migrations.

Each service owns one schema and migrates only it. Migrations are files named
``NNNN_description.sql`` in the service's ``migrations/`` folder, applied in order,
each recorded with its checksum in ``<schema>.schema_migrations``. All of it runs in
one transaction under a PostgreSQL advisory lock keyed by the schema, so replicas
starting at once apply each migration exactly once and the losers simply wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class MigrationError(Exception):
    """The migrations on disk and those recorded in the database disagree."""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file: an applied migration must never change."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    """Reads and orders the migrations of one schema.

    Raises:
        MigrationError: a file is misnamed or two files share a version.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_description.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version} is used twice")
        migrations[version] = Migration(version, match.group(2), path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key for migrating ``schema``."""
    digest = hashlib.sha256(f"agentready:migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def quote_identifier(name: str) -> str:
    """Quotes a schema name after checking it is a plain lower-case identifier."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


async def migrate(conn: asyncpg.Connection, schema: str, directory: Path) -> list[int]:
    """Applies the pending migrations of ``schema``; returns the versions applied now.

    Safe to call from many processes at once: they serialize on an advisory lock and
    each migration runs once. Idempotent: a second call applies nothing.

    Raises:
        MigrationError: an applied migration's file changed since it was applied.
    """
    migrations = load_migrations(directory)
    quoted = quote_identifier(schema)
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        rows = await conn.fetch(
            f"SELECT version, checksum FROM {quoted}.schema_migrations"  # noqa: S608 - quoted identifier
        )
        recorded = {row["version"]: row["checksum"] for row in rows}
        for migration in migrations:
            checksum = recorded.get(migration.version)
            if checksum is not None:
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"{schema} migration {migration.version:04d}_{migration.name} was "
                        "changed after it was applied; add a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) "  # noqa: S608
                "VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    if applied_now:
        log.info("migrated schema %s", schema, extra={"versions": applied_now})
    return applied_now


async def connect_pool(
    dsn: str,
    *,
    schema: str,
    application_name: str,
    min_size: int = 1,
    max_size: int = 10,
    wait_seconds: float = 30.0,
) -> asyncpg.Pool:
    """Opens a pool whose connections see ``schema`` first on their search path.

    PostgreSQL that is still starting (a pod beside its database) is waited for, up to
    ``wait_seconds``, with backoff.

    Raises:
        ConnectionError: PostgreSQL did not answer in time; the message says where.
    """
    deadline = asyncio.get_running_loop().time() + wait_seconds
    delay = 0.1
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=init_connection,
                reset=_keep_session,
                server_settings={
                    "application_name": application_name,
                    "search_path": f"{quote_identifier(schema)}, public",
                },
            )
            return pool
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise ConnectionError(
                    f"PostgreSQL at {redact_url(dsn)} did not answer: {exc}"
                ) from None
            log.warning("waiting for PostgreSQL at %s: %s", redact_url(dsn), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skips asyncpg's reset query on release: a round trip per transaction saved.

    Safe because the services change session state only for the length of a
    transaction (``set_config(..., true)``, ``SET LOCAL``); code that takes
    session-level advisory locks releases them itself.
    """
    del conn


async def init_connection(conn: asyncpg.Connection) -> None:
    """json and jsonb columns and parameters as Python values (every pooled connection;
    other connections to the services' databases can be set up alike)."""
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, encoder=_json_dumps, decoder=json.loads, schema="pg_catalog"
        )


def _json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@contextlib.asynccontextmanager
async def organization_transaction(
    pool: asyncpg.Pool,
    organization: str,
    *,
    role: str,
    isolation: str = "read_committed",
    readonly: bool = False,
    durable: bool = True,
) -> AsyncIterator[Any]:
    """A transaction in which row-level security sees only ``organization``.

    ``durable=False`` commits without waiting for the disk (``synchronous_commit``
    off, for this transaction only): for writes that a crash may lose because they
    are derived and rewritten anyway (a status the next reconcile writes again, a
    client's heartbeat). The commit is still atomic and never reorders.

    The transaction runs as ``role`` (a role without BYPASSRLS that owns nothing, so
    the policies apply even when the pool connects as a superuser) with ``app.org_id``
    set to ``organization``; both settings end with the transaction, so a pooled
    connection never carries one tenant's setting into another's work.
    """
    async with pool.acquire() as conn, conn.transaction(isolation=isolation, readonly=readonly):
        await conn.execute(
            "SELECT set_config('role', $1, true), set_config('app.org_id', $2, true), "
            "set_config('synchronous_commit', $3, true)",
            role,
            organization,
            "on" if durable else "off",
        )
        yield conn


_SECRET_PARAMETERS = frozenset({"password", "pass", "passwd", "sslpassword", "token"})


def redact_url(url: str) -> str:
    """``url`` with every secret replaced by ``***``, for logs and error messages: the
    password of the user part (which may itself contain ``@`` or ``:``) and secret
    query parameters such as ``?password=``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = [
        (key, "***" if key.lower() in _SECRET_PARAMETERS else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/*")))
