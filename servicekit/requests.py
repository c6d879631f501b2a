"""Checks every service makes on its requests: organization slugs, field violations,
and idempotency keys for retried writes (AIP-155)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Sequence

from google.protobuf import message

from servicekit.errors import FieldViolation, InvalidArgument

# An organization slug: a DNS-1123 label of 3-40 characters (the namespace is
# org-<slug>, within Kubernetes' 63).
ORGANIZATION_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{1,38})[a-z0-9]$")


def check_organization(organization: str, field: str = "organization") -> list[FieldViolation]:
    """Violations of the organization-slug rules by ``organization``."""
    if not organization:
        return [FieldViolation(field, "required")]
    if not ORGANIZATION_RE.match(organization):
        return [
            FieldViolation(
                field,
                "must be an organization slug: 3-40 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit",
            )
        ]
    return []


MAX_REASON_CHARS = 500


def check_reason(reason: str, field: str = "reason") -> list[FieldViolation]:
    """A change's reason, kept in history: at most 500 characters, no NUL (which
    PostgreSQL text cannot hold)."""
    if len(reason) > MAX_REASON_CHARS:
        return [FieldViolation(field, f"at most {MAX_REASON_CHARS} characters")]
    if "\x00" in reason:
        return [FieldViolation(field, "must not contain NUL (U+0000) characters")]
    return []


def raise_if_invalid(violations: Sequence[FieldViolation]) -> None:
    """Raises INVALID_ARGUMENT naming every violation, if there is any."""
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations=violations
        )


@dataclasses.dataclass(frozen=True)
class RequestKey:
    """A retried request (AIP-155): its id, method and a digest of its body."""

    request_id: str
    method: str
    fingerprint: str

    def confirm_retry(self, method: str, fingerprint: str) -> None:
        """Checks that a stored request with this id was this very request.

        Raises:
            InvalidArgument: the id was used for another method or another body.
        """
        if (method, fingerprint) != (self.method, self.fingerprint):
            raise InvalidArgument.field(
                "request_id", "already used for a different request; use a new UUID"
            )


def check_request_id(request_id: str, field: str = "request_id") -> list[FieldViolation]:
    """An optional request id must be a UUID."""
    if not request_id:
        return []
    try:
        uuid.UUID(request_id)
    except ValueError:
        return [FieldViolation(field, "must be a UUID")]
    return []


def request_key(method: str, request: message.Message) -> RequestKey | None:
    """The idempotency key of a write, or None when it carries no ``request_id``.

    The fingerprint covers every other field, so the same id with another body is
    told apart from a retry.

    Raises:
        InvalidArgument: the request id is not a UUID.
    """
    request_id: str = getattr(request, "request_id")  # noqa: B009 - every write has one
    if not request_id:
        return None
    raise_if_invalid(check_request_id(request_id))
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")
    digest = hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
    return RequestKey(request_id, method, digest)
