"""Checks of every input: each returns the field violations it finds (empty = fine)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from provisioner.domain.quantity import QuantityError, parse_quantity
from servicekit.errors import FieldViolation
from servicekit.requests import check_kubernetes_labels

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
    return check_kubernetes_labels(
        labels, field, max_labels=MAX_LABELS, reserved_prefixes=RESERVED_LABEL_PREFIXES
    )


def check_quantity(value: str, field: str) -> list[FieldViolation]:
    """A Kubernetes quantity (empty means the default and is fine)."""
    if not value:
        return []
    try:
        parse_quantity(value)
    except QuantityError as exc:
        return [FieldViolation(field, str(exc))]
    return []
