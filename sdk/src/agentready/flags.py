"""Feature-flag evaluation: the same answer for a subject in every pod and every SDK.

The rule is the contract's (``agentready.config.v1.FeatureFlag``): a disabled flag is
off; the deny list wins, then the allow list; everyone else is placed in one of 10,000
buckets by SHA-256 of ``salt:subject`` and is on when the bucket falls under the
rollout percentage, so raising the percentage only ever adds subjects. Variants are
chosen by a second hash among the subjects that are on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from google.protobuf import json_format

from agentready.config.v1 import config_pb2

BUCKETS = 10_000


@dataclasses.dataclass(frozen=True)
class FlagResult:
    """The outcome of evaluating a flag for one subject.

    Attributes:
        enabled: whether the flag is on for the subject.
        variant: the variant's name (``default_variant`` when off; may be empty).
        value: the variant's payload as plain JSON, or None.
        reason: why: ``disabled``, ``denied``, ``allowed``, ``rollout`` (in the
            rollout) or ``excluded`` (outside it); ``missing`` from
            :meth:`~agentready.ConfigWatcher.flag` when no flag is set at that key.
    """

    enabled: bool
    variant: str
    value: Any
    reason: str


def bucket(salt: str, subject: str, modulus: int, suffix: str = "") -> int:
    """The subject's place among ``modulus`` buckets for this salt (stable forever)."""
    digest = hashlib.sha256(f"{salt}:{subject}{suffix}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulus


def evaluate_flag(
    flag: config_pb2.FeatureFlag, subject: str, *, service: str, key: str
) -> FlagResult:
    """Evaluates ``flag`` (stored at ``service``/``key``) for ``subject``.

    Args:
        flag: the flag's value, e.g. ``entry.value.flag_value``.
        subject: a stable identifier of who asks: a user id, an organization slug...
        service: the flag's service (part of the default salt).
        key: the flag's key (part of the default salt).
    """
    salt = flag.salt or f"{service}/{key}"
    if not flag.enabled:
        return _off(flag, "disabled")
    if subject in flag.deny_list:
        return _off(flag, "denied")
    if subject in flag.allow_list:
        return _on(flag, salt, subject, "allowed")
    percent = flag.rollout_percent if flag.HasField("rollout_percent") else 100.0
    if bucket(salt, subject, BUCKETS) < percent * 100:
        return _on(flag, salt, subject, "rollout")
    return _off(flag, "excluded")


def _payload(flag: config_pb2.FeatureFlag, name: str) -> Any:
    for variant in flag.variants:
        if variant.name == name:
            return json_format.MessageToDict(variant.value) if variant.HasField("value") else None
    return None


def _off(flag: config_pb2.FeatureFlag, reason: str) -> FlagResult:
    name = flag.default_variant
    return FlagResult(False, name, _payload(flag, name) if name else None, reason)


def _on(flag: config_pb2.FeatureFlag, salt: str, subject: str, reason: str) -> FlagResult:
    total = sum(v.weight for v in flag.variants)
    name = flag.default_variant
    if total > 0:
        point = bucket(salt, subject, total, ":variant")
        running = 0
        for variant in flag.variants:
            running += variant.weight
            if running > point:
                name = variant.name
                break
    return FlagResult(True, name, _payload(flag, name) if name else None, reason)
