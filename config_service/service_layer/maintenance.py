"""History retention: compaction of old revisions and expiry of idempotency records."""

from __future__ import annotations

import asyncio
import logging

from config_service import metrics
from config_service.adapters import postgres as pg

log = logging.getLogger(__name__)

# One replica compacts at a time; the others skip the round.
_LOCK_KEY = 0x434F4E4649475F43  # "CONFIG_C"


async def compact_organization(store: pg.ConfigStore, organization: str, keep: int) -> int:
    """Drops the organization's history older than its last ``keep`` revisions.

    Returns:
        The revision history is now compacted through (0 when nothing was dropped).
    """
    async with store.transaction(organization) as conn:
        revision, compacted = await pg.read_revision(conn, organization)
        through = revision - keep
        if through <= compacted:
            return 0
        await pg.compact(conn, organization, through)
        return through


async def compact_all(
    store: pg.ConfigStore, keep: int, request_ttl_hours: float, client_grace: float = 30.0
) -> None:
    """One maintenance round over every organization, by one replica at a time:
    history beyond ``keep`` revisions (0: kept), request records older than
    ``request_ttl_hours``, clients not heard from for ``client_grace`` seconds."""
    async with store.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            return
        try:
            for organization in await store.known_organizations() if keep > 0 else []:
                through = await compact_organization(store, organization, keep)
                if through:
                    log.info(
                        "compacted history",
                        extra={"organization": organization, "through": through},
                    )
            await conn.execute(
                "DELETE FROM config.requests WHERE created_at < now() - make_interval(hours => $1)",
                request_ttl_hours,
            )
            await conn.execute(
                "DELETE FROM config.clients WHERE last_seen < now() - make_interval(secs => $1)",
                client_grace,
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def run_maintenance(
    store: pg.ConfigStore,
    *,
    keep: int,
    interval: float,
    request_ttl_hours: float = 24.0,
    client_grace: float = 30.0,
) -> None:
    """Runs :func:`compact_all` every ``interval`` seconds forever (``keep`` 0: history
    is never compacted; the rest is still expired), and drops this replica's usage
    gauges of organizations purged meanwhile."""
    while True:
        await asyncio.sleep(interval)
        try:
            # Every replica: usage series of organizations purged (by any replica).
            metrics.keep_usage_of(frozenset(await store.known_organizations()))
            await compact_all(store, keep, request_ttl_hours, client_grace)
        except Exception:
            log.exception("history maintenance failed")
