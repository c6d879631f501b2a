"""What this replica last knew of an organization's write state, so that a write can
go straight to its commit.

A value write reads what it decides on (``config.read_for_write``), decides in Python,
then commits with a statement that writes only if the organization's revision, the
schemas of the services written and the request id's absence are still as read
(``config.commit_write``). A replica that made an organization's latest revision
itself a moment ago already knows all that: the next write of that organization can
be decided on what the replica remembers and go straight to the commit, whose check
makes a memory gone stale harmless (nothing is written, and the write reads and
decides again). One round trip per write instead of two for whoever keeps writing one
organization through one replica: a deploy pipeline, a rollout, an operator's script.

What the memory cannot vouch for is never answered from it: an error found in it (a
revision or etag mismatch, a schema violation, a delete of a key that is not set) and
a write that changes nothing (no commit would check it) are decided again on a fresh
read. A write is decided on the memory only when it is the only write of its
organization in flight on this replica (concurrent writers would mostly find it stale).

The commit's check compares the revision and the incarnation: an organization's
revisions start over when PurgeConfig removes it, and its next life has another
incarnation (migration 0011), so a purge on another replica never passes for the
organization remembered. An organization read before it had a row (no incarnation
yet) is not written from memory: its next write reads first. This replica also forgets
an organization it purges, and a memory is trusted for :data:`MEMO_SECONDS` after the
read or commit that confirmed it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from config_service.adapters import postgres as pg
from config_service.domain.model import Commit, Entry
from config_service.domain.schema import ServiceSchema

# How long a memory is trusted after the read or commit that confirmed it.
MEMO_SECONDS = 1.0
# Organizations remembered at most (the least recently written are forgotten first).
MEMO_ORGANIZATIONS = 10_000
# Keys remembered per organization at most (past it, only the latest write's).
MEMO_KEYS = 256

Key = tuple[str, str]


@dataclasses.dataclass
class _Known:
    """An organization at ``revision``: the keys known (None: known not to be set) and
    the services whose schema is known (None: known to have none), with its version."""

    revision: int
    compacted: int
    incarnation: int | None
    entries: dict[Key, Entry | None]
    schemas: dict[str, tuple[ServiceSchema, int] | None]
    until: float


class WriteMemo:
    """The write state of recently written organizations (see the module)."""

    def __init__(
        self,
        *,
        seconds: float = MEMO_SECONDS,
        capacity: int = MEMO_ORGANIZATIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds = seconds
        self._capacity = capacity
        self._clock = clock
        self._known: collections.OrderedDict[str, _Known] = collections.OrderedDict()
        self._writing: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def writing(self, organization: str) -> Iterator[bool]:
        """Counts a write of ``organization`` in flight while inside; yields whether it
        is the only one."""
        self._writing[organization] += 1
        try:
            yield self._writing[organization] == 1
        finally:
            self._writing[organization] -= 1
            if not self._writing[organization]:
                del self._writing[organization]

    def state(
        self, organization: str, keys: Sequence[Key], services: Iterable[str]
    ) -> pg.WriteState | None:
        """What ``config.read_for_write`` would answer, as remembered, or None when some
        of it is not known (or no longer trusted)."""
        known = self._known.get(organization)
        if known is None or known.incarnation is None:
            return None
        if known.until <= self._clock():
            del self._known[organization]
            return None
        entries: dict[Key, Entry] = {}
        schemas: dict[str, ServiceSchema] = {}
        versions: dict[str, int] = {}
        try:
            for key in keys:
                entry = known.entries[key]
                if entry is not None:
                    entries[key] = entry
            for service in services:
                schema = known.schemas[service]
                if schema is not None:
                    schemas[service], versions[service] = schema
        except KeyError:
            return None
        return pg.WriteState(
            known.revision, known.compacted, entries, schemas, None, versions, known.incarnation
        )

    def remember(
        self,
        organization: str,
        state: pg.WriteState,
        keys: Sequence[Key],
        services: Iterable[str],
    ) -> None:
        """Notes what a read of ``keys`` and ``services``' schemas found."""
        known = self._known.get(organization)
        if (
            known is None
            or known.revision != state.revision
            or known.incarnation != state.incarnation
        ):
            known = _Known(state.revision, state.compacted, state.incarnation, {}, {}, 0.0)
            self._known[organization] = known
        for key in keys:
            known.entries[key] = state.entries.get(key)
        for service in services:
            schema = state.schemas.get(service)
            known.schemas[service] = (
                (schema, state.schema_versions[service])
                if schema is not None and service in state.schema_versions
                else None
            )
        self._confirmed(organization, known)

    def committed(
        self,
        organization: str,
        state: pg.WriteState,
        keys: Sequence[Key],
        services: Iterable[str],
        commit: Commit,
    ) -> None:
        """Notes a commit made on ``state``: the organization is now at the commit's
        revision, its keys as the commit left them, everything else as it was."""
        self.remember(organization, state, keys, services)
        known = self._known[organization]
        known.revision = commit.revision
        for change in commit.changes:
            known.entries[(change.service, change.key)] = change.entry()
        if len(known.entries) > MEMO_KEYS:
            known.entries = {key: known.entries[key] for key in keys}

    def forget(self, organization: str) -> None:
        """Drops what is known of ``organization`` (its next write reads first)."""
        self._known.pop(organization, None)

    def _confirmed(self, organization: str, known: _Known) -> None:
        known.until = self._clock() + self._seconds
        self._known.move_to_end(organization)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
