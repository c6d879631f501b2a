"""Typed configuration values, names, and the checks every write goes through."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from servicekit.errors import FieldViolation

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
MAX_VALUE_BYTES = 64 * 1024
MAX_LIST_ITEMS = 1000
# A flag picks among a handful of variants; more is a mistake or an attack on the
# evaluation every pod runs per subject.
MAX_FLAG_VARIANTS = 100
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ValueType(enum.Enum):
    """The type of a configuration value."""

    STRING = "string"
    INT = "int"
    DOUBLE = "double"
    BOOL = "bool"
    JSON = "json"
    FEATURE_FLAG = "feature_flag"


@dataclasses.dataclass(frozen=True)
class FlagVariant:
    """One variant of a feature flag."""

    name: str
    weight: int
    value: Any = None


@dataclasses.dataclass(frozen=True)
class FeatureFlag:
    """A feature flag: evaluated per subject by the SDK with a stable hash."""

    enabled: bool
    rollout_percent: float | None = None
    allow_list: tuple[str, ...] = ()
    deny_list: tuple[str, ...] = ()
    variants: tuple[FlagVariant, ...] = ()
    default_variant: str = ""
    salt: str = ""

    def to_json(self) -> dict[str, Any]:
        """The flag as plain JSON."""
        return {
            "enabled": self.enabled,
            "rollout_percent": self.rollout_percent,
            "allow_list": list(self.allow_list),
            "deny_list": list(self.deny_list),
            "variants": [dataclasses.asdict(v) for v in self.variants],
            "default_variant": self.default_variant,
            "salt": self.salt,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureFlag:
        """The inverse of :meth:`to_json`."""
        return cls(
            enabled=bool(data["enabled"]),
            rollout_percent=data.get("rollout_percent"),
            allow_list=tuple(data.get("allow_list", ())),
            deny_list=tuple(data.get("deny_list", ())),
            variants=tuple(FlagVariant(**v) for v in data.get("variants", ())),
            default_variant=data.get("default_variant", ""),
            salt=data.get("salt", ""),
        )


@dataclasses.dataclass(frozen=True)
class ConfigValue:
    """A typed value: ``data`` is str, int, float, bool, any JSON, or a FeatureFlag."""

    type: ValueType
    data: Any

    def to_json(self) -> dict[str, Any]:
        """Storage form: ``{"type": "int", "data": 5}``."""
        data = self.data.to_json() if isinstance(self.data, FeatureFlag) else self.data
        return {"type": self.type.value, "data": data}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> ConfigValue:
        """The inverse of :meth:`to_json`."""
        kind = ValueType(stored["type"])
        data = stored["data"]
        if kind is ValueType.FEATURE_FLAG:
            data = FeatureFlag.from_json(data)
        elif kind is ValueType.DOUBLE:
            data = float(data)
        return cls(kind, data)

    def encoded_size(self) -> int:
        """Bytes of the stored form, as compact JSON in UTF-8; bounded by
        :data:`MAX_VALUE_BYTES`. (Characters outside ASCII count as their UTF-8 bytes,
        not as ``\\uXXXX`` escapes six bytes long.)"""
        return len(json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode())


def check_name(name: str, field: str) -> list[FieldViolation]:
    """A service or key name: 1-63 of ``[a-z0-9._-]``, alphanumeric at both ends."""
    if not name:
        return [FieldViolation(field, "required")]
    if not NAME_RE.fullmatch(name):
        return [
            FieldViolation(
                field,
                "must be 1-63 characters of lowercase letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit",
            )
        ]
    return []


# JSON nesting a value may have: every level is two protobuf message levels on the wire
# (Value, then Struct or ListValue), inside the envelopes of WatchConfigResponse and its
# entry; 32 keeps every message under the protobuf recursion limit of 100 that C++ and
# Java clients apply by default.
MAX_JSON_DEPTH = 32


class _TooDeep:
    """Stands for a JSON value nested deeper than :data:`MAX_JSON_DEPTH` (it is never
    converted, so converting cannot exhaust the stack)."""

    def __repr__(self) -> str:
        return "<JSON nested too deep>"


TOO_DEEP: Any = _TooDeep()


class _NotFinite:
    """Stands for a JSON value holding a NaN or an infinity: a protobuf ``Value`` can
    carry them, JSON (and so jsonb) has no form for them."""

    def __repr__(self) -> str:
        return "<JSON with NaN or infinity>"


NOT_FINITE: Any = _NotFinite()


class _TooLarge:
    """Stands for a JSON value whose protobuf form alone is too large for it to fit
    :data:`MAX_VALUE_BYTES` (it is never converted: converting takes time in
    proportion to its size, on the event loop)."""

    def __repr__(self) -> str:
        return "<JSON too large>"


TOO_LARGE: Any = _TooLarge()
# A JSON value's protobuf form takes at most about three times the bytes of its stored
# JSON form (a list of numbers: 11 bytes an item against 4, "1.0,"), so one whose
# protobuf form is larger than this cannot fit MAX_VALUE_BYTES.
MAX_JSON_WIRE_BYTES = 6 * MAX_VALUE_BYTES

_NUL = "\x00"
_NUL_MESSAGE = "must not contain NUL (U+0000) characters"


def check_text(text: str, field: str) -> list[FieldViolation]:
    """No NUL in ``text``: PostgreSQL text and jsonb cannot hold U+0000, so it is
    refused up front, clearly."""
    return [FieldViolation(field, _NUL_MESSAGE)] if _NUL in text else []


def _check_json(data: Any, field: str) -> list[FieldViolation]:
    if data is TOO_DEEP:
        return [FieldViolation(field, f"nested deeper than {MAX_JSON_DEPTH} levels")]
    if data is TOO_LARGE:
        return [FieldViolation(field, f"larger than {MAX_VALUE_BYTES} bytes")]
    if data is NOT_FINITE or (isinstance(data, float) and not math.isfinite(data)):
        return [FieldViolation(field, "NaN and infinities are not JSON")]
    if isinstance(data, str):
        return check_text(data, field)
    if isinstance(data, Mapping):
        return [
            v
            for key, item in data.items()
            for v in check_text(str(key), f"{field}.{key}") + _check_json(item, f"{field}.{key}")
        ]
    if isinstance(data, list | tuple):
        return [v for i, item in enumerate(data) for v in _check_json(item, f"{field}[{i}]")]
    return []


def _check_subjects(subjects: Sequence[str], field: str) -> list[FieldViolation]:
    if len(subjects) > MAX_LIST_ITEMS:
        return [FieldViolation(field, f"at most {MAX_LIST_ITEMS} subjects")]
    if any(not s for s in subjects):
        return [FieldViolation(field, "subjects must not be empty")]
    if any(_NUL in s for s in subjects):
        return [FieldViolation(field, _NUL_MESSAGE)]
    return []


def _check_flag(flag: FeatureFlag, field: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    pct = flag.rollout_percent
    if pct is not None and (not math.isfinite(pct) or not 0 <= pct <= 100):
        violations.append(FieldViolation(f"{field}.rollout_percent", "must be from 0 to 100"))
    violations += _check_subjects(flag.allow_list, f"{field}.allow_list")
    violations += _check_subjects(flag.deny_list, f"{field}.deny_list")
    if len(flag.variants) > MAX_FLAG_VARIANTS:
        violations.append(
            FieldViolation(f"{field}.variants", f"at most {MAX_FLAG_VARIANTS} variants")
        )
    names: set[str] = set()
    for i, variant in enumerate(flag.variants[: MAX_FLAG_VARIANTS + 1]):
        violations += check_name(variant.name, f"{field}.variants[{i}].name")
        if variant.name in names:
            violations.append(FieldViolation(f"{field}.variants[{i}].name", "duplicate name"))
        names.add(variant.name)
        violations += _check_json(variant.value, f"{field}.variants[{i}].value")
    violations += check_text(flag.salt, f"{field}.salt")
    if flag.default_variant and flag.default_variant not in names:
        violations.append(
            FieldViolation(f"{field}.default_variant", "must name one of the variants")
        )
    return violations


# The request field of each value type: violations name the oneof case they are in.
ONEOF_FIELDS = {
    ValueType.STRING: "string_value",
    ValueType.INT: "int_value",
    ValueType.DOUBLE: "double_value",
    ValueType.BOOL: "bool_value",
    ValueType.JSON: "json_value",
    ValueType.FEATURE_FLAG: "flag_value",
}


def check_value(value: ConfigValue | None, field: str = "value") -> list[FieldViolation]:
    """Checks a value on its own (its schema is checked separately).

    ``field`` is the request field holding the ``Value``; violations name the field
    inside it, e.g. ``value.flag_value.rollout_percent``.
    """
    if value is None:
        return [FieldViolation(field, "required: set one of the value kinds")]
    at = f"{field}.{ONEOF_FIELDS[value.type]}"
    violations: list[FieldViolation] = []
    if value.type is ValueType.STRING:
        violations += check_text(value.data, at)
    if value.type is ValueType.INT and not INT64_MIN <= value.data <= INT64_MAX:
        violations.append(FieldViolation(at, "out of the int64 range"))
    if value.type is ValueType.DOUBLE and not math.isfinite(value.data):
        violations.append(FieldViolation(at, "NaN and infinities are not allowed"))
    if value.type is ValueType.JSON:
        violations += _check_json(value.data, at)
    if value.type is ValueType.FEATURE_FLAG:
        violations += _check_flag(value.data, at)
    if not violations and value.encoded_size() > MAX_VALUE_BYTES:
        violations.append(FieldViolation(field, f"larger than {MAX_VALUE_BYTES} bytes"))
    return violations
