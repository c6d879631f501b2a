"""Versioned per-schema migrations on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from servicekit.db import MigrationError, connect_pool, load_migrations, migrate


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, schema="public", application_name="test")
    yield pool
    await pool.close()


@pytest.fixture
def schema() -> str:
    return f"mig_{uuid.uuid4().hex[:10]}"


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


async def test_migrations_apply_once_in_order(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_items.sql", f"CREATE TABLE {schema}.items (id int PRIMARY KEY);")
    write(tmp_path, "0002_name.sql", f"ALTER TABLE {schema}.items ADD COLUMN name text;")
    async with pool.acquire() as conn:
        assert await migrate(conn, schema, tmp_path) == [1, 2]
        assert await migrate(conn, schema, tmp_path) == []
        await conn.execute(f"INSERT INTO {schema}.items VALUES (1, 'a')")
        rows = await conn.fetch(f"SELECT version, name FROM {schema}.schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in rows] == [(1, "items"), (2, "name")]


async def test_concurrent_starts_apply_each_migration_once(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    # The first migration waits at a barrier the test holds (an advisory lock), before
    # a CREATE TABLE that would fail if it ran twice. With four replicas started
    # together, exactly one may reach the barrier while the others wait their turn on
    # the migration lock; without that lock all four would wait at the barrier.
    barrier = 7_340_033
    write(
        tmp_path,
        "0001_items.sql",
        f"SELECT pg_advisory_xact_lock({barrier}); CREATE TABLE {schema}.items (id int);",
    )
    write(tmp_path, "0002_more.sql", f"CREATE TABLE {schema}.more (id int);")
    app = f"replica-{schema}"

    async def one_replica() -> list[int]:
        conn = await asyncpg.connect(database_url, server_settings={"application_name": app})
        try:
            return await migrate(conn, schema, tmp_path)
        finally:
            await conn.close()

    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", barrier)
        replicas = asyncio.gather(*(one_replica() for _ in range(4)))
        waiting: list[asyncpg.Record] = []
        async with asyncio.timeout(30):
            while len(waiting) < 4:  # every replica blocked on some lock
                waiting = await holder.fetch(
                    "SELECT l.locktype, l.classid, l.objid FROM pg_stat_activity a "
                    "JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
                    "WHERE a.application_name = $1",
                    app,
                )
                await asyncio.sleep(0.01)
        at_barrier = [
            w
            for w in waiting
            if (w["locktype"], w["classid"], w["objid"]) == ("advisory", 0, barrier)
        ]
        assert len(at_barrier) == 1
        await holder.execute("SELECT pg_advisory_unlock($1)", barrier)
        results = await replicas
    finally:
        await holder.close()
    assert sorted(results) == [[], [], [], [1, 2]]


async def test_a_changed_applied_migration_is_refused(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_items.sql", f"CREATE TABLE {schema}.items (id int);")
    async with pool.acquire() as conn:
        await migrate(conn, schema, tmp_path)
        write(tmp_path, "0001_items.sql", f"CREATE TABLE {schema}.items (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, schema, tmp_path)


async def test_a_failing_migration_leaves_nothing_behind(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_items.sql", f"CREATE TABLE {schema}.items (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE oops (;")
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await migrate(conn, schema, tmp_path)
        exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.items")
    assert exists is None


def test_misnamed_and_duplicate_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a", "1_items.sql", "")
    with pytest.raises(MigrationError, match=r"NNNN_description\.sql"):
        load_migrations(tmp_path / "a")
    write(tmp_path / "b", "0001_items.sql", "")
    write(tmp_path / "b", "0001_other.sql", "")
    with pytest.raises(MigrationError, match="used twice"):
        load_migrations(tmp_path / "b")
