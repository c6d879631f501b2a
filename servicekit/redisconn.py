"""The Redis connection: notifications, denylists and counters, never the only copy."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect_redis(url: str) -> aioredis.Redis:
    """A lazily connecting client; Redis being down does not stop a server starting.

    Correctness never depends on Redis (DESIGN.md invariant 4), so callers treat its
    errors as "fall back", not as failures of their own.
    """
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        decode_responses=False,
    )
