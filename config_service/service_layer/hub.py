"""The fan-out hub: one per replica, between PostgreSQL and the local watch streams.

For each organization with at least one local stream the hub keeps a *feed*: the last
revision it fanned out and the highest revision it knows exists. Notifications (from
this replica's own writes, from Redis, or from the poller) only raise that target; one
task per feed then reads the missing revisions from PostgreSQL once, in order, and
offers each to every stream of the organization from memory. Never a query per watcher.
This replica's own writes hand their committed revision over whole (they made it), so
a revision written here reaches the local streams without being read back; Redis
messages and polls are hints, and what they announce is always read from PostgreSQL.

Gaps fill themselves: a lost notification leaves the target behind, and the next one
(or the poller, every ``poll_interval``; faster while Redis is down) raises it past
the gap, which is then read from PostgreSQL like any other revision.

Streams never slow the hub down: each has a bounded queue; one that overflows is closed
(the SDK resumes from its last revision) and the others go on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import Callable
from typing import Any

from config_service import metrics
from config_service.adapters import postgres as pg
from config_service.domain.model import Event

log = logging.getLogger(__name__)

# Builds what a stream with the given service filter receives for an event; None when
# the event has nothing for that filter. Called once per (event, filter), not per stream.
Encode = Callable[[Event, frozenset[str] | None], Any]

OVERFLOW: Any = object()
RESET: Any = object()
SHUTDOWN: Any = object()
PROGRESS: Any = object()


class Watcher:
    """One stream's registration: its filter, its bounded mailbox and its pace.

    The mailbox is a deque with one waiter rather than an ``asyncio.Queue``: with a
    thousand streams on an organization, every microsecond per stream and revision
    shows in the time until the last pod has the change.
    """

    __slots__ = (
        "_closed",
        "_items",
        "_loop",
        "_waiter",
        "capacity",
        "last_sent",
        "organization",
        "progress_interval",
        "services",
    )

    def __init__(
        self,
        organization: str,
        services: frozenset[str] | None,
        capacity: int,
        progress_interval: float,
    ) -> None:
        self.organization = organization
        self.services = services
        self.capacity = capacity
        self.progress_interval = progress_interval
        self._loop = asyncio.get_running_loop()
        self.last_sent = self._loop.time()
        # Items: (revision, its messages or None when filtered out), or one of the markers.
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Items queued and not yet taken by the stream."""
        return len(self._items)

    def offer(self, item: Any) -> bool:
        """Queues ``item`` without waiting; False (and the stream closed) when full."""
        if self._closed:
            return False
        if len(self._items) >= self.capacity:
            self.close(OVERFLOW)
            metrics.WATCH_OVERFLOWS.inc()
            return False
        self._put(item)
        return True

    def close(self, why: Any) -> None:
        """Ends the stream: drops what is queued, leaves ``why`` as its last item."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._put(why)

    def _put(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        """The next item, waiting for one if need be."""
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class _Feed:
    __slots__ = ("known", "organization", "ready", "revision", "target", "task", "watchers")

    def __init__(self, organization: str) -> None:
        self.organization = organization
        self.watchers: set[Watcher] = set()
        self.revision = 0
        self.target = 0
        # Revisions above ``revision`` committed by this replica, whole: fanned out
        # without a read when their turn comes.
        self.known: dict[int, Event] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None


class Hub:
    """Fans committed revisions out to this replica's watch streams."""

    def __init__(
        self,
        store: pg.ConfigStore,
        encode: Encode,
        *,
        queue_capacity: int = 1024,
        poll_interval: float = 1.0,
        fallback_poll_interval: float = 0.2,
        batch_revisions: int = 500,
    ) -> None:
        self._store = store
        self._encode = encode
        self._capacity = queue_capacity
        self._poll_interval = poll_interval
        self._fallback_poll_interval = fallback_poll_interval
        self._batch = batch_revisions
        self._feeds: dict[str, _Feed] = {}
        self._wake_poller = asyncio.Event()
        # Until the Redis subscription is confirmed, poll PostgreSQL fast.
        self.fallback = True
        metrics.FALLBACK_MODE.set(1)

    @property
    def organizations(self) -> list[str]:
        """Organizations with at least one local stream."""
        return list(self._feeds)

    async def watch(
        self,
        organization: str,
        services: frozenset[str] | None,
        *,
        progress_interval: float = 5.0,
    ) -> Watcher:
        """Registers a stream. Everything committed after this returns reaches it.

        The caller reads its initial state (snapshot or replay) after this, at a
        revision R, and skips queued items at or below R: no gap, no duplicate.
        """
        watcher = Watcher(organization, services, self._capacity, progress_interval)
        feed = self._feeds.get(organization)
        if feed is None:
            feed = _Feed(organization)
            self._feeds[organization] = feed
            feed.watchers.add(watcher)
            try:
                async with self._store.single() as conn:
                    feed.revision, _ = await pg.revision_of(conn, organization)
                feed.target = max(feed.target, feed.revision)
                feed.ready.set_result(None)
            except BaseException as exc:
                if self._feeds.get(organization) is feed:
                    del self._feeds[organization]
                feed.ready.set_exception(exc)
                feed.ready.exception()  # retrieved: streams waiting on it get it too
                raise
            if feed.target > feed.revision:
                self._start(feed)
        else:
            feed.watchers.add(watcher)
            await asyncio.shield(feed.ready)
        metrics.WATCH_STREAMS.inc()
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """Unregisters a stream; the feed goes when its last stream does."""
        feed = self._feeds.get(watcher.organization)
        if feed is None or watcher not in feed.watchers:
            return
        feed.watchers.discard(watcher)
        metrics.WATCH_STREAMS.dec()
        if not feed.watchers:
            del self._feeds[watcher.organization]
            if feed.task is not None:
                feed.task.cancel()

    def notify(self, organization: str, revision: int) -> None:
        """Revision ``revision`` of ``organization`` is committed; fan it out (non-blocking)."""
        feed = self._feeds.get(organization)
        if feed is not None:
            self._raise(feed, revision)

    def committed(self, event: Event) -> None:
        """This replica committed ``event``: fan it out in its turn, as it is (non-blocking)."""
        feed = self._feeds.get(event.organization)
        if feed is None:
            return
        # Kept once the feed knows where it starts (before, the revision it starts
        # from may already include this one, which would then wait unused).
        if feed.ready.done() and event.revision > feed.revision and len(feed.known) < self._batch:
            feed.known[event.revision] = event
        self._raise(feed, event.revision)

    def _raise(self, feed: _Feed, revision: int) -> None:
        """Raises the feed's target to ``revision``; catches up unless a catch-up is
        under way (also when the target did not move: the last catch-up may have
        failed short of it, and this notification is the next attempt)."""
        feed.target = max(feed.target, revision)
        if feed.target > feed.revision and feed.ready.done():
            self._start(feed)

    def _start(self, feed: _Feed) -> None:
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(self._catch_up(feed), name=f"feed:{feed.organization}")

    async def _catch_up(self, feed: _Feed) -> None:
        try:
            while feed.target > feed.revision and self._feeds.get(feed.organization) is feed:
                event = feed.known.pop(feed.revision + 1, None)
                if event is not None:  # committed here: no need to read it back
                    self._fan_out(feed, event)
                    feed.revision = event.revision
                    continue
                upto = min(feed.target, feed.revision + self._batch)
                async with self._store.single() as conn:
                    changes = await pg.changes_between(conn, feed.organization, feed.revision, upto)
                    if not changes or changes[-1].revision < upto:
                        # Short of the target: a notification is a hint, not a fact.
                        # Confirm it against what is committed (off the usual path),
                        # so a forged one (anyone who can PUBLISH on Redis) neither
                        # resets streams nor makes the feed wait for revisions that do
                        # not exist.
                        committed, _ = await pg.revision_of(conn, feed.organization)
                        if committed < upto:
                            log.warning(
                                "notified revision %d of %s is above the committed %d; ignored",
                                feed.target,
                                feed.organization,
                                committed,
                            )
                            feed.target = upto = max(committed, feed.revision)
                metrics.FEED_FETCHES.inc()
                expected = feed.revision + 1
                for revision, group in itertools.groupby(changes, key=lambda c: c.revision):
                    if revision != expected:
                        self._reset(feed, expected)
                    items = tuple(group)
                    self._fan_out(
                        feed, Event(feed.organization, revision, items, items[0].created_at)
                    )
                    expected = revision + 1
                if expected <= upto:
                    self._reset(feed, expected)
                feed.revision = upto
                for revision in [r for r in feed.known if r <= upto]:
                    del feed.known[revision]
        except asyncio.CancelledError:
            raise
        except Exception:
            # The next notification or poll starts a new attempt.
            log.exception("could not read revisions of %s", feed.organization)

    def _reset(self, feed: _Feed, missing: int) -> None:
        """History this feed needs is gone (compacted while it lagged): its streams must
        start over from a snapshot; a stream closed here takes nothing more."""
        log.warning(
            "history missing for %s at revision %d; resetting its streams",
            feed.organization,
            missing,
        )
        for watcher in list(feed.watchers):
            watcher.close(RESET)

    def _fan_out(self, feed: _Feed, event: Event) -> None:
        lag = (dt.datetime.now(dt.UTC) - event.commit_time).total_seconds()
        metrics.NOTIFICATION_LAG.observe(max(lag, 0.0))
        encoded: dict[frozenset[str] | None, Any] = {}
        for watcher in list(feed.watchers):
            key = watcher.services
            if key not in encoded:
                encoded[key] = self._encode(event, key)
            watcher.offer((event.revision, encoded[key]))

    def set_fallback(self, on: bool) -> None:
        """Redis pub/sub is down (poll fast) or back (poll slowly); poll now either way."""
        if on and not self.fallback:
            log.warning(
                "Redis pub/sub lost: polling PostgreSQL every %gs", self._fallback_poll_interval
            )
        elif not on and self.fallback:
            log.info("Redis pub/sub connected")
        self.fallback = on
        metrics.FALLBACK_MODE.set(1 if on else 0)
        self._wake_poller.set()

    async def poll_once(self) -> None:
        """Reads the current revision of every watched organization and fans out gaps."""
        organizations = self.organizations
        if not organizations:
            return
        for organization, revision in (await self._store.revisions(organizations)).items():
            self.notify(organization, revision)

    async def run_poller(self) -> None:
        """Polls forever: every ``poll_interval``, or faster while Redis is down."""
        while True:
            interval = self._fallback_poll_interval if self.fallback else self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake_poller.wait()
            self._wake_poller.clear()
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling PostgreSQL for revisions failed")

    def close_streams(self) -> None:
        """Ends every stream (server shutdown): clients resume on another replica."""
        for feed in self._feeds.values():
            for watcher in list(feed.watchers):
                watcher.close(SHUTDOWN)

    async def run_progress(self, tick: float = 0.5) -> None:
        """Offers PROGRESS to every stream idle for its progress interval, forever.

        One timer for all streams, instead of one per stream and message.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for feed in list(self._feeds.values()):
                for watcher in list(feed.watchers):
                    if not watcher.pending and now - watcher.last_sent >= watcher.progress_interval:
                        watcher.offer(PROGRESS)
                        watcher.last_sent = now

    async def close(self) -> None:
        """Stops every feed task."""
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
