"""Checks of every input: each returns the field violations it finds (empty = fine)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from provisioner.domain.quantity import QuantityError, parse_quantity
from servicekit.errors import FieldViolation

# Label name part and value: at most 63 characters, alphanumerics at both ends.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
MAX_LABELS = 32
MAX_OWNERS = 100
MAX_SUBJECT = 253
# Label prefixes the Provisioner manages itself; a request may not set them.
RESERVED_LABEL_PREFIXES = (
    "agentready.io/",
    "pod-security.kubernetes.io/",
    "kubernetes.io/",
    "k8s.io/",
    "app.kubernetes.io/managed-by",
)


def check_owners(owners: Sequence[str], field: str = "owners") -> list[FieldViolation]:
    """At least one subject, at most 100, each a printable name of up to 253 characters."""
    if not owners:
        return [FieldViolation(field, "give at least one owner")]
    if len(owners) > MAX_OWNERS:
        return [FieldViolation(field, f"at most {MAX_OWNERS} owners")]
    out: list[FieldViolation] = []
    for i, owner in enumerate(owners):
        if (
            not owner
            or len(owner) > MAX_SUBJECT
            or not owner.isprintable()
            or owner != owner.strip()
        ):
            out.append(
                FieldViolation(
                    f"{field}[{i}]",
                    f"a subject name of 1-{MAX_SUBJECT} printable characters without "
                    "surrounding spaces",
                )
            )
    return out


def check_labels(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    """Kubernetes label syntax, at most 32, none of the reserved prefixes."""
    if len(labels) > MAX_LABELS:
        return [FieldViolation(field, f"at most {MAX_LABELS} labels")]
    out: list[FieldViolation] = []
    for key in sorted(labels):
        value = labels[key]
        at = f"{field}[{key}]"
        prefix, slash, name = key.rpartition("/")
        if (slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or (
            not _LABEL_NAME.match(name)
        ):
            out.append(
                FieldViolation(
                    at,
                    "not a label key: an optional DNS subdomain prefix and '/', then 1-63 "
                    "letters, digits, '-', '_' or '.', alphanumeric at both ends",
                )
            )
            continue
        if any(key.startswith(p) or f".{p}" in key for p in RESERVED_LABEL_PREFIXES):
            out.append(FieldViolation(at, "managed by the Provisioner; cannot be set"))
            continue
        if value and not _LABEL_NAME.match(value):
            out.append(
                FieldViolation(
                    at,
                    "not a label value: up to 63 letters, digits, '-', '_' or '.', "
                    "alphanumeric at both ends",
                )
            )
    return out


def check_quantity(value: str, field: str) -> list[FieldViolation]:
    """A Kubernetes quantity (empty means the default and is fine)."""
    if not value:
        return []
    try:
        parse_quantity(value)
    except QuantityError as exc:
        return [FieldViolation(field, str(exc))]
    return []
