"""Writes: every change is one transaction holding the value, its history and the
organization's revision bump; the notification goes out after the commit.

A value write is optimistic first: it reads what it needs without a lock (one
statement), decides in Python, and commits in a second statement that writes only if
nothing the decision rests on changed meanwhile (see ``config.commit_write`` in the
migrations): two round trips instead of four. A write that loses that race reads
again with the organization's lock held for its read, decision and write, as a
rollback always does, so a busy organization's writes still finish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

import asyncpg

from config_service import metrics
from config_service.adapters import postgres as pg
from config_service.domain.model import (
    DELETE,
    SET,
    Change,
    Commit,
    Entry,
    Event,
    Mutation,
    etag,
)
from config_service.domain.patterns import precompile
from config_service.domain.schema import (
    MAX_ORGANIZATION_SCHEMA_BYTES,
    ServiceSchema,
    StoredSchema,
    check_schema,
    violations_of_existing,
)
from config_service.service_layer.memo import WriteMemo
from servicekit.errors import (
    Aborted,
    AgentReadyError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from servicekit.requests import RequestKey

# Called after a commit with the revision it made: fans the change out.
Notify = Callable[[Event], None]

# Optimistic tries of a value write before it takes the organization's lock. One: a
# write that lost the race once is likely on a busy organization, where reading again
# without the lock would likely lose again.
OPTIMISTIC_ATTEMPTS = 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one organization may store (CONFIG_MAX_ORGANIZATION_*)."""

    keys: int = 1000
    bytes: int = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A write decided on what it read: the changes to make (none for a no-op), the
    answer, and the request id's record to keep with it (if any)."""

    changes: tuple[Change, ...]
    commit: Commit
    record: pg.RequestRecord | None
    now: dt.datetime


class ConfigWriter:
    """The write side of ConfigService."""

    def __init__(self, store: pg.ConfigStore, notify: Notify, limits: Limits | None = None) -> None:
        self._store = store
        self._notify = notify
        self.limits = limits or Limits()
        self._memo = WriteMemo()

    async def apply(
        self,
        organization: str,
        mutations: Sequence[Mutation],
        *,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> Commit:
        """Applies ``mutations`` as one revision (or none, if all are no-ops).

        Raises:
            InvalidArgument: two mutations name one key, or a value breaks its schema.
            Aborted: an expected revision or etag does not match.
            NotFound: a delete names a key that is not set.
            ResourceExhausted: the write would take the organization past a limit.
        """
        seen: dict[tuple[str, str], str] = {}
        for m in mutations:
            where = (m.service, m.key)
            if where in seen:
                raise InvalidArgument.field(
                    f"{m.field}key", f"{m.service}/{m.key} is already changed by {seen[where]}"
                )
            seen[where] = m.field.rstrip(".") or "this request"
        keys = [(m.service, m.key) for m in mutations]
        services = {m.service for m in mutations if m.value is not None}
        request_id = request.request_id if request else ""
        with self._memo.writing(organization) as alone:
            if alone:
                remembered = self._memo.state(organization, keys, services)
                if remembered is not None:
                    commit = await self._write_remembered(
                        organization,
                        remembered,
                        mutations,
                        actor=actor,
                        reason=reason,
                        request=request,
                        keys=keys,
                        services=services,
                    )
                    if commit is not None:
                        return self._announce(organization, commit)
            for _ in range(OPTIMISTIC_ATTEMPTS):
                async with self._store.single() as conn:
                    state = await pg.read_for_write(
                        conn, organization, keys, services, request_id=request_id
                    )
                    replay = _replay(state, request)
                    if replay is not None:
                        return replay
                    self._memo.remember(organization, state, keys, services)
                    outcome, commit = await self._write(
                        conn,
                        organization,
                        state,
                        mutations,
                        actor=actor,
                        reason=reason,
                        request=request,
                    )
                if outcome is pg.Committed.OK:
                    self._memo.committed(organization, state, keys, services, commit)
                    return self._announce(organization, commit)
                self._memo.forget(organization)
                metrics.WRITE_CONFLICTS.inc()
            async with self._store.write(organization) as conn:
                await pg.begin_write(conn, organization, [], [])  # the organization's lock
                state = await pg.read_for_write(
                    conn, organization, keys, services, request_id=request_id
                )
                replay = _replay(state, request)
                if replay is not None:
                    return replay
                commit = await self._commit_locked(
                    conn,
                    organization,
                    state,
                    mutations,
                    actor=actor,
                    reason=reason,
                    request=request,
                )
            self._memo.committed(organization, state, keys, services, commit)
            return self._announce(organization, commit)

    async def _write_remembered(
        self,
        organization: str,
        state: pg.WriteState,
        mutations: Sequence[Mutation],
        *,
        actor: str,
        reason: str,
        request: RequestKey | None,
        keys: Sequence[tuple[str, str]],
        services: set[str],
    ) -> Commit | None:
        """The write decided on what this replica remembers of the organization and
        committed in one round trip (see :mod:`config_service.service_layer.memo`);
        None when the memory cannot vouch for the outcome (an error found in it, a
        write that changes nothing, a commit that found it stale): the caller then
        reads and decides again."""
        try:
            plan = self._plan(
                organization, state, mutations, actor=actor, reason=reason, request=request
            )
        except AgentReadyError:
            metrics.WRITE_MEMO.labels("unverified").inc()
            return None
        if not plan.changes:
            metrics.WRITE_MEMO.labels("unverified").inc()
            return None
        async with self._store.single() as conn:
            outcome = await self._commit(conn, organization, state, plan)
        if outcome is not pg.Committed.OK:
            metrics.WRITE_MEMO.labels("stale").inc()
            self._memo.forget(organization)
            return None
        metrics.WRITE_MEMO.labels("committed").inc()
        self._memo.committed(organization, state, keys, services, plan.commit)
        return plan.commit

    def forget(self, organization: str) -> None:
        """Forgets what this replica remembers of ``organization`` (purged)."""
        self._memo.forget(organization)

    async def rollback(
        self,
        organization: str,
        target: int,
        *,
        service: str,
        key: str,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> Commit:
        """Restores the state at revision ``target`` (of one service or key) as a new one.

        Raises:
            InvalidArgument: ``target`` is above the current revision, or a restored value
                breaks today's schema.
            FailedPrecondition: the history since ``target`` has been compacted.
        """
        async with self._store.write(organization) as conn:
            locked = await pg.begin_write(
                conn, organization, [], [], request_id=request.request_id if request else ""
            )
            revision, compacted = locked.revision, locked.compacted
            replay = _replay(locked, request)
            if replay is not None:
                return replay
            if target > revision:
                raise InvalidArgument.field(
                    "revision", f"{target} is above the current revision {revision}"
                )
            if target < compacted:
                raise FailedPrecondition(
                    f"the history after revision {target} is no longer retained (compacted "
                    f"through {compacted})",
                    reason="HISTORY_COMPACTED",
                    metadata={"compact_revision": str(compacted + 1)},
                )
            firsts = await pg.first_changes_after(conn, organization, target, service, key)
            # The value each key had at `target` is the old value of its first change after.
            mutations = [
                Mutation(
                    c.service,
                    c.key,
                    c.old_value,
                    missing_ok=True,
                    field=f"restored {c.service}/{c.key}: ",
                )
                for c in firsts
            ]
            state = await pg.read_for_write(
                conn,
                organization,
                [(m.service, m.key) for m in mutations],
                {m.service for m in mutations if m.value is not None},
            )
            commit = await self._commit_locked(
                conn, organization, state, mutations, actor=actor, reason=reason, request=request
            )
        return self._announce(organization, commit)

    def _announce(self, organization: str, commit: Commit) -> Commit:
        """Tells the fan-out about a committed revision (after the transaction)."""
        if commit.changes:
            self._notify(
                Event(organization, commit.revision, commit.changes, commit.changes[0].created_at)
            )
        return commit

    async def _commit_locked(
        self,
        conn: asyncpg.Connection,
        organization: str,
        state: pg.WriteState,
        mutations: Sequence[Mutation],
        *,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> Commit:
        """:meth:`_write` with the organization's lock held since ``state`` was read,
        so nothing it was decided on can have changed."""
        outcome, commit = await self._write(
            conn, organization, state, mutations, actor=actor, reason=reason, request=request
        )
        if outcome is not pg.Committed.OK:
            raise AssertionError(f"{organization!r} changed under its lock")
        return commit

    async def _write(
        self,
        conn: asyncpg.Connection,
        organization: str,
        state: pg.WriteState,
        mutations: Sequence[Mutation],
        *,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> tuple[pg.Committed, Commit]:
        """Decides the write on ``state`` and commits it with the request's record, in
        one statement (``config.commit_write``), unless what it was decided on changed
        since it was read (CONFLICT: nothing written). A no-op without a request id
        writes nothing at all.

        Raises:
            Aborted, NotFound, InvalidArgument: as :meth:`apply` says.
            ResourceExhausted: the write would take the organization past a limit.
        """
        plan = self._plan(
            organization, state, mutations, actor=actor, reason=reason, request=request
        )
        if not plan.changes and plan.record is None:
            return pg.Committed.OK, plan.commit
        return await self._commit(conn, organization, state, plan), plan.commit

    async def _commit(
        self, conn: asyncpg.Connection, organization: str, state: pg.WriteState, plan: _Plan
    ) -> pg.Committed:
        """Commits ``plan``, decided on ``state``, with ``config.commit_write``.

        Raises:
            ResourceExhausted: the write would take the organization past a limit.
        """
        outcome, usage, added = await pg.commit_write(
            conn,
            organization,
            state,
            plan.changes,
            plan.now,
            limits=pg.Usage(self.limits.keys, self.limits.bytes),
            request=plan.record,
        )
        if outcome is pg.Committed.LIMIT:
            self._check_limits(organization, usage, added)
            raise AssertionError(f"a write within the limits was refused: {usage}")
        if outcome is pg.Committed.OK and plan.changes:
            metrics.show_usage(organization, usage.keys, usage.bytes)
        return outcome

    def _plan(
        self,
        organization: str,
        state: pg.WriteState,
        mutations: Sequence[Mutation],
        *,
        actor: str,
        reason: str,
        request: RequestKey | None,
    ) -> _Plan:
        """Decides a write on what it read: checks the expected revisions and etags and
        the schemas, and works out the changes and the answer.

        Raises:
            Aborted, NotFound, InvalidArgument: as :meth:`apply` says.
        """
        request_id = request.request_id if request else ""
        ordered = sorted(mutations, key=lambda m: (m.service, m.key))
        current, schemas, revision = state.entries, state.schemas, state.revision
        violations: list[FieldViolation] = []
        for m in ordered:
            entry = current.get((m.service, m.key))
            _check_concurrency(organization, m, entry)
            if m.value is None:
                if entry is None and not m.missing_ok:
                    raise NotFound("config", f"{organization}/{m.service}/{m.key}")
                continue
            schema = schemas.get(m.service)
            if schema is not None:
                violations += schema.check(
                    m.key, m.value, f"{m.field}{m.value_field}", f"{m.field}key"
                )
        if violations:
            raise InvalidArgument(
                "the write breaks the service's schema: "
                + "; ".join(f"{v.field}: {v.description}" for v in violations),
                violations=violations,
                reason="SCHEMA_VIOLATION",
            )
        now = dt.datetime.now(dt.UTC)
        new_revision = revision + 1
        changes: list[Change] = []
        for m in ordered:
            entry = current.get((m.service, m.key))
            old = entry.value if entry else None
            if old == m.value:
                continue  # no-op: no revision, no history
            changes.append(
                Change(
                    revision=new_revision,
                    seq=len(changes),
                    service=m.service,
                    key=m.key,
                    kind=SET if m.value is not None else DELETE,
                    old_value=old,
                    new_value=m.value,
                    actor=actor,
                    reason=reason,
                    request_id=request_id,
                    created_at=now,
                )
            )
        changed = {(c.service, c.key): c for c in changes}
        entries: list[Entry] = []
        for m in ordered:
            change = changed.get((m.service, m.key))
            after = change.entry() if change else current.get((m.service, m.key))
            if after is not None:
                entries.append(after)
        commit = Commit(
            revision=new_revision if changes else revision,
            changes=tuple(changes),
            entries=tuple(entries),
        )
        record = (
            pg.RequestRecord(
                request.request_id, request.method, request.fingerprint, commit.to_json()
            )
            if request is not None
            else None
        )
        return _Plan(tuple(changes), commit, record, now)

    def _check_limits(self, organization: str, usage: pg.Usage, added: pg.Usage) -> None:
        """Refuses a write that grows the organization past a limit (a write that
        shrinks it always passes, so an organization over a lowered limit can recover).

        Raises:
            ResourceExhausted: reason ``ORGANIZATION_KEY_LIMIT`` or
                ``ORGANIZATION_SIZE_LIMIT``, with the limit and the usage before the write.
        """
        over_keys = added.keys > 0 and usage.keys > self.limits.keys
        if not over_keys and not (added.bytes > 0 and usage.bytes > self.limits.bytes):
            return  # the common case: nothing to build
        before = pg.Usage(usage.keys - added.keys, usage.bytes - added.bytes)
        metadata = {
            "organization": organization,
            "used_keys": str(before.keys),
            "limit_keys": str(self.limits.keys),
            "used_bytes": str(before.bytes),
            "limit_bytes": str(self.limits.bytes),
        }
        if over_keys:
            raise ResourceExhausted(
                f"{organization!r} has {before.keys} keys; this write would take it to "
                f"{usage.keys}, over its limit of {self.limits.keys} keys",
                reason="ORGANIZATION_KEY_LIMIT",
                retry_after_seconds=None,
                metadata=metadata,
            )
        raise ResourceExhausted(
            f"{organization!r} stores {before.bytes} bytes; this write would take it "
            f"to {usage.bytes}, over its limit of {self.limits.bytes} bytes",
            reason="ORGANIZATION_SIZE_LIMIT",
            retry_after_seconds=None,
            metadata=metadata,
        )

    async def set_schema(
        self,
        organization: str,
        service: str,
        schema: ServiceSchema,
        *,
        expected_etag: str,
        request: RequestKey | None = None,
    ) -> StoredSchema:
        """Registers or replaces a service's schema; does not create a revision.

        Raises:
            InvalidArgument: the schema is inconsistent.
            Aborted: ``expected_etag`` does not match.
            FailedPrecondition: values already set would break it.
        """
        if not await precompile(k.pattern for k in schema.keys if k.pattern):
            raise InvalidArgument.field(
                "schema.keys", "its patterns take too long to compile; simplify them"
            )
        problems = check_schema(schema)
        if problems:
            raise InvalidArgument(
                "the schema is invalid: "
                + "; ".join(f"{v.field}: {v.description}" for v in problems),
                violations=problems,
            )
        async with self._store.transaction(organization) as conn:
            # Serialized with the value writes (they lock this row first too): the
            # values are judged with every write before this one committed, and every
            # write after it is checked against the new schema.
            await pg.lock_organization(conn, organization)
            stored = await pg.load_schema(conn, organization, service, lock=True)
            if request is not None:
                # A retry returns the first attempt's schema (AIP-155), even though its
                # etag condition no longer holds.
                found = await pg.find_request(conn, organization, request.request_id)
                if found is not None:
                    request.confirm_retry(found[0], found[1])
                    return StoredSchema.from_json(found[2])
            if expected_etag and (stored is None or stored.etag != expected_etag):
                raise Aborted(
                    f"the schema of {service!r} has changed (etag mismatch); read it again",
                    metadata={"service": service},
                )
            if stored is not None and stored.schema == schema:
                return stored  # identical: a no-op, so retries are harmless
            others = await pg.other_schemas_bytes(conn, organization, service)
            if others + schema.encoded_size() > MAX_ORGANIZATION_SCHEMA_BYTES:
                raise ResourceExhausted(
                    f"the schemas of {organization!r} would take "
                    f"{others + schema.encoded_size()} bytes; the limit is "
                    f"{MAX_ORGANIZATION_SCHEMA_BYTES}",
                    reason="SCHEMA_LIMIT",
                    retry_after_seconds=None,
                    metadata={
                        "organization": organization,
                        "limit_bytes": str(MAX_ORGANIZATION_SCHEMA_BYTES),
                        "used_bytes": str(others),
                    },
                )
            entries = await pg.list_entries(conn, organization, services=[service])
            broken = violations_of_existing(schema, [(e.key, e.value) for e in entries])
            if broken:
                raise FailedPrecondition(
                    f"values already set break the new schema of {service!r}: "
                    + "; ".join(f"{v.field}: {v.description}" for v in broken),
                    violations=broken,
                    reason="SCHEMA_VIOLATION",
                )
            stored = await pg.upsert_schema(conn, organization, service, schema)
            if request is not None:
                await pg.save_request(
                    conn,
                    organization,
                    request.request_id,
                    request.method,
                    request.fingerprint,
                    stored.to_json(),
                )
            return stored

    async def delete_schema(self, organization: str, service: str, *, expected_etag: str) -> None:
        """Removes a service's schema; its values stay.

        Raises:
            NotFound: the service has no schema.
            Aborted: ``expected_etag`` does not match.
        """
        async with self._store.transaction(organization) as conn:
            # Serialized with the value writes, as set_schema is: a write that took the
            # lock after losing the optimistic race must find the schemas it read
            # still there when it commits (config.commit_write checks them).
            await pg.lock_organization(conn, organization)
            stored = await pg.load_schema(conn, organization, service, lock=True)
            if stored is None:
                raise NotFound("config schema", f"{organization}/{service}")
            if expected_etag and stored.etag != expected_etag:
                raise Aborted(f"the schema of {service!r} has changed (etag mismatch)")
            await pg.delete_schema(conn, organization, service)


def _check_concurrency(organization: str, m: Mutation, entry: Entry | None) -> None:
    actual = entry.revision if entry else 0
    where = {"organization": organization, "service": m.service, "key": m.key}
    if m.expected_revision is not None and m.expected_revision != actual:
        raise Aborted(
            f"{m.service}/{m.key} is at revision {actual}, not {m.expected_revision}; "
            "read it again and retry",
            reason="REVISION_MISMATCH",
            metadata={**where, "revision": str(actual)},
        )
    if m.etag and (entry is None or etag(entry.revision) != m.etag):
        raise Aborted(
            f"{m.service}/{m.key} has changed (etag mismatch); read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={**where, "etag": etag(entry.revision) if entry else ""},
        )


def _replay(state: pg.WriteState, request: RequestKey | None) -> Commit | None:
    """The stored result of an earlier attempt of the same request, if any (read with
    the write's state: a record committed after that read makes the write's commit a
    conflict, and the write reads again)."""
    if request is None or state.request is None:
        return None
    method, fingerprint, result = state.request
    request.confirm_retry(method, fingerprint)
    return Commit.from_json(result)
