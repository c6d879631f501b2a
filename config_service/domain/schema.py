"""Config schemas: what each key of a service may hold, and its default."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import re2

from config_service.domain.patterns import MAX_PATTERN_CHARS, MAX_PATTERNS, compile_pattern
from config_service.domain.values import (
    ConfigValue,
    ValueType,
    check_name,
    check_text,
    check_value,
)
from servicekit.errors import FieldViolation

MAX_KEYS = 1000
MAX_DESCRIPTION_CHARS = 1000
# Encoded size of one service's schema, and of all schemas of an organization.
MAX_SCHEMA_BYTES = 256 * 1024
MAX_ORGANIZATION_SCHEMA_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class KeySchema:
    """Constraints on one key."""

    key: str
    type: ValueType
    default: ConfigValue | None = None
    minimum: float | None = None
    maximum: float | None = None
    allowed_values: tuple[str, ...] = ()
    pattern: str = ""
    description: str = ""

    def check(self, value: ConfigValue, field: str) -> list[FieldViolation]:
        """Violations of this key's constraints by ``value``."""
        if value.type is not self.type:
            return [
                FieldViolation(
                    field, f"the schema requires a {self.type.value} value, not {value.type.value}"
                )
            ]
        violations: list[FieldViolation] = []
        # Python compares int with float exactly: no float() that would round 2**53 + 1.
        measure: int | float | None
        if self.type in (ValueType.INT, ValueType.DOUBLE):
            measure, what = value.data, "value"
        elif self.type is ValueType.STRING:
            measure, what = len(value.data), "length"
        else:
            measure, what = None, ""
        if measure is not None:
            if self.minimum is not None and measure < self.minimum:
                violations.append(
                    FieldViolation(field, f"{what} is below the minimum {self.minimum:g}")
                )
            if self.maximum is not None and measure > self.maximum:
                violations.append(
                    FieldViolation(field, f"{what} is above the maximum {self.maximum:g}")
                )
        if self.allowed_values and value.data not in self.allowed_values:
            violations.append(
                FieldViolation(field, f"must be one of {', '.join(self.allowed_values)}")
            )
        if self.pattern and compile_pattern(self.pattern).fullmatch(value.data) is None:
            violations.append(FieldViolation(field, f"must match the pattern {self.pattern!r}"))
        return violations

    def to_json(self) -> dict[str, Any]:
        """Storage form."""
        return {
            "key": self.key,
            "type": self.type.value,
            "default": self.default.to_json() if self.default is not None else None,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "allowed_values": list(self.allowed_values),
            "pattern": self.pattern,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeySchema:
        """The inverse of :meth:`to_json`."""
        return cls(
            key=data["key"],
            type=ValueType(data["type"]),
            default=ConfigValue.from_json(data["default"]) if data.get("default") else None,
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
            allowed_values=tuple(data.get("allowed_values", ())),
            pattern=data.get("pattern", ""),
            description=data.get("description", ""),
        )


@dataclasses.dataclass(frozen=True)
class ServiceSchema:
    """The schema of one service's keys."""

    keys: tuple[KeySchema, ...]
    strict: bool = False

    def key(self, name: str) -> KeySchema | None:
        """The schema of key ``name``, if listed."""
        for key in self.keys:
            if key.key == name:
                return key
        return None

    def check(
        self, key: str, value: ConfigValue, field: str, key_field: str
    ) -> list[FieldViolation]:
        """Violations of the schema by setting ``key`` to ``value``."""
        schema = self.key(key)
        if schema is None:
            if self.strict:
                return [FieldViolation(key_field, "not a key of the service's strict schema")]
            return []
        return schema.check(value, field)

    def to_json(self) -> dict[str, Any]:
        """Storage form."""
        return {"strict": self.strict, "keys": [k.to_json() for k in self.keys]}

    def encoded_size(self) -> int:
        """Bytes of the stored form (bounded by :data:`MAX_SCHEMA_BYTES`)."""
        return len(json.dumps(self.to_json(), separators=(",", ":")).encode())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceSchema:
        """The inverse of :meth:`to_json`."""
        return cls(
            keys=tuple(KeySchema.from_json(k) for k in data.get("keys", ())),
            strict=bool(data.get("strict", False)),
        )


@dataclasses.dataclass(frozen=True)
class StoredSchema:
    """A service's schema with its bookkeeping."""

    service: str
    schema: ServiceSchema
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, for idempotency records."""
        return {
            "service": self.service,
            "schema": self.schema.to_json(),
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredSchema:
        """The inverse of :meth:`to_json`."""
        return cls(
            service=data["service"],
            schema=ServiceSchema.from_json(data["schema"]),
            version=int(data["version"]),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            updated_at=dt.datetime.fromisoformat(data["updated_at"]),
        )

    @property
    def etag(self) -> str:
        """Opaque version of the schema (AIP-154)."""
        return f'"{self.version}"'


def check_schema(schema: ServiceSchema, field: str = "schema") -> list[FieldViolation]:
    """Checks that a schema is consistent: unique keys, sound bounds, valid defaults.

    Compile its patterns with :func:`~config_service.domain.patterns.precompile` first
    (a step at a time, within a time budget): here they come from the cache.
    """
    violations: list[FieldViolation] = []
    if len(schema.keys) > MAX_KEYS:
        return [FieldViolation(f"{field}.keys", f"at most {MAX_KEYS} keys")]
    if sum(1 for key in schema.keys if key.pattern) > MAX_PATTERNS:
        return [FieldViolation(f"{field}.keys", f"at most {MAX_PATTERNS} keys with a pattern")]
    # Defaults first: one that is no JSON (nested too deep, a NaN) cannot be measured.
    defaults = [
        v
        for i, key in enumerate(schema.keys)
        if key.default is not None
        for v in check_value(key.default, f"{field}.keys[{i}].default_value")
    ]
    if defaults:
        return defaults
    if schema.encoded_size() > MAX_SCHEMA_BYTES:
        return [FieldViolation(field, f"at most {MAX_SCHEMA_BYTES // 1024} KiB encoded")]
    seen: set[str] = set()
    for i, key in enumerate(schema.keys):
        at = f"{field}.keys[{i}]"
        problems = check_name(key.key, f"{at}.key")
        if key.key in seen:
            problems.append(FieldViolation(f"{at}.key", "duplicate key"))
        seen.add(key.key)
        numeric_or_string = key.type in (ValueType.INT, ValueType.DOUBLE, ValueType.STRING)
        for bound in ("minimum", "maximum"):
            value = getattr(key, bound)
            if value is not None and not numeric_or_string:
                problems.append(
                    FieldViolation(f"{at}.{bound}", "only INT, DOUBLE and STRING keys have bounds")
                )
            elif value is not None and not math.isfinite(value):
                # Neither is JSON: the schema could not be stored.
                problems.append(FieldViolation(f"{at}.{bound}", "must be a finite number"))
        if key.minimum is not None and key.maximum is not None and key.maximum < key.minimum:
            problems.append(FieldViolation(f"{at}.maximum", "must be >= minimum"))
        if key.allowed_values and key.type is not ValueType.STRING:
            problems.append(FieldViolation(f"{at}.allowed_values", "only STRING keys"))
        # (A NUL in any allowed value is a NUL in them all joined.)
        problems += check_text("".join(key.allowed_values), f"{at}.allowed_values")
        problems += check_text(key.description, f"{at}.description")
        if key.pattern:
            nul = check_text(key.pattern, f"{at}.pattern")
            if key.type is not ValueType.STRING:
                problems.append(FieldViolation(f"{at}.pattern", "only STRING keys"))
            elif nul:
                problems += nul
            elif len(key.pattern) > MAX_PATTERN_CHARS:
                problems.append(
                    FieldViolation(f"{at}.pattern", f"at most {MAX_PATTERN_CHARS} characters")
                )
            else:
                try:
                    compile_pattern(key.pattern)
                except re2.error as exc:
                    problems.append(FieldViolation(f"{at}.pattern", f"not valid RE2: {exc}"))
        if len(key.description) > MAX_DESCRIPTION_CHARS:
            problems.append(
                FieldViolation(f"{at}.description", f"at most {MAX_DESCRIPTION_CHARS} characters")
            )
        if key.default is not None and not problems:
            # The default must itself pass the key's constraints.
            problems += check_value(key.default, f"{at}.default_value") or key.check(
                key.default, f"{at}.default_value"
            )
        violations += problems
    return violations


def violations_of_existing(
    schema: ServiceSchema, values: Iterable[tuple[str, ConfigValue]]
) -> list[FieldViolation]:
    """Keys already set that a new schema would reject: field = the key."""
    problems: list[FieldViolation] = []
    for key, value in values:
        for v in schema.check(key, value, key, key):
            problems.append(FieldViolation(key, v.description))
    return problems
