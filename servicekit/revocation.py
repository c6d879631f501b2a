"""Token revocation that reaches every service within a second, with no call per request.

TenantService is the only writer. It records each revocation in PostgreSQL (its source
of truth) and publishes it to Redis in one ``MULTI``:

* the hash ``<prefix>:revocations`` holds every revocation still in force, field → the
  epoch second it lapses (``jti:<token id>`` until the token would have expired anyway;
  ``org:<slug>`` for an organization being deleted, until its last token has expired);
* the stream ``<prefix>:revocations:log`` carries the same entries as they happen.

Every server keeps a :class:`RevocationList` in memory: it loads the hash, then follows
the stream with a blocking ``XREAD`` (so a revocation lands in milliseconds), and loads
the hash again every ``resync_seconds`` and after every Redis outage (so an entry
missed while trimming or disconnected is picked up). The verifier asks the list on
every call: a dictionary lookup, no network. With Redis down the list keeps what it had
(tokens live 15 minutes); TenantService re-publishes its table once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from servicekit.auth import Principal

log = logging.getLogger(__name__)

REVOCATIONS_LOADED = Gauge(
    "agentready_revocations", "Token revocations in force held in memory by this server."
)
REVOCATION_SYNC_ERRORS = Counter(
    "agentready_revocation_sync_errors_total",
    "Failed attempts to read token revocations from Redis.",
)
STREAM_MAXLEN = 100_000


def jti_key(token_id: str) -> str:
    """The revocation key of one token."""
    return f"jti:{token_id}"


def organization_key(organization: str) -> str:
    """The revocation key of every token scoped to an organization."""
    return f"org:{organization}"


class RevocationList:
    """Revocations in force, kept current from Redis; ``revoked()`` never blocks.

    Args:
        redis: the shared client.
        prefix: key prefix (``<prefix>:revocations``).
        resync_seconds: how often the whole list is re-read as a safety net.
        block_seconds: how long one ``XREAD`` waits for news.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "agentready",
        resync_seconds: float = 30.0,
        block_seconds: float = 1.0,
        clock: Any = time.time,
    ) -> None:
        self._redis = redis
        self.hash_key = f"{prefix}:revocations"
        self.stream_key = f"{prefix}:revocations:log"
        self._resync = resync_seconds
        self._block_ms = max(1, int(block_seconds * 1000))
        self._clock = clock
        self._until: dict[str, float] = {}
        # Called with the keys of revocations as they arrive (e.g. to end open streams).
        self.listeners: list[Callable[[Iterable[str]], None]] = []
        self.loaded = asyncio.Event()
        # Rises each time an update was applied: tests and tools wait on it.
        self.applied = 0
        self._changed = asyncio.Condition()

    # -- the check ----------------------------------------------------------------------

    def revoked(self, principal: Principal) -> bool:
        """Whether ``principal``'s token is revoked (its id, or its organization)."""
        now = self._clock()
        for key in (
            jti_key(principal.token_id),
            organization_key(principal.organization) if principal.organization else None,
        ):
            if key is None:
                continue
            until = self._until.get(key)
            if until is not None and until > now:
                return True
        return False

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        return until is not None and until > self._clock()

    def add_local(self, entries: Mapping[str, float]) -> None:
        """Applies revocations made by this very process at once, before Redis echoes."""
        self._apply(entries)

    def _apply(self, entries: Mapping[str, float]) -> None:
        for key, until in entries.items():
            if until > self._until.get(key, 0.0):
                self._until[key] = until
        REVOCATIONS_LOADED.set(len(self._until))
        self._tell(entries)

    def _tell(self, keys: Iterable[str]) -> None:
        now = self._clock()
        live = [key for key in keys if self._until.get(key, 0.0) > now]
        if live:
            for listener in self.listeners:
                listener(live)

    # -- following Redis ----------------------------------------------------------------

    async def wait_applied(self, count: int) -> None:
        """Returns once at least ``count`` updates have been applied (for tests)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.applied >= count)

    async def _bump(self) -> None:
        async with self._changed:
            self.applied += 1
            self._changed.notify_all()

    async def _load_all(self) -> bytes:
        """Re-reads the hash; returns the stream position to follow from."""
        last: Any = await self._redis.xrevrange(self.stream_key, count=1)
        position: bytes = last[0][0] if last else b"0-0"
        raw: Any = await self._redis.hgetall(self.hash_key)
        now = self._clock()
        fresh = {k.decode(): float(v) for k, v in raw.items()}
        self._until = {k: v for k, v in fresh.items() if v > now}
        REVOCATIONS_LOADED.set(len(self._until))
        self._tell(list(self._until))
        self.loaded.set()
        await self._bump()
        return position

    async def run(self) -> None:
        """Follows Redis forever (a background task); survives Redis outages."""
        delay = 0.1
        while True:
            try:
                position = await self._load_all()
                next_resync = time.monotonic() + self._resync
                delay = 0.1
                while time.monotonic() < next_resync:
                    reply: Any = await self._redis.xread(
                        {self.stream_key: position}, block=self._block_ms, count=1000
                    )
                    for _stream, messages in reply or ():
                        batch: dict[str, float] = {}
                        for message_id, fields in messages:
                            position = message_id
                            key, until = fields.get(b"key"), fields.get(b"until")
                            if key is not None and until is not None:
                                batch[key.decode()] = float(until)
                        self._apply(batch)
                        await self._bump()
                self._prune()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                REVOCATION_SYNC_ERRORS.inc()
                log.warning("cannot read token revocations from Redis: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _prune(self) -> None:
        now = self._clock()
        self._until = {k: v for k, v in self._until.items() if v > now}
        REVOCATIONS_LOADED.set(len(self._until))


async def publish(redis: aioredis.Redis, entries: Mapping[str, float], *, prefix: str) -> None:
    """Writes revocations to Redis (the hash and the stream, atomically).

    Raises:
        RedisError, OSError: Redis is unreachable; the caller keeps them in PostgreSQL
            and publishes them again later.
    """
    if not entries:
        return
    hash_key, stream_key = f"{prefix}:revocations", f"{prefix}:revocations:log"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(hash_key, mapping={k: repr(v) for k, v in entries.items()})
        for key, until in entries.items():
            pipe.xadd(
                stream_key,
                {"key": key, "until": repr(until)},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        await pipe.execute()


async def prune(redis: aioredis.Redis, keys: Iterable[str], *, prefix: str) -> None:
    """Drops lapsed revocations from the hash."""
    fields = list(keys)
    if fields:
        with contextlib.suppress(RedisError, OSError):
            await redis.hdel(f"{prefix}:revocations", *fields)
