"""TenantService's domain: users, organizations and their lifecycle, members and roles,
projects, notes and service-account keys. No gRPC, no SQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping


class Role(enum.Enum):
    """A member's role; each role can do everything the roles below it can."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """Higher is more powerful."""
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """Whether this role includes everything ``other`` may do."""
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3, Role.OWNER: 4}


class OrgState(enum.Enum):
    """Lifecycle of an organization (the saga's states)."""

    PROVISIONING = "PROVISIONING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"

    @property
    def removing(self) -> bool:
        """DELETING or DELETED: no more changes."""
        return self in (OrgState.DELETING, OrgState.DELETED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class User:
    """A person who can sign in."""

    id: str
    email: str
    display_name: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Organization:
    """A tenant."""

    slug: str
    uid: str
    display_name: str
    state: OrgState
    state_reason: str
    labels: Mapping[str, str]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    failures: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Member:
    """A user's membership in an organization."""

    organization: str
    user_id: str
    email: str
    role: Role
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Project:
    """A container for notes."""

    organization: str
    id: str
    display_name: str
    description: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Note:
    """A titled text inside a project."""

    organization: str
    project: str
    id: str
    title: str
    body: str
    author_user_id: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceAccountKey:
    """A workload credential acting in one organization with fixed scopes."""

    organization: str
    id: str
    display_name: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-organization limits (from the platform configuration)."""

    projects: int = 100
    notes: int = 10_000
    members: int = 100
    service_account_keys: int = 100


def etag(version: int) -> str:
    """The opaque etag of a row version."""
    return f'W/"{version}"'


def matches_etag(given: str, version: int) -> bool:
    """Whether a client's etag (empty = unconditional) names ``version``."""
    return not given or given == etag(version)
