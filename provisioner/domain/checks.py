"""Checks of every input: each returns the field violations it finds (empty = fine)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from provisioner.domain.quantity import QuantityError, parse_quantity
from servicekit.errors import FieldViolation
from servicekit.requests import check_kubernetes_labels

MAX_LABELS = 32
MAX_OWNERS = 100
MAX_SUBJECT = 253
# Label prefixes the Provisioner manages itself; a request may not set them.
# Prefixes a tenant may use on its namespace's labels.
TENANT_LABEL_PREFIXES = ("tenant.agentready.io/",)
# Unprefixed keys that cluster tools act on (a tenant must not switch them).
UNSAFE_LABEL_KEYS = frozenset({"istio-injection", "control-plane", "name"})
RESERVED_LABEL_PREFIXES = (
    "agentready.io/",
    "pod-security.kubernetes.io/",
    "kubernetes.io/",
    "k8s.io/",
    "app.kubernetes.io/managed-by",
)


# A user name as an identity provider issues it (an email, an account name, or
# "sa:<key id>"): letters, digits and . _ @ + : - , starting with a letter or digit.
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:-]{0,252}")


def check_owners(owners: Sequence[str], field: str = "owners") -> list[FieldViolation]:
    """At least one owner, at most 100, each a user name of up to 253 characters and
    never a Kubernetes system identity (``system:anonymous``, service accounts of
    ``kube-system``, ...): owners are bound to ``admin`` in the namespace."""
    if not owners:
        return [FieldViolation(field, "give at least one owner")]
    if len(owners) > MAX_OWNERS:
        return [FieldViolation(field, f"at most {MAX_OWNERS} owners")]
    out: list[FieldViolation] = []
    for i, owner in enumerate(owners):
        if owner.lower().startswith("system:"):
            out.append(
                FieldViolation(f"{field}[{i}]", "a Kubernetes system identity cannot be an owner")
            )
        elif not _USER_NAME.fullmatch(owner):
            out.append(
                FieldViolation(
                    f"{field}[{i}]",
                    f"a user name of 1-{MAX_SUBJECT} letters, digits or . _ @ + : -, "
                    "starting with a letter or digit",
                )
            )
    return out


def check_labels(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    """Kubernetes label syntax, at most 32, and only labels a tenant may set on its
    namespace: unprefixed keys (Kubernetes keeps those for the user) other than the
    few that tools act on, and keys under :data:`TENANT_LABEL_PREFIXES`. Every other
    prefix may steer something in the cluster (Pod Security, OpenShift run levels,
    meshes, network policies matching on labels), so it is refused."""
    out = check_kubernetes_labels(labels, field, max_labels=MAX_LABELS)
    if len(labels) > MAX_LABELS:
        return out
    malformed = {v.field for v in out}
    for key in sorted(labels):
        if f"{field}[{key}]" in malformed:
            continue
        prefix, slash, _ = key.rpartition("/")
        if (
            slash
            and f"{prefix}/" not in TENANT_LABEL_PREFIXES
            and any(key.startswith(p) or f".{p}" in key for p in RESERVED_LABEL_PREFIXES)
        ):
            out.append(FieldViolation(f"{field}[{key}]", "managed by the Provisioner"))
        elif (slash and f"{prefix}/" not in TENANT_LABEL_PREFIXES) or key in UNSAFE_LABEL_KEYS:
            out.append(
                FieldViolation(
                    f"{field}[{key}]",
                    "not a tenant label: use an unprefixed key or the prefix "
                    f"{', '.join(TENANT_LABEL_PREFIXES)}",
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
