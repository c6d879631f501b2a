"""Change notifications over Redis pub/sub: (organization, revision), never values.

Each replica publishes after its own commits and subscribes once, with one pattern
subscription, to every organization's channel. Redis is an accelerator only: when it
is down, publishing drops the message (nothing waits on it), the subscriber reports
the outage so the hub polls PostgreSQL fast, and it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Notifier:
    """Publishes and receives ``<prefix>:config:<organization>`` → ``<revision>``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        on_revision: Callable[[str, int], None],
        on_health: Callable[[bool], None],
        queue_size: int = 10_000,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:config:"
        self._on_revision = on_revision
        self._on_health = on_health
        self._outbox: asyncio.Queue[tuple[str, int]] = asyncio.Queue(queue_size)

    def publish(self, organization: str, revision: int) -> None:
        """Queues a notification; never waits (dropped when the outbox is full)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait((organization, revision))

    async def run_publisher(self) -> None:
        """Sends queued notifications, several per round trip when they pile up.

        Notifications that pile up for one organization collapse into its latest
        revision: a subscriber reads every revision up to the one it is told of, so
        the earlier ones would only cost every replica a message to parse.
        """
        while True:
            organization, revision = await self._outbox.get()
            latest = {organization: revision}
            while not self._outbox.empty() and len(latest) < 500:
                organization, revision = self._outbox.get_nowait()
                latest[organization] = max(revision, latest.get(organization, 0))
            try:
                if len(latest) == 1:  # the common case: skip the pipeline's set-up
                    ((organization, revision),) = latest.items()
                    await self._redis.publish(self._prefix + organization, str(revision))
                else:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for organization, revision in latest.items():
                            pipe.publish(self._prefix + organization, str(revision))
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                # Subscribers learn of these revisions by polling PostgreSQL.
                log.debug("dropped %d notifications: %s", len(latest), exc)

    async def run_subscriber(self) -> None:
        """Receives notifications forever, reconnecting with backoff and jitter."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._prefix + "*")
                self._on_health(True)
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    try:
                        revision = int(message["data"])
                    except (TypeError, ValueError):
                        continue
                    self._on_revision(channel[len(self._prefix) :], revision)
                raise ConnectionError("the subscription ended")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("Redis subscription lost: %s", exc)
                self._on_health(False)
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
