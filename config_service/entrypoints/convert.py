"""Protobuf ↔ domain for ConfigService. The only module that knows both."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agentready.config.v1 import config_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from config_service.domain.model import SET, Change, Entry, Event, etag
from config_service.domain.schema import KeySchema, ServiceSchema, StoredSchema
from config_service.domain.values import (
    MAX_JSON_DEPTH,
    MAX_JSON_WIRE_BYTES,
    NOT_FINITE,
    TOO_DEEP,
    TOO_LARGE,
    ConfigValue,
    FeatureFlag,
    FlagVariant,
    ValueType,
)
from config_service.service_layer.clients import ClientStatus

_TYPES = {
    ValueType.STRING: config_pb2.VALUE_TYPE_STRING,
    ValueType.INT: config_pb2.VALUE_TYPE_INT,
    ValueType.DOUBLE: config_pb2.VALUE_TYPE_DOUBLE,
    ValueType.BOOL: config_pb2.VALUE_TYPE_BOOL,
    ValueType.JSON: config_pb2.VALUE_TYPE_JSON,
    ValueType.FEATURE_FLAG: config_pb2.VALUE_TYPE_FEATURE_FLAG,
}
_TYPES_BACK = {v: k for k, v in _TYPES.items()}
_KINDS = {
    "string_value": ValueType.STRING,
    "int_value": ValueType.INT,
    "double_value": ValueType.DOUBLE,
    "bool_value": ValueType.BOOL,
    "json_value": ValueType.JSON,
    "flag_value": ValueType.FEATURE_FLAG,
}
_FIELDS = {v: k for k, v in _KINDS.items()}
T = TypeVar("T")


def json_depth(message: struct_pb2.Value) -> int:
    """Nesting depth of a JSON value (a scalar is 1), without recursion."""
    deepest, todo = 0, [(message, 1)]
    while todo:
        value, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            todo.extend((v, depth + 1) for v in value.struct_value.fields.values())
        elif kind == "list_value":
            todo.extend((v, depth + 1) for v in value.list_value.values)
    return deepest


def json_finite(message: struct_pb2.Value) -> bool:
    """Whether every number in a JSON value is finite (NaN and infinities have no JSON
    form), without recursion."""
    todo = [message]
    while todo:
        value = todo.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return False
        if kind == "struct_value":
            todo.extend(value.struct_value.fields.values())
        elif kind == "list_value":
            todo.extend(value.list_value.values)
    return True


def _json(message: struct_pb2.Value) -> Any:
    if message.ByteSize() > MAX_JSON_WIRE_BYTES:  # measured in C, without converting
        return TOO_LARGE
    if json_depth(message) > MAX_JSON_DEPTH:
        return TOO_DEEP
    if not json_finite(message):
        return NOT_FINITE
    return _plain_zeros(json_format.MessageToDict(message))


def _plain(number: float) -> float:
    """``number``, with a negative zero made 0.0. Values are stored as jsonb, whose
    numbers have no negative zero: a -0.0 kept as written would be read back as 0.0,
    so the write's answer and the streams it is handed to from memory would show
    another value than every read from PostgreSQL."""
    return 0.0 if number == 0 else number


def _plain_zeros(data: Any) -> Any:
    """``data`` (plain JSON) with every number made :func:`_plain`, in place and
    without recursion."""
    if isinstance(data, float):
        return _plain(data)
    todo = [data] if isinstance(data, dict | list) else []
    while todo:
        container = todo.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for at, item in list(items):
            if isinstance(item, float) and item == 0:
                container[at] = 0.0
            elif isinstance(item, dict | list):
                todo.append(item)
    return data


def _to_json_value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


def value_from_proto(message: config_pb2.Value) -> ConfigValue | None:
    """The domain value of a ``Value``; None when no kind is set."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    value_type = _KINDS[kind]
    if value_type is ValueType.JSON:
        return ConfigValue(value_type, _json(message.json_value))
    if value_type is ValueType.FEATURE_FLAG:
        flag = message.flag_value
        return ConfigValue(
            value_type,
            FeatureFlag(
                enabled=flag.enabled,
                rollout_percent=_plain(flag.rollout_percent)
                if flag.HasField("rollout_percent")
                else None,
                allow_list=tuple(flag.allow_list),
                deny_list=tuple(flag.deny_list),
                variants=tuple(
                    FlagVariant(v.name, v.weight, _json(v.value) if v.HasField("value") else None)
                    for v in flag.variants
                ),
                default_variant=flag.default_variant,
                salt=flag.salt,
            ),
        )
    if value_type is ValueType.DOUBLE:
        return ConfigValue(value_type, _plain(message.double_value))
    return ConfigValue(value_type, getattr(message, kind))


def value_to_proto(value: ConfigValue) -> config_pb2.Value:
    """The ``Value`` of a domain value."""
    if value.type is ValueType.JSON:
        return config_pb2.Value(json_value=_to_json_value(value.data))
    if value.type is ValueType.FEATURE_FLAG:
        flag: FeatureFlag = value.data
        message = config_pb2.FeatureFlag(
            enabled=flag.enabled,
            allow_list=flag.allow_list,
            deny_list=flag.deny_list,
            default_variant=flag.default_variant,
            salt=flag.salt,
        )
        if flag.rollout_percent is not None:
            message.rollout_percent = flag.rollout_percent
        for variant in flag.variants:
            proto_variant = message.variants.add(name=variant.name, weight=variant.weight)
            if variant.value is not None:
                proto_variant.value.CopyFrom(_to_json_value(variant.value))
        return config_pb2.Value(flag_value=message)
    return config_pb2.Value(**{_FIELDS[value.type]: value.data})


def timestamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None for no moment."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def client_to_proto(
    organization: str, client: ClientStatus, revision: int
) -> config_pb2.ConfigClient:
    """A client's last report, with its lag behind ``revision``."""
    return config_pb2.ConfigClient(
        organization=organization,
        client_id=client.client_id,
        labels=client.labels,
        applied_revision=client.applied_revision,
        lag=max(0, revision - client.applied_revision),
        rejected_revision=client.rejected_revision,
        rejection_reason=client.rejection_reason,
        rejected_at=timestamp(client.rejected_at),
        last_seen=timestamp(client.last_seen),
    )


def _message_bytes(message: Message) -> int:
    """Encoded size of ``message`` as a repeated field's element."""
    return message.ByteSize() + 6


def entry_to_proto(organization: str, entry: Entry) -> config_pb2.ConfigEntry:
    """A ``ConfigEntry``."""
    return config_pb2.ConfigEntry(
        organization=organization,
        service=entry.service,
        key=entry.key,
        value=value_to_proto(entry.value),
        revision=entry.revision,
        is_default=entry.is_default,
        update_time=timestamp(entry.updated_at),
        update_actor=entry.updated_by,
        etag="" if entry.is_default else etag(entry.revision),
    )


def change_to_proto(organization: str, change: Change) -> config_pb2.ConfigChange:
    """A ``ConfigChange``."""
    entry = change.entry()
    return config_pb2.ConfigChange(
        service=change.service,
        key=change.key,
        type=config_pb2.CHANGE_TYPE_SET if change.kind == SET else config_pb2.CHANGE_TYPE_DELETE,
        entry=entry_to_proto(organization, entry) if entry else None,
    )


def history_to_proto(organization: str, change: Change) -> config_pb2.ConfigHistoryEntry:
    """A ``ConfigHistoryEntry``."""
    return config_pb2.ConfigHistoryEntry(
        revision=change.revision,
        organization=organization,
        service=change.service,
        key=change.key,
        type=config_pb2.CHANGE_TYPE_SET if change.kind == SET else config_pb2.CHANGE_TYPE_DELETE,
        old_value=value_to_proto(change.old_value) if change.old_value else None,
        new_value=value_to_proto(change.new_value) if change.new_value else None,
        actor=change.actor,
        reason=change.reason,
        request_id=change.request_id,
        create_time=timestamp(change.created_at),
    )


def known_value_type(number: int) -> bool:
    """Whether ``number`` is a ValueType this server knows (UNSPECIFIED is not one)."""
    return number in _TYPES_BACK


def schema_from_proto(message: config_pb2.ConfigSchema) -> ServiceSchema:
    """The domain schema of a ``ConfigSchema`` (checked later by the domain)."""
    return ServiceSchema(
        keys=tuple(
            KeySchema(
                key=k.key,
                type=_TYPES_BACK.get(k.type, ValueType.STRING),
                default=value_from_proto(k.default_value) if k.HasField("default_value") else None,
                minimum=k.minimum if k.HasField("minimum") else None,
                maximum=k.maximum if k.HasField("maximum") else None,
                allowed_values=tuple(k.allowed_values),
                pattern=k.pattern,
                description=k.description,
            )
            for k in message.keys
        ),
        strict=message.strict,
    )


def schema_to_proto(organization: str, stored: StoredSchema) -> config_pb2.ConfigSchema:
    """A ``ConfigSchema``."""
    message = config_pb2.ConfigSchema(
        organization=organization,
        service=stored.service,
        strict=stored.schema.strict,
        create_time=timestamp(stored.created_at),
        update_time=timestamp(stored.updated_at),
        etag=stored.etag,
    )
    for key in stored.schema.keys:
        proto_key = message.keys.add(
            key=key.key,
            type=_TYPES[key.type],
            allowed_values=key.allowed_values,
            pattern=key.pattern,
            description=key.description,
        )
        if key.default is not None:
            proto_key.default_value.CopyFrom(value_to_proto(key.default))
        if key.minimum is not None:
            proto_key.minimum = key.minimum
        if key.maximum is not None:
            proto_key.maximum = key.maximum
    return message


# A split SNAPSHOT or CHANGE puts at most about this many bytes of entries or changes
# in one message (one item more at most: an entry is under 70 KiB), so every message
# stays far below the 4 MiB a default client accepts, whatever the limits are set to.
MAX_WATCH_MESSAGE_BYTES = 1024 * 1024


def _parts(items: Sequence[T], size: Callable[[T], int]) -> list[Sequence[T]]:
    """``items`` cut into consecutive parts of about :data:`MAX_WATCH_MESSAGE_BYTES`."""
    parts: list[Sequence[T]] = []
    start = total = 0
    for index, item in enumerate(items):
        total += size(item)
        if total > MAX_WATCH_MESSAGE_BYTES and index > start:
            parts.append(items[start:index])
            start, total = index, size(item)
    parts.append(items[start:])
    return parts


class WatchMessages:
    """Builds WatchConfig messages (the hub calls :meth:`event` once per filter).

    A SNAPSHOT or CHANGE too large for one message comes out as several, each but the
    last marked ``fragment``.
    """

    Response = config_pb2.WatchConfigResponse

    def event(
        self, event: Event, services: frozenset[str] | None
    ) -> tuple[config_pb2.WatchConfigResponse, ...] | None:
        """The CHANGE message(s) of a revision, or None when nothing matches ``services``."""
        changes = [
            change_to_proto(event.organization, c)
            for c in event.changes
            if services is None or c.service in services
        ]
        if not changes:
            return None
        parts = _parts(changes, _message_bytes) if len(changes) > 1 else [changes]
        commit_time = timestamp(event.commit_time)
        return tuple(
            self.Response(
                type=self.Response.EVENT_TYPE_CHANGE,
                revision=event.revision,
                changes=part,
                commit_time=commit_time,
                fragment=index < len(parts) - 1,
            )
            for index, part in enumerate(parts)
        )

    def snapshot(
        self,
        organization: str,
        revision: int,
        compact_revision: int,
        entries: Sequence[Entry],
        reset: bool,
        commit_time: dt.datetime | None,
    ) -> tuple[config_pb2.WatchConfigResponse, ...]:
        """The SNAPSHOT message(s)."""
        protos = [entry_to_proto(organization, e) for e in entries]
        parts = _parts(protos, _message_bytes)
        when = timestamp(commit_time) if revision else None
        return tuple(
            self.Response(
                type=self.Response.EVENT_TYPE_SNAPSHOT,
                revision=revision,
                entries=part,
                reset=reset,
                commit_time=when,
                compact_revision=compact_revision,
                fragment=index < len(parts) - 1,
            )
            for index, part in enumerate(parts)
        )

    def progress(self, revision: int, compact_revision: int) -> config_pb2.WatchConfigResponse:
        """A PROGRESS message."""
        return self.Response(
            type=self.Response.EVENT_TYPE_PROGRESS,
            revision=revision,
            commit_time=timestamp(dt.datetime.now(dt.UTC)),
            compact_revision=compact_revision,
        )
