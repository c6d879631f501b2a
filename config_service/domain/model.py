"""What the configuration of an organization is made of: entries, changes, events."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from config_service.domain.values import ConfigValue

SET = "set"
DELETE = "delete"


@dataclasses.dataclass(frozen=True)
class Entry:
    """The current value of one key."""

    service: str
    key: str
    value: ConfigValue
    revision: int
    updated_at: dt.datetime | None
    updated_by: str
    is_default: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the shape ``config.begin_write`` returns entries in, too)."""
        return {
            "service": self.service,
            "key": self.key,
            "value": self.value.to_json(),
            "revision": self.revision,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        """The inverse of :meth:`to_json`."""
        return cls(
            service=data["service"],
            key=data["key"],
            value=ConfigValue.from_json(data["value"]),
            revision=int(data["revision"]),
            updated_at=dt.datetime.fromisoformat(data["updated_at"])
            if data["updated_at"]
            else None,
            updated_by=data["updated_by"],
        )


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One requested write: set ``value``, or delete when ``value`` is None.

    ``field`` is where the mutation sits in the request, for error messages
    (``""`` for SetConfig, ``"mutations[2]."`` in a batch).
    """

    service: str
    key: str
    value: ConfigValue | None
    expected_revision: int | None = None
    etag: str = ""
    field: str = ""
    # The request field holding the value: "value" (SetConfig), "set_value" (batch).
    value_field: str = "value"
    # A delete of a key that is not set: NOT_FOUND (DeleteConfig, batch), or nothing
    # to do (rollback, which only asks for a state).
    missing_ok: bool = False


@dataclasses.dataclass(frozen=True)
class Change:
    """One key's change within a revision, as recorded in history."""

    revision: int
    seq: int
    service: str
    key: str
    kind: str
    old_value: ConfigValue | None
    new_value: ConfigValue | None
    actor: str
    reason: str
    request_id: str
    created_at: dt.datetime

    def entry(self) -> Entry | None:
        """The key's entry right after this change (None for a delete)."""
        if self.new_value is None:
            return None
        return Entry(
            self.service, self.key, self.new_value, self.revision, self.created_at, self.actor
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, for idempotency records."""
        return {
            "revision": self.revision,
            "seq": self.seq,
            "service": self.service,
            "key": self.key,
            "kind": self.kind,
            "old_value": self.old_value.to_json() if self.old_value else None,
            "new_value": self.new_value.to_json() if self.new_value else None,
            "actor": self.actor,
            "reason": self.reason,
            "request_id": self.request_id,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        """The inverse of :meth:`to_json`."""
        return cls(
            revision=data["revision"],
            seq=data["seq"],
            service=data["service"],
            key=data["key"],
            kind=data["kind"],
            old_value=ConfigValue.from_json(data["old_value"]) if data["old_value"] else None,
            new_value=ConfigValue.from_json(data["new_value"]) if data["new_value"] else None,
            actor=data["actor"],
            reason=data["reason"],
            request_id=data["request_id"],
            created_at=dt.datetime.fromisoformat(data["created_at"]),
        )


@dataclasses.dataclass(frozen=True)
class Commit:
    """The outcome of a write: the revision it made (or found) and its changes.

    ``entries`` holds, for every key the request named and that is set afterwards,
    its entry, so SetConfig can answer even when its write was a no-op.
    """

    revision: int
    changes: tuple[Change, ...]
    entries: tuple[Entry, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, for idempotency records."""
        return {
            "revision": self.revision,
            "changes": [c.to_json() for c in self.changes],
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        """The inverse of :meth:`to_json`."""
        return cls(
            revision=data["revision"],
            changes=tuple(Change.from_json(c) for c in data["changes"]),
            entries=tuple(Entry.from_json(e) for e in data["entries"]),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """Everything that happened in one revision: what watchers receive."""

    organization: str
    revision: int
    changes: tuple[Change, ...]
    commit_time: dt.datetime


def etag(revision: int) -> str:
    """The etag of an entry last changed at ``revision``."""
    return f'"{revision}"'
