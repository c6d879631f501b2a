"""One WatchConfig stream: its initial state (snapshot or replay), then live changes.

The stream registers with the hub *before* reading its initial state at revision R,
then skips live items at or below R, so nothing falls between the two and nothing
arrives twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from config_service import metrics
from config_service.adapters import postgres as pg
from config_service.domain.model import Entry, Event
from config_service.service_layer.hub import OVERFLOW, PROGRESS, RESET, SHUTDOWN, Hub
from servicekit.errors import Unavailable

REPLAY_BATCH = 500
SENT_SNAPSHOT = metrics.WATCH_EVENTS_SENT.labels("snapshot")
SENT_CHANGE = metrics.WATCH_EVENTS_SENT.labels("change")
SENT_PROGRESS = metrics.WATCH_EVENTS_SENT.labels("progress")


class WatchEncoder(Protocol):
    """Builds the stream's messages (the entry point knows the wire format)."""

    def event(self, event: Event, services: frozenset[str] | None) -> Sequence[Any] | None:
        """The CHANGE message(s) of a revision (several when split into fragments), or
        None when nothing in it matches ``services``."""

    def snapshot(
        self,
        organization: str,
        revision: int,
        compact_revision: int,
        entries: Sequence[Entry],
        reset: bool,
        commit_time: dt.datetime | None,
    ) -> Sequence[Any]:
        """The SNAPSHOT message(s) (several when split into fragments)."""

    def progress(self, revision: int, compact_revision: int) -> Any:
        """A PROGRESS message."""


def _compact_revision(revision: int, compacted: int) -> int:
    """Oldest revision still in history (0 while there are none)."""
    return compacted + 1 if revision else 0


async def watch(
    hub: Hub,
    store: pg.ConfigStore,
    encoder: WatchEncoder,
    *,
    organization: str,
    services: frozenset[str] | None,
    start_revision: int,
    progress_interval: float,
) -> AsyncIterator[Any]:
    """Yields the messages of one stream until the client goes or the stream must end.

    Raises:
        Unavailable: the client read too slowly (reason ``WATCH_OVERFLOW``) or the
            history it needed vanished (``WATCH_RESET``); it resumes from its last
            revision.
    """
    watcher = await hub.watch(organization, services, progress_interval=progress_interval)
    loop = asyncio.get_running_loop()
    try:
        async with store.single() as conn:
            start = await pg.watch_start(
                conn, organization, sorted(services or ()), max(start_revision, 0)
            )
        revision = start.revision
        compact = _compact_revision(revision, start.compacted)
        if start.snapshot:
            SENT_SNAPSHOT.inc()
            for part in encoder.snapshot(
                organization,
                revision,
                compact,
                start.entries,
                start_revision > 0,
                start.commit_time,
            ):
                yield part
        else:
            async for messages in _replay(
                store, encoder, organization, services, start_revision, revision
            ):
                SENT_CHANGE.inc()
                for part in messages:
                    yield part
            SENT_PROGRESS.inc()
            yield encoder.progress(revision, compact)
        last = revision
        while True:
            watcher.last_sent = loop.time()
            item = await watcher.get()
            if item is PROGRESS:
                SENT_PROGRESS.inc()
                yield encoder.progress(last, compact)
                continue
            if item is OVERFLOW:
                raise Unavailable(
                    "the stream fell too far behind; resume from your last revision",
                    reason="WATCH_OVERFLOW",
                    metadata={"revision": str(last)},
                )
            if item is SHUTDOWN:
                raise Unavailable(
                    "the server is shutting down; resume on another replica",
                    reason="SERVER_SHUTDOWN",
                    metadata={"revision": str(last)},
                )
            if item is RESET:
                raise Unavailable(
                    "the history this stream needed is gone; resume for a new snapshot",
                    reason="WATCH_RESET",
                    metadata={"revision": str(last)},
                )
            item_revision, messages = item
            if item_revision <= last:
                continue  # already in the initial state
            last = item_revision
            if messages is not None:
                SENT_CHANGE.inc()
                for part in messages:
                    yield part
    finally:
        hub.unwatch(watcher)


async def _replay(
    store: pg.ConfigStore,
    encoder: WatchEncoder,
    organization: str,
    services: frozenset[str] | None,
    after: int,
    upto: int,
) -> AsyncIterator[Sequence[Any]]:
    position = after
    while position < upto:
        end = min(upto, position + REPLAY_BATCH)
        async with store.single() as conn:
            changes = await pg.changes_between(conn, organization, position, end)
        expected = position + 1
        for revision, group in itertools.groupby(changes, key=lambda c: c.revision):
            if revision != expected:
                raise Unavailable(
                    "the history being replayed was compacted; resume for a new snapshot",
                    reason="WATCH_RESET",
                    metadata={"revision": str(expected - 1)},
                )
            items = tuple(group)
            messages = encoder.event(
                Event(organization, revision, items, items[0].created_at), services
            )
            if messages is not None:
                yield messages
            expected = revision + 1
        position = end
