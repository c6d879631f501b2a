"""The leader lock gives leadership up whenever its connection misbehaves, so two
replicas never both believe they lead (a terminated backend once surfaced as an asyncpg
client-state error that was not caught: the old leader kept believing)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg

from servicekit.leader import LeaderLock, leader_lock_key


async def test_any_lock_connection_failure_gives_up_leadership(database_url: str) -> None:
    key = leader_lock_key(f"test-{uuid.uuid4().hex}")
    first, second = LeaderLock(database_url, key=key), LeaderLock(database_url, key=key)
    try:
        assert await first.check()
        assert not await second.check()

        # Leave the connection busy, as a cut-off operation can: the next check's query
        # then fails with a client-side error rather than a PostgreSQL one. The busy
        # query waits on a lock the test holds, so it stays in flight until released.
        conn: Any = first._conn
        pid = first.backend_pid
        blocker = f"test-busy-{uuid.uuid4().hex}"
        holder = await asyncpg.connect(database_url)
        try:
            await holder.execute("SELECT pg_advisory_lock(hashtext($1))", blocker)
            busy = asyncio.create_task(
                conn.fetchval("SELECT pg_advisory_lock(hashtext($1))", blocker)
            )
            deadline = asyncio.get_running_loop().time() + 10
            while not await holder.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
            ):
                assert asyncio.get_running_loop().time() < deadline, "the query never waited"
                await asyncio.sleep(0.01)
            assert not await first.check()
            assert not first.held
        finally:
            await holder.close()
        with contextlib.suppress(BaseException):
            await busy
        # The lock goes with the dropped connection (once its backend notices), and
        # the other replica takes it.
        deadline = asyncio.get_running_loop().time() + 10
        while not await second.check():
            assert asyncio.get_running_loop().time() < deadline, "the lock was never released"
            await asyncio.sleep(0.05)
        assert second.held
        assert not first.held
    finally:
        await first.release()
        await second.release()
