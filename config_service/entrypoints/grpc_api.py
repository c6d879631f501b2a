"""The ConfigService servicer: checks the caller and the request, calls the use cases,
answers in protobuf. Domain errors become ``google.rpc.Status`` in the shared call path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from google.protobuf import duration_pb2, empty_pb2
from google.protobuf.message import Message

from config_service import metrics
from config_service.adapters.postgres import ConfigStore
from config_service.domain.model import Mutation
from config_service.domain.schema import MAX_ORGANIZATION_SCHEMA_BYTES
from config_service.domain.values import check_name, check_value
from config_service.entrypoints import convert
from config_service.service_layer import watch as watch_use_case
from config_service.service_layer.clients import ConfigClients, Selector
from config_service.service_layer.hub import Hub
from config_service.service_layer.reads import ConfigReader
from config_service.service_layer.writes import ConfigWriter
from servicekit.errors import FieldViolation, InvalidArgument
from servicekit.pagination import MAX_PAGE_BYTES, decode_token, next_page, page_size
from servicekit.requests import (
    check_kubernetes_labels,
    check_organization,
    check_reason,
    raise_if_invalid,
    request_key,
)
from servicekit.rpc import authorize, authorize_operator

READ, WRITE, PURGE = "config:read", "config:write", "config:purge"
# Services one WatchConfig stream may filter on (a pod watches a few).
MAX_WATCH_SERVICES = 100
MAX_BATCH = 100
DEFAULT_PROGRESS_SECONDS = 5.0


# A client's identity: "<namespace>/<pod>", "<host>/<pid>" and the like.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/@-]{1,253}")


def _bytes(item: tuple[Any, Message]) -> int:
    """Encoded size of a listed item's message (pages are cut by bytes too)."""
    return item[1].ByteSize() + 6


def _expected(request: Any) -> int | None:
    if not request.HasField("expected_revision"):
        return None
    if request.expected_revision < 0:
        raise InvalidArgument.field("expected_revision", "must not be negative")
    return int(request.expected_revision)


def progress_seconds(given: duration_pb2.Duration | None) -> float | None:
    """A WatchConfig stream's progress interval: unset or zero = the default, clamped
    to 1-60 seconds; None when negative (INVALID_ARGUMENT)."""
    seconds = given.seconds + given.nanos / 1e9 if given is not None else 0.0
    if seconds < 0:
        return None
    return min(max(seconds, 1.0), 60.0) if seconds > 0 else DEFAULT_PROGRESS_SECONDS


class ConfigServiceServicer(config_service_pb2_grpc.ConfigServiceServicer):
    """ConfigService over gRPC."""

    def __init__(
        self, store: ConfigStore, writer: ConfigWriter, hub: Hub, clients: ConfigClients
    ) -> None:
        self._store = store
        self._writer = writer
        self._reader = ConfigReader(store)
        self._hub = hub
        self._clients = clients
        self._messages = convert.WatchMessages()

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: Any
    ) -> config_pb2.ConfigEntry:
        actor = authorize(request.organization, WRITE)
        value = convert.value_from_proto(request.value) if request.HasField("value") else None
        raise_if_invalid(
            check_organization(request.organization)
            + check_name(request.service, "service")
            + check_name(request.key, "key")
            + check_value(value)
            + check_reason(request.reason)
        )
        mutation = Mutation(
            request.service,
            request.key,
            value,
            expected_revision=_expected(request),
            etag=request.etag,
        )
        commit = await self._writer.apply(
            request.organization,
            [mutation],
            actor=actor,
            reason=request.reason,
            request=request_key("SetConfig", request),
        )
        (entry,) = commit.entries
        return convert.entry_to_proto(request.organization, entry)

    async def BatchSetConfig(
        self, request: config_pb2.BatchSetConfigRequest, context: Any
    ) -> config_pb2.BatchSetConfigResponse:
        actor = authorize(request.organization, WRITE)
        violations = check_organization(request.organization) + check_reason(request.reason)
        if not 1 <= len(request.mutations) <= MAX_BATCH:
            violations.append(FieldViolation("mutations", f"give 1 to {MAX_BATCH} mutations"))
        mutations: list[Mutation] = []
        for i, proto in enumerate(request.mutations):
            at = f"mutations[{i}]."
            violations += check_name(proto.service, f"{at}service")
            violations += check_name(proto.key, f"{at}key")
            op = proto.WhichOneof("op")
            value = None
            if op is None:
                violations.append(FieldViolation(f"{at}op", "set set_value or delete"))
            elif op == "set_value":
                value = convert.value_from_proto(proto.set_value)
                violations += check_value(value, f"{at}set_value")
            expected = None
            if proto.HasField("expected_revision"):
                expected = int(proto.expected_revision)
                if expected < 0:
                    violations.append(FieldViolation(f"{at}expected_revision", "negative"))
            mutations.append(
                Mutation(
                    proto.service,
                    proto.key,
                    value,
                    expected_revision=expected,
                    field=at,
                    value_field="set_value",
                )
            )
        raise_if_invalid(violations)
        commit = await self._writer.apply(
            request.organization,
            mutations,
            actor=actor,
            reason=request.reason,
            request=request_key("BatchSetConfig", request),
        )
        # History keeps (service, key) order; the answer follows the request's order.
        position = {(m.service, m.key): i for i, m in enumerate(mutations)}
        changes = sorted(commit.changes, key=lambda c: position[(c.service, c.key)])
        return config_pb2.BatchSetConfigResponse(
            revision=commit.revision,
            changes=[convert.change_to_proto(request.organization, c) for c in changes],
        )

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: Any
    ) -> config_pb2.ConfigEntry:
        authorize(request.organization, READ)
        raise_if_invalid(
            check_organization(request.organization)
            + check_name(request.service, "service")
            + check_name(request.key, "key")
        )
        entry = await self._reader.get(request.organization, request.service, request.key)
        return convert.entry_to_proto(request.organization, entry)

    async def ListConfigs(
        self, request: config_pb2.ListConfigsRequest, context: Any
    ) -> config_pb2.ListConfigsResponse:
        authorize(request.organization, READ)
        violations = check_organization(request.organization)
        if request.service:
            violations += check_name(request.service, "service")
        raise_if_invalid(violations)
        limit = page_size(request.page_size)
        binding = [request.organization, request.service, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=(str, str))
        entries, revision = await self._reader.entries(
            request.organization,
            service=request.service,
            after=tuple(after) if after else None,
            limit=limit + 1,
        )
        protos = [(e, convert.entry_to_proto(request.organization, e)) for e in entries]
        page, token = next_page(
            protos, limit, lambda p: [p[0].service, p[0].key], request=binding, size=_bytes
        )
        return config_pb2.ListConfigsResponse(
            configs=[p for _, p in page], next_page_token=token, revision=revision
        )

    async def DeleteConfig(
        self, request: config_pb2.DeleteConfigRequest, context: Any
    ) -> empty_pb2.Empty:
        actor = authorize(request.organization, WRITE)
        raise_if_invalid(
            check_organization(request.organization)
            + check_name(request.service, "service")
            + check_name(request.key, "key")
            + check_reason(request.reason)
        )
        mutation = Mutation(
            request.service,
            request.key,
            None,
            expected_revision=_expected(request),
            etag=request.etag,
        )
        await self._writer.apply(
            request.organization,
            [mutation],
            actor=actor,
            reason=request.reason,
            request=request_key("DeleteConfig", request),
        )
        return empty_pb2.Empty()

    async def ListConfigHistory(
        self, request: config_pb2.ListConfigHistoryRequest, context: Any
    ) -> config_pb2.ListConfigHistoryResponse:
        authorize(request.organization, READ)
        violations = check_organization(request.organization)
        if request.service:
            violations += check_name(request.service, "service")
        if request.key:
            violations += check_name(request.key, "key")
            if not request.service:
                violations.append(FieldViolation("service", "required when key is given"))
        if request.start_revision < 0:
            violations.append(FieldViolation("start_revision", "must not be negative"))
        if request.end_revision < 0:
            violations.append(FieldViolation("end_revision", "must not be negative"))
        if request.end_revision and request.end_revision < request.start_revision:
            violations.append(FieldViolation("end_revision", "must be >= start_revision"))
        raise_if_invalid(violations)
        limit = page_size(request.page_size)
        binding = [
            request.organization,
            request.service,
            request.key,
            request.start_revision,
            request.end_revision,
            request.page_size,
        ]
        after = decode_token(request.page_token, request=binding, shape=(int, int)) or (0, -1)
        changes, fitting = await self._reader.history(
            request.organization,
            service=request.service,
            key=request.key,
            start_revision=request.start_revision,
            end_revision=request.end_revision,
            after=(int(after[0]), int(after[1])),
            limit=limit,
            max_bytes=MAX_PAGE_BYTES,
        )
        protos = [(c, convert.history_to_proto(request.organization, c)) for c in changes]
        page, token = next_page(
            protos, fitting, lambda p: [p[0].revision, p[0].seq], request=binding, size=_bytes
        )
        return config_pb2.ListConfigHistoryResponse(
            history_entries=[p for _, p in page], next_page_token=token
        )

    async def RollbackConfig(
        self, request: config_pb2.RollbackConfigRequest, context: Any
    ) -> config_pb2.RollbackConfigResponse:
        actor = authorize(request.organization, WRITE)
        violations = check_organization(request.organization) + check_reason(request.reason)
        if request.revision < 0:
            violations.append(FieldViolation("revision", "must not be negative"))
        if request.service:
            violations += check_name(request.service, "service")
        if request.key:
            violations += check_name(request.key, "key")
            if not request.service:
                violations.append(FieldViolation("service", "required when key is given"))
        raise_if_invalid(violations)
        commit = await self._writer.rollback(
            request.organization,
            request.revision,
            service=request.service,
            key=request.key,
            actor=actor,
            reason=request.reason,
            request=request_key("RollbackConfig", request),
        )
        return config_pb2.RollbackConfigResponse(
            revision=commit.revision,
            changes=[convert.change_to_proto(request.organization, c) for c in commit.changes],
        )

    async def SetConfigSchema(
        self, request: config_pb2.SetConfigSchemaRequest, context: Any
    ) -> config_pb2.ConfigSchema:
        schema = request.schema
        authorize(schema.organization, WRITE)
        violations = check_organization(schema.organization, "schema.organization")
        violations += check_name(schema.service, "schema.service")
        for i, key in enumerate(schema.keys):
            if key.type == config_pb2.VALUE_TYPE_UNSPECIFIED:
                violations.append(FieldViolation(f"schema.keys[{i}].type", "required"))
            elif not convert.known_value_type(key.type):
                # An enum number this server does not know (a newer client's, or a
                # client in another language): refused, never read as another type.
                violations.append(
                    FieldViolation(f"schema.keys[{i}].type", f"unknown value type {key.type}")
                )
        raise_if_invalid(violations)
        stored = await self._writer.set_schema(
            schema.organization,
            schema.service,
            convert.schema_from_proto(schema),
            expected_etag=schema.etag,
            request=request_key("SetConfigSchema", request),
        )
        return convert.schema_to_proto(schema.organization, stored)

    async def GetConfigSchema(
        self, request: config_pb2.GetConfigSchemaRequest, context: Any
    ) -> config_pb2.ConfigSchema:
        authorize(request.organization, READ)
        raise_if_invalid(
            check_organization(request.organization) + check_name(request.service, "service")
        )
        stored = await self._reader.schema(request.organization, request.service)
        return convert.schema_to_proto(request.organization, stored)

    async def ListConfigSchemas(
        self, request: config_pb2.ListConfigSchemasRequest, context: Any
    ) -> config_pb2.ListConfigSchemasResponse:
        authorize(request.organization, READ)
        raise_if_invalid(check_organization(request.organization))
        limit = page_size(request.page_size)
        binding = [request.organization, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        schemas = await self._reader.schemas(
            request.organization, after=str(after), limit=limit + 1
        )
        protos = [(s, convert.schema_to_proto(request.organization, s)) for s in schemas]
        page, token = next_page(protos, limit, lambda p: p[0].service, request=binding, size=_bytes)
        return config_pb2.ListConfigSchemasResponse(
            schemas=[p for _, p in page], next_page_token=token
        )

    async def DeleteConfigSchema(
        self, request: config_pb2.DeleteConfigSchemaRequest, context: Any
    ) -> empty_pb2.Empty:
        authorize(request.organization, WRITE)
        raise_if_invalid(
            check_organization(request.organization) + check_name(request.service, "service")
        )
        await self._writer.delete_schema(
            request.organization, request.service, expected_etag=request.etag
        )
        return empty_pb2.Empty()

    async def GetConfigUsage(
        self, request: config_pb2.GetConfigUsageRequest, context: Any
    ) -> config_pb2.ConfigUsage:
        authorize(request.organization, READ)
        raise_if_invalid(check_organization(request.organization))
        usage, schema_bytes, revision = await self._reader.usage(request.organization)
        limits = self._writer.limits
        return config_pb2.ConfigUsage(
            organization=request.organization,
            keys=usage.keys,
            max_keys=limits.keys,
            bytes=usage.bytes,
            max_bytes=limits.bytes,
            schema_bytes=schema_bytes,
            max_schema_bytes=MAX_ORGANIZATION_SCHEMA_BYTES,
            revision=revision,
        )

    async def ReportConfigStatus(
        self, request: config_pb2.ReportConfigStatusRequest, context: Any
    ) -> empty_pb2.Empty:
        authorize(request.organization, READ)
        violations = check_organization(request.organization)
        if not _CLIENT_ID.fullmatch(request.client_id):
            violations.append(
                FieldViolation(
                    "client_id", "1-253 letters, digits and '.', '_', ':', '/', '@', '-'"
                )
            )
        violations += check_kubernetes_labels(request.labels, "labels", max_labels=20)
        for name in ("applied_revision", "rejected_revision"):
            if getattr(request, name) < 0:
                violations.append(FieldViolation(name, "must not be negative"))
        if len(request.rejection_reason) > 1000 or "\x00" in request.rejection_reason:
            violations.append(FieldViolation("rejection_reason", "at most 1000 characters, no NUL"))
        raise_if_invalid(violations)
        await self._clients.report(
            request.organization,
            request.client_id,
            labels=dict(request.labels),
            applied_revision=request.applied_revision,
            rejected_revision=request.rejected_revision,
            rejection_reason=request.rejection_reason,
        )
        return empty_pb2.Empty()

    async def ListConfigClients(
        self, request: config_pb2.ListConfigClientsRequest, context: Any
    ) -> config_pb2.ListConfigClientsResponse:
        authorize(request.organization, READ)
        raise_if_invalid(check_organization(request.organization))
        selector = Selector.parse(request.label_selector)
        limit = page_size(request.page_size)
        binding = [request.organization, request.label_selector, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        clients, revision = await self._clients.list(
            request.organization, selector=selector, after=str(after), limit=limit + 1
        )
        protos = [(c, convert.client_to_proto(request.organization, c, revision)) for c in clients]
        page, token = next_page(
            protos, limit, lambda p: p[0].client_id, request=binding, size=_bytes
        )
        return config_pb2.ListConfigClientsResponse(
            clients=[p for _, p in page], next_page_token=token, revision=revision
        )

    def WatchConfig(
        self, request: config_pb2.WatchConfigRequest, context: Any
    ) -> AsyncIterator[config_pb2.WatchConfigResponse]:
        authorize(request.organization, READ)
        violations = check_organization(request.organization)
        if len(request.services) > MAX_WATCH_SERVICES:
            violations.append(FieldViolation("services", f"at most {MAX_WATCH_SERVICES} services"))
        else:
            for i, service in enumerate(request.services):
                violations += check_name(service, f"services[{i}]")
        if request.start_revision < 0:
            violations.append(FieldViolation("start_revision", "must not be negative"))
        given = request.progress_interval if request.HasField("progress_interval") else None
        interval = progress_seconds(given)
        if interval is None:
            violations.append(FieldViolation("progress_interval", "must not be negative"))
        raise_if_invalid(violations)
        assert interval is not None  # raise_if_invalid raised otherwise
        # The use case's generator is the stream itself: no extra layer per message.
        return watch_use_case.watch(
            self._hub,
            self._store,
            self._messages,
            organization=request.organization,
            services=frozenset(request.services) or None,
            start_revision=request.start_revision,
            progress_interval=interval,
        )

    async def PurgeConfig(
        self, request: config_pb2.PurgeConfigRequest, context: Any
    ) -> empty_pb2.Empty:
        authorize_operator(PURGE)
        raise_if_invalid(check_organization(request.organization))
        await self._store.purge(request.organization)
        self._writer.forget(request.organization)  # its revisions start over
        metrics.forget_usage([request.organization])  # other replicas at their next round
        return empty_pb2.Empty()
