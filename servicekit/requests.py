"""Checks every service makes on its requests: organization slugs, field violations,
and idempotency keys for retried writes (AIP-155)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence

from google.protobuf import message

from servicekit.errors import FieldViolation, InvalidArgument

# An organization slug: a DNS-1123 label of 3-40 characters (the namespace is
# org-<slug>, within Kubernetes' 63).
ORGANIZATION_RE = re.compile(r"[a-z]([a-z0-9-]{1,38})[a-z0-9]")


def check_organization(organization: str, field: str = "organization") -> list[FieldViolation]:
    """Violations of the organization-slug rules by ``organization``."""
    if not organization:
        return [FieldViolation(field, "required")]
    if not ORGANIZATION_RE.fullmatch(organization):
        return [
            FieldViolation(
                field,
                "must be an organization slug: 3-40 lowercase letters, digits or '-', "
                "starting with a letter and ending with a letter or digit",
            )
        ]
    return []


# Label name part and value: at most 63 characters, alphanumerics at both ends.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def check_kubernetes_labels(
    labels: Mapping[str, str],
    field: str = "labels",
    *,
    max_labels: int,
    reserved_prefixes: Sequence[str] = (),
) -> list[FieldViolation]:
    """Kubernetes label syntax (keys: an optional DNS subdomain prefix and '/', then a
    name; values: up to 63 characters), at most ``max_labels``, no reserved prefix."""
    if len(labels) > max_labels:
        return [FieldViolation(field, f"at most {max_labels} labels")]
    out: list[FieldViolation] = []
    for key in sorted(labels):
        value = labels[key]
        at = f"{field}[{key}]"
        prefix, slash, name = key.rpartition("/")
        if (
            slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))
        ) or not _LABEL_NAME.fullmatch(name):
            out.append(
                FieldViolation(
                    at,
                    "not a label key: an optional DNS subdomain prefix and '/', then 1-63 "
                    "letters, digits, '-', '_' or '.', alphanumeric at both ends",
                )
            )
            continue
        if any(key.startswith(p) or f".{p}" in key for p in reserved_prefixes):
            out.append(FieldViolation(at, "a reserved label; cannot be set"))
            continue
        if value and not _LABEL_NAME.fullmatch(value):
            out.append(
                FieldViolation(
                    at,
                    "not a label value: up to 63 letters, digits, '-', '_' or '.', "
                    "alphanumeric at both ends",
                )
            )
    return out


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
