"""Leadership: one replica of a service runs its reconcile loop at a time.

The leader holds a PostgreSQL session advisory lock on a dedicated connection (never a
pooled one, which could be handed to other work or reset). PostgreSQL releases the lock
the moment that connection ends, so a crashed or partitioned leader loses leadership by
itself; the replica notices on its next check (or at once, through the connection's
termination callback) and stops reconciling, and another replica takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time

import asyncpg

log = logging.getLogger(__name__)

LEADER_LOCK_NAME = "agentready:provisioner:leader"


def leader_lock_key(name: str = LEADER_LOCK_NAME) -> int:
    """A stable signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LeaderLock:
    """Tries to become, and checks it still is, the leader.

    Args:
        dsn: PostgreSQL URL; the lock lives on its own connection to it.
        key: advisory lock key (one per deployment sharing a database).
        timeout: seconds for connecting and for each check.
        cooldown: after losing leadership, seconds before competing again, so a
            replica with a flaky connection hands over instead of flapping.
    """

    def __init__(
        self,
        dsn: str,
        *,
        key: int | None = None,
        timeout: float = 5.0,
        cooldown: float = 1.0,
        application_name: str = "agentready-provisioner-leader",
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._key = leader_lock_key() if key is None else key
        self._timeout = timeout
        self._cooldown = cooldown
        self._conn: asyncpg.Connection | None = None
        self._held = False
        self._compete_after = 0.0
        # Times this replica asked PostgreSQL for the lock or confirmed holding it (not
        # counting checks skipped during the cooldown): lets operators and tests see
        # that a replica competed, not just that time passed.
        self.attempts = 0

    @property
    def held(self) -> bool:
        """Whether this replica is the leader, as far as it last knew."""
        return self._held and self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL's process id of the lock connection (for operators and tests)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def check(self) -> bool:
        """Confirms leadership or tries to take it; returns whether this replica leads."""
        if not self._held and time.monotonic() < self._compete_after:
            return False
        if self._conn is not None and not self._conn.is_closed():
            self.attempts += 1
            try:
                if self._held:
                    await self._conn.fetchval("SELECT 1", timeout=self._timeout)
                    return True
                self._held = bool(
                    await self._conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._timeout
                    )
                )
                if self._held:
                    log.info("became the reconcile leader")
                return self._held
            except Exception as exc:
                # Whatever went wrong on the lock connection (a terminated backend can
                # also surface as an asyncpg client-state error), leadership is no
                # longer certain: give it up and drop the connection, which releases
                # the lock on the server if it still held it.
                self._lost(f"lock connection failed: {exc!r}")
                await self._drop()
        try:
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                server_settings={"application_name": self._application_name},
            )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("cannot reach PostgreSQL for the leader lock: %s", exc)
            return False
        self._conn.add_termination_listener(lambda _conn: self._lost("lock connection closed"))
        return await self.check()

    def _lost(self, why: str) -> None:
        if self._held:
            log.warning("lost reconcile leadership: %s", why)
            self._compete_after = time.monotonic() + self._cooldown
        self._held = False

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def release(self) -> None:
        """Gives leadership up (closing the connection releases the lock)."""
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=self._timeout)
            except (asyncpg.PostgresError, OSError, TimeoutError):
                conn.terminate()
