"""The Redis connection: notifications, denylists and counters, never the only copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 15,
    "decode_responses": False,
}


def connect_redis(
    url: str,
    *,
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
    sentinel_password: str | None = None,
) -> aioredis.Redis:
    """A lazily connecting client; Redis being down does not stop a server starting.

    Correctness never depends on Redis (DESIGN.md invariant 4), so callers treat its
    errors as "fall back", not as failures of their own.

    With ``sentinels`` the client asks them where the master ``sentinel_master`` is, on
    every new connection, and drops its connections when the master it reached turns
    out to be a replica after a failover; ``url`` then gives only the credentials, the
    database and TLS (``rediss://``), not the host.
    """
    if not sentinels:
        return aioredis.Redis.from_url(url, **_OPTIONS)
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    connection: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(database) if database.isdigit() else 0,
        **_OPTIONS,
    }
    if parts.scheme == "rediss":
        connection["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(sentinels),
        sentinel_kwargs={
            "password": sentinel_password,
            "socket_connect_timeout": _OPTIONS["socket_connect_timeout"],
            "socket_timeout": _OPTIONS["socket_timeout"],
        },
        **connection,
    )
    client: aioredis.Redis = sentinel.master_for(sentinel_master, redis_class=aioredis.Redis)
    return client
