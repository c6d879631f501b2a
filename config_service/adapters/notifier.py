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
        """Sends queued notifications, several per round trip when they pile up."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 500:
                batch.append(self._outbox.get_nowait())
            try:
                if len(batch) == 1:  # the common case: skip the pipeline's set-up
                    organization, revision = batch[0]
                    await self._redis.publish(self._prefix + organization, str(revision))
                else:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for organization, revision in batch:
                            pipe.publish(self._prefix + organization, str(revision))
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                # Subscribers learn of these revisions by polling PostgreSQL.
                log.debug("dropped %d notifications: %s", len(batch), exc)

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
