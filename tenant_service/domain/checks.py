"""Checks of TenantService's inputs: each returns the field violations it finds (empty =
fine), so one request reports every bad field at once."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from servicekit.errors import FieldViolation
from servicekit.requests import check_kubernetes_labels

MAX_EMAIL = 254
MIN_PASSWORD, MAX_PASSWORD = 8, 256
MAX_DISPLAY_NAME = 100
MAX_DESCRIPTION = 2000
MAX_TITLE = 200
MAX_BODY = 100_000
MAX_ORG_LABELS = 64
# Scopes a service-account key may carry.
KEY_SCOPES = frozenset(
    {
        "org:read",
        "org:write",
        "config:read",
        "config:write",
        "provisioner:read",
        "provisioner:write",
    }
)
MIN_KEY_TTL = dt.timedelta(minutes=1)
MAX_KEY_TTL = dt.timedelta(days=365)
DEFAULT_KEY_TTL = dt.timedelta(days=90)

# Deliberately plain: one '@', a local part without spaces, a dotted domain of DNS
# labels. Deliverability is the mail system's business, not a regex's.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_PROJECT_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of passwords too common to accept (lower case)."""
    text = (Path(__file__).parent / "common_passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def normalize_email(email: str) -> str:
    """The stored form of an email: trimmed and lower-cased (compared case-insensitively)."""
    return email.strip().lower()


def check_email(email: str, field: str = "email") -> list[FieldViolation]:
    """A plausible email address of at most 254 characters."""
    if not email:
        return [FieldViolation(field, "required")]
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        return [FieldViolation(field, f"not an email address (at most {MAX_EMAIL} characters)")]
    return []


def check_password(password: str, email: str, field: str = "password") -> list[FieldViolation]:
    """The password policy: 8-256 characters, not the email (or its name part), not
    one of the shipped common passwords."""
    if len(password) < MIN_PASSWORD or len(password) > MAX_PASSWORD:
        return [FieldViolation(field, f"must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")]
    if "\x00" in password:
        return [FieldViolation(field, "must not contain NUL (U+0000) characters")]
    lowered = password.strip().lower()
    local = email.partition("@")[0].lower()
    if lowered in (email.lower(), local):
        return [FieldViolation(field, "must not be your email address or its name part")]
    if lowered in common_passwords():
        return [FieldViolation(field, "too common: it appears in leaked-password lists")]
    return []


def check_text(
    text: str, field: str, *, max_chars: int, required: bool = False
) -> list[FieldViolation]:
    """Free text: required or not, at most ``max_chars``, no NUL."""
    if required and not text:
        return [FieldViolation(field, "required")]
    if len(text) > max_chars:
        return [FieldViolation(field, f"at most {max_chars} characters")]
    if "\x00" in text:
        return [FieldViolation(field, "must not contain NUL (U+0000) characters")]
    return []


def check_labels(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    """Organization labels: Kubernetes label syntax, at most 64."""
    return check_kubernetes_labels(labels, field, max_labels=MAX_ORG_LABELS)


def check_project_id(project: str, field: str = "id") -> list[FieldViolation]:
    """A project id: a DNS-1123 label of 1-63 characters."""
    if not project:
        return [FieldViolation(field, "required")]
    if not _PROJECT_ID.fullmatch(project):
        return [
            FieldViolation(
                field,
                "must be 1-63 lowercase letters, digits or '-', starting and ending with a "
                "letter or digit",
            )
        ]
    return []


def check_uuid(value: str, field: str) -> list[FieldViolation]:
    """A required UUID in its canonical lower-case form."""
    if not value:
        return [FieldViolation(field, "required")]
    if not _UUID.fullmatch(value):
        return [FieldViolation(field, "must be a UUID")]
    return []


def check_scopes(scopes: Sequence[str], field: str = "scopes") -> list[FieldViolation]:
    """At least one scope, each a known one, no repeats."""
    if not scopes:
        return [FieldViolation(field, f"give at least one of {', '.join(sorted(KEY_SCOPES))}")]
    out = [
        FieldViolation(f"{field}[{i}]", f"unknown scope; one of {', '.join(sorted(KEY_SCOPES))}")
        for i, scope in enumerate(scopes)
        if scope not in KEY_SCOPES
    ]
    if len(set(scopes)) != len(scopes):
        out.append(FieldViolation(field, "a scope is given twice"))
    return out


def key_ttl(
    seconds: int, nanos: int, field: str = "ttl"
) -> tuple[dt.timedelta, list[FieldViolation]]:
    """The lifetime of a service-account key (zero = the default 90 days)."""
    if seconds == 0 and nanos == 0:
        return DEFAULT_KEY_TTL, []
    if not -999_999_999 <= nanos <= 999_999_999:
        return DEFAULT_KEY_TTL, [FieldViolation(field, "not a Duration: nanos out of range")]
    # Bounds before the timedelta: seconds reach 2**63, which no timedelta holds.
    if not MIN_KEY_TTL.total_seconds() <= seconds + nanos / 1e9 <= MAX_KEY_TTL.total_seconds():
        return DEFAULT_KEY_TTL, [FieldViolation(field, "must be between 1 minute and 365 days")]
    return dt.timedelta(seconds=seconds, microseconds=nanos // 1000), []
