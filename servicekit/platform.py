"""The platform's own configuration, hot in every server's memory.

Operators keep platform-wide settings in ConfigService itself, in the reserved
organization ``PLATFORM_ORGANIZATION`` (default ``platform``), service ``platform``:

* ``api.rate_limit``: the request rate every organization gets, JSON
  ``{"rps": 50, "burst": 100}`` (unset: no limit); ``api.rate_limit.<slug>`` overrides
  it for one organization (``{"rps": 0}``: no limit for it).
* ``limits``: per-organization limits of TenantService, JSON such as
  ``{"projects": 100, "notes": 10000, "members": 100, "service_account_keys": 100}``;
  ``limits.<slug>`` overrides single fields for one organization.

Every server holds one :class:`~agentready.AsyncConfigWatcher` on that organization (we
use our own SDK, as a pod would), so a change applies within milliseconds, without a
restart. While the watcher has nothing (ConfigService unreachable at start), the
defaults apply: no rate limit, the built-in limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from agentready import AsyncConfigWatcher, ConfigEvent

log = logging.getLogger(__name__)

SERVICE = "platform"
RATE_LIMIT_KEY = "api.rate_limit"
LIMITS_KEY = "limits"


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """A sustained rate with a burst: ``rps`` requests per second, up to ``burst`` at once."""

    rps: float
    burst: int


def parse_rate_limit(value: Any) -> RateLimit | None:
    """A rate limit from its JSON form; None for "no limit" or a malformed value."""
    if not isinstance(value, Mapping):
        return None
    rps = value.get("rps")
    if isinstance(rps, bool) or not isinstance(rps, int | float):
        return None
    if not math.isfinite(rps) or rps <= 0:
        return None
    burst = value.get("burst", max(1, math.ceil(rps)))
    if isinstance(burst, bool) or not isinstance(burst, int | float) or burst < 1:
        burst = max(1, math.ceil(rps))
    return RateLimit(float(rps), int(burst))


class FileToken:
    """A bearer token read from a file at each use (Kubernetes projected tokens and
    secrets are rotated in place)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __call__(self) -> str:
        try:
            return self._path.read_text().strip()
        except OSError as exc:
            log.warning("cannot read the platform token file %s: %s", self._path, exc)
            return ""


class PlatformConfig:
    """The platform organization's configuration, kept current by a watcher.

    Args:
        organization: the reserved platform organization's slug.
        target: ConfigService's address (set later for ConfigService itself).
        token: bearer token provider; None disables the watcher (defaults apply).
        connect: opens a channel to a target (plaintext or TLS, per the settings).
    """

    def __init__(
        self,
        organization: str,
        *,
        target: str,
        token: Callable[[], str] | None,
        connect: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        self.organization = organization
        self._connect = connect
        self._channel: grpc.aio.Channel | None = None
        self.target = target
        self.token = token
        self._watcher: AsyncConfigWatcher | None = None
        self._rate_limits: dict[str, RateLimit | None] = {}
        self._values: dict[str, Any] = {}
        self.revision = 0
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        """Starts watching (returns at once; values arrive when ConfigService answers)."""
        if self.token is None:
            log.info("no platform token: rate limits off, built-in organization limits")
            return
        self._channel = self._connect(self.target)
        self._watcher = AsyncConfigWatcher(
            None,
            self.organization,
            channel=self._channel,
            token=self.token,
            services=[SERVICE],
            backoff_max=5.0,
            on_change=self._on_change,
        )
        with contextlib.suppress(TimeoutError):
            await self._watcher.start(timeout=0)

    @property
    def live(self) -> bool:
        """Whether the watcher holds a stream (or there is no watcher at all)."""
        watcher = self._watcher
        return watcher is None or watcher.connected

    async def stop(self) -> None:
        """Stops watching."""
        if self._watcher is not None:
            await self._watcher.stop()
        if self._channel is not None:
            await self._channel.close()

    def _on_change(self, event: ConfigEvent) -> None:
        self._rate_limits = {}
        self._values = {}
        self.revision = event.revision
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_revision(self, revision: int) -> None:
        """Returns once the values of ``revision`` (or later) are in force (for tests
        and tools: read-your-writes on the platform's settings)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.revision >= revision)

    def get(self, key: str) -> Any:
        """A platform value (plain Python), or None when unset or not yet known."""
        if key not in self._values:
            watcher = self._watcher
            self._values[key] = watcher.get(SERVICE, key) if watcher is not None else None
        return self._values[key]

    def rate_limit(self, organization: str) -> RateLimit | None:
        """The request rate limit of ``organization`` (None: unlimited)."""
        try:
            return self._rate_limits[organization]
        except KeyError:
            pass
        own = self.get(f"{RATE_LIMIT_KEY}.{organization}")
        limit = parse_rate_limit(own if own is not None else self.get(RATE_LIMIT_KEY))
        if len(self._rate_limits) > 100_000:
            self._rate_limits.clear()
        self._rate_limits[organization] = limit
        return limit

    def limits(self, organization: str) -> dict[str, int]:
        """Per-organization limits that are set (platform-wide, then the
        organization's own), as whole numbers."""
        merged: dict[str, int] = {}
        for key in (LIMITS_KEY, f"{LIMITS_KEY}.{organization}"):
            value = self.get(key)
            if isinstance(value, Mapping):
                for name, number in value.items():
                    # JSON numbers arrive as floats (protobuf's Value): take whole ones.
                    if (
                        isinstance(number, int | float)
                        and not isinstance(number, bool)
                        and math.isfinite(number)
                        and number >= 0
                        and float(number).is_integer()
                    ):
                        merged[str(name)] = int(number)
        return merged
