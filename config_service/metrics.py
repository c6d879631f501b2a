"""ConfigService's own metrics, beside the per-RPC ones every server has."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable

from prometheus_client import Counter, Gauge, Histogram

WATCH_STREAMS = Gauge("config_watch_streams", "Open WatchConfig streams on this replica.")
WATCH_EVENTS_SENT = Counter(
    "config_watch_events_sent_total", "WatchConfig messages queued to streams, by type.", ["type"]
)
WATCH_OVERFLOWS = Counter(
    "config_watch_overflows_total", "Streams closed because their client read too slowly."
)
NOTIFICATION_LAG = Histogram(
    "config_notification_lag_seconds",
    "From a revision's commit to its fan-out on this replica.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FALLBACK_MODE = Gauge(
    "config_notification_fallback",
    "1 while Redis pub/sub is unavailable and the replica polls PostgreSQL instead.",
)
WRITE_CONFLICTS = Counter(
    "config_write_conflicts_total",
    "Value writes read again because their organization changed between their read "
    "and their commit (the optimistic write path).",
)
WRITE_MEMO = Counter(
    "config_write_memo_total",
    "Value writes decided on what their replica remembered of the organization, by "
    "outcome: committed without a read, stale (the commit found the organization "
    "changed; read again) or unverified (an error or a no-op; read again).",
    ["outcome"],
)
FEED_FETCHES = Counter(
    "config_feed_fetches_total", "History reads made to fan revisions out (one per batch)."
)
ORGANIZATION_KEYS = Gauge(
    "config_organization_keys",
    "Keys an organization stores (set by the replica that last wrote to it); the limit "
    "is CONFIG_MAX_ORGANIZATION_KEYS.",
    ["organization"],
)
ORGANIZATION_BYTES = Gauge(
    "config_organization_bytes",
    "Bytes an organization stores, names and values (set by the replica that last wrote "
    "to it); the limit is CONFIG_MAX_ORGANIZATION_BYTES.",
    ["organization"],
)

# Organizations this replica has a usage series for (so deleted ones can be dropped).
_usage_shown: set[str] = set()


def show_usage(organization: str, keys: int, stored_bytes: int) -> None:
    """Sets the organization's usage gauges (after a write)."""
    ORGANIZATION_KEYS.labels(organization).set(keys)
    ORGANIZATION_BYTES.labels(organization).set(stored_bytes)
    _usage_shown.add(organization)


def forget_usage(organizations: Iterable[str]) -> None:
    """Drops the usage series of organizations whose configuration is gone."""
    for organization in list(organizations):
        for gauge in (ORGANIZATION_KEYS, ORGANIZATION_BYTES):
            with contextlib.suppress(KeyError):
                gauge.remove(organization)
        _usage_shown.discard(organization)


def keep_usage_of(known: Collection[str]) -> None:
    """Drops the usage series of every organization not in ``known`` (the ones that
    still have configuration): another replica purged them."""
    forget_usage(o for o in _usage_shown if o not in known)
