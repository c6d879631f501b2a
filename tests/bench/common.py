"""Shared set-up of the benchmarks: a scratch database, keys, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from servicekit.devstack import EmbeddedPostgres, EmbeddedRedis, port_open
from tests.conftest import Keys


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@contextlib.contextmanager
def bench_environment() -> Iterator[tuple[dict[str, str], Keys]]:
    """Environment for servers under benchmark: a scratch database, Redis, keys."""
    folder = Path(tempfile.mkdtemp(prefix="agentready-bench-"))
    stops = []
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        if port_open("127.0.0.1", 5432):
            server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            postgres = EmbeddedPostgres(folder / "postgres")
            server_url = postgres.start()
            stops.append(postgres.stop)
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        if port_open("127.0.0.1", 6379):
            redis_url = "redis://127.0.0.1:6379/0"
        else:
            redis = EmbeddedRedis(folder / "redis")
            redis_url = redis.start()
            stops.append(redis.stop)
    name = f"agentready_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    keys = Keys(folder)
    env = {
        "DATABASE_URL": urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")),
        "REDIS_URL": redis_url,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "JWT_JWKS_FILE": str(keys.jwks_file),
        "LOG_LEVEL": "WARNING",
        "CONFIG_CHANNEL_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        "DB_POOL_MAX": "20",
    }
    try:
        yield env, keys
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        for stop in reversed(stops):
            stop()
