"""Shared set-up of the benchmarks: a scratch database, keys, percentiles."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from servicekit.devstack import postgres_server, redis_server, scratch_database
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
    with (
        postgres_server(folder / "postgres", try_local=True) as server,
        scratch_database(server, "agentready_bench") as database_url,
        redis_server(folder / "redis", try_local=True) as redis_url,
    ):
        keys = Keys(folder)
        yield (
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "GRPC_HOST": "127.0.0.1",
                "GRPC_PORT": "0",
                "METRICS_PORT": "0",
                "JWT_JWKS_FILE": str(keys.jwks_file),
                "LOG_LEVEL": "WARNING",
                "CONFIG_CHANNEL_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
                "DB_POOL_MAX": "20",
                # The fan-out and idle-stream benchmarks hold thousands of streams of
                # one token and one organization.
                "MAX_STREAMS_PER_TOKEN": "1000000",
                "MAX_STREAMS_PER_ORGANIZATION": "1000000",
            },
            keys,
        )
