"""Per-organization request rate limits, the same for every service.

The limit of an organization comes from the platform configuration (see
:mod:`servicekit.platform`), hot-reloaded. Enforcement is GCRA (the generic cell rate
algorithm: a token bucket kept as one timestamp) in one Lua script on Redis, one round
trip per call, shared by all replicas of all services. An organization without a limit
costs nothing: no Redis call.

Redis down must not become an outage: each process then applies the same limit on its
own (in memory, per replica), logs the switch once, counts it in
``agentready_rate_limit_fallback_total``, and goes back to Redis when it answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from servicekit.errors import ResourceExhausted
from servicekit.platform import RateLimit

log = logging.getLogger(__name__)

RATE_LIMITED = Counter(
    "agentready_rate_limited_total", "Calls refused because their organization was over its rate."
)
RATE_LIMIT_FALLBACK = Counter(
    "agentready_rate_limit_fallback_total",
    "Calls rate-limited in memory because Redis did not answer.",
)

# KEYS[1]: the organization's key. ARGV: emission interval (ms per request), burst.
# Returns {allowed (1/0), milliseconds until the call would be allowed}.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""


class RateLimiter:
    """Checks calls of an organization against its rate limit.

    Args:
        redis: the shared client.
        limit_of: the organization's current limit (None: unlimited).
        prefix: key prefix (``<prefix>:rate:<organization>``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        limit_of: Callable[[str], RateLimit | None],
        *,
        prefix: str = "agentready",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._limit_of = limit_of
        self._prefix = prefix
        self._script: Any = redis.register_script(_GCRA)
        self._clock = clock
        self._local: dict[str, float] = {}  # organization -> theoretical arrival (s)
        self._degraded = False

    async def check(self, organization: str) -> None:
        """Counts one call of ``organization``.

        Raises:
            ResourceExhausted: over the limit (reason RATE_LIMITED, with RetryInfo).
        """
        limit = self._limit_of(organization)
        if limit is None:
            return
        interval_ms = 1000.0 / limit.rps
        try:
            allowed, wait_ms = await self._script(
                keys=[f"{self._prefix}:rate:{organization}"],
                args=[repr(interval_ms), limit.burst],
            )
            if self._degraded:
                log.info("rate limits back on Redis")
                self._degraded = False
        except (RedisError, OSError) as exc:
            if not self._degraded:
                log.warning("rate limits fall back to memory, Redis does not answer: %s", exc)
                self._degraded = True
            RATE_LIMIT_FALLBACK.inc()
            allowed, wait_ms = self._local_check(organization, limit)
        if not allowed:
            RATE_LIMITED.inc()
            raise ResourceExhausted(
                f"organization {organization!r} is over its rate limit of {limit.rps:g} "
                f"requests per second (burst {limit.burst})",
                reason="RATE_LIMITED",
                retry_after_seconds=max(wait_ms, 1) / 1000.0,
                metadata={
                    "organization": organization,
                    "rps": f"{limit.rps:g}",
                    "burst": str(limit.burst),
                },
            )

    def _local_check(self, organization: str, limit: RateLimit) -> tuple[int, int]:
        """The same algorithm in memory (per process)."""
        now = self._clock()
        interval = 1.0 / limit.rps
        tat = max(self._local.get(organization, now), now)
        new_tat = tat + interval
        allow_at = new_tat - limit.burst * interval
        if allow_at > now:
            return 0, math.ceil((allow_at - now) * 1000)
        self._local[organization] = new_tat
        if len(self._local) > 100_000:
            self._local = {k: v for k, v in self._local.items() if v > now}
        return 1, 0
