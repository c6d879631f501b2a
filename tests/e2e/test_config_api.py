"""ConfigService end to end: every unary RPC over gRPC against the in-process server,
real PostgreSQL and Redis, as a client sees it (codes, reasons, fields, revisions).

Every test works in an organization of its own, so the tests are independent of each
other and of the order they run in. WatchConfig is covered by test_config_watch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg
import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from config_service.adapters import postgres as pg
from config_service.domain.model import Change
from config_service.domain.schema import KeySchema, ServiceSchema
from config_service.domain.values import ConfigValue, ValueType
from servicekit.db import init_connection
from servicekit.pagination import MAX_PAGE_BYTES
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import eventually
from tests.rpcerrors import detail, error_info, field_violations

if TYPE_CHECKING:
    from agentready.config.v1.config_service_pb2_grpc import ConfigServiceAsyncStub

T = TypeVar("T")
TIMEOUT = 10.0
Code = grpc.StatusCode
SET = config_pb2.CHANGE_TYPE_SET
DELETE = config_pb2.CHANGE_TYPE_DELETE
Metadata = tuple[tuple[str, str], ...]


# --- values -----------------------------------------------------------------------


def sval(text: str) -> config_pb2.Value:
    return config_pb2.Value(string_value=text)


def ival(number: int) -> config_pb2.Value:
    return config_pb2.Value(int_value=number)


def dval(number: float) -> config_pb2.Value:
    return config_pb2.Value(double_value=number)


def bval(flag: bool) -> config_pb2.Value:
    return config_pb2.Value(bool_value=flag)


def jval(data: Any) -> config_pb2.Value:
    return config_pb2.Value(json_value=json_format.ParseDict(data, struct_pb2.Value()))


def fval(**fields: Any) -> config_pb2.Value:
    return config_pb2.Value(flag_value=config_pb2.FeatureFlag(**fields))


def variant(name: str, weight: int = 1, value: Any = None) -> config_pb2.FlagVariant:
    message = config_pb2.FlagVariant(name=name, weight=weight)
    if value is not None:
        message.value.CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
    return message


def put(
    service: str, key: str, value: config_pb2.Value, expected_revision: int | None = None
) -> config_pb2.ConfigMutation:
    """A set mutation of BatchSetConfig."""
    mutation = config_pb2.ConfigMutation(service=service, key=key, set_value=value)
    if expected_revision is not None:
        mutation.expected_revision = expected_revision
    return mutation


def remove(
    service: str, key: str, expected_revision: int | None = None
) -> config_pb2.ConfigMutation:
    """A delete mutation of BatchSetConfig."""
    mutation = config_pb2.ConfigMutation(service=service, key=key, delete=empty_pb2.Empty())
    if expected_revision is not None:
        mutation.expected_revision = expected_revision
    return mutation


def key_schema(
    key: str, value_type: config_pb2.ValueType.ValueType, **fields: Any
) -> config_pb2.ConfigKeySchema:
    return config_pb2.ConfigKeySchema(key=key, type=value_type, **fields)


STRING = config_pb2.VALUE_TYPE_STRING
INT = config_pb2.VALUE_TYPE_INT
DOUBLE = config_pb2.VALUE_TYPE_DOUBLE
BOOL = config_pb2.VALUE_TYPE_BOOL
JSON = config_pb2.VALUE_TYPE_JSON
FLAG = config_pb2.VALUE_TYPE_FEATURE_FLAG


# --- client -----------------------------------------------------------------------


def new_org() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with, after checking its code."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value


async def outcome(call: Awaitable[T]) -> T | grpc.aio.AioRpcError:
    """What ``call`` returns, or the error it fails with."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        return err


@dataclasses.dataclass
class Api:
    """ConfigService as one organization's caller sees it."""

    stub: ConfigServiceAsyncStub
    org: str
    token: str
    subject: str

    @property
    def md(self) -> Metadata:
        return bearer(self.token)

    def as_token(self, token: str) -> Api:
        """The same organization, called with another token."""
        return dataclasses.replace(self, token=token)

    async def set(
        self, service: str, key: str, value: config_pb2.Value, **fields: Any
    ) -> config_pb2.ConfigEntry:
        request = config_pb2.SetConfigRequest(
            organization=self.org, service=service, key=key, value=value, **fields
        )
        return await self.stub.SetConfig(request, metadata=self.md, timeout=TIMEOUT)

    async def set_int(self, service: str, key: str, number: int, **fields: Any) -> int:
        """Sets an int; returns the revision of the key afterwards."""
        return (await self.set(service, key, ival(number), **fields)).revision

    async def get(self, service: str, key: str) -> config_pb2.ConfigEntry:
        request = config_pb2.GetConfigRequest(organization=self.org, service=service, key=key)
        return await self.stub.GetConfig(request, metadata=self.md, timeout=TIMEOUT)

    async def delete(self, service: str, key: str, **fields: Any) -> None:
        request = config_pb2.DeleteConfigRequest(
            organization=self.org, service=service, key=key, **fields
        )
        await self.stub.DeleteConfig(request, metadata=self.md, timeout=TIMEOUT)

    async def batch(
        self, *mutations: config_pb2.ConfigMutation, **fields: Any
    ) -> config_pb2.BatchSetConfigResponse:
        request = config_pb2.BatchSetConfigRequest(
            organization=self.org, mutations=mutations, **fields
        )
        return await self.stub.BatchSetConfig(request, metadata=self.md, timeout=TIMEOUT)

    async def list_configs(self, **fields: Any) -> config_pb2.ListConfigsResponse:
        request = config_pb2.ListConfigsRequest(organization=self.org, **fields)
        return await self.stub.ListConfigs(request, metadata=self.md, timeout=TIMEOUT)

    async def values(self) -> dict[tuple[str, str], config_pb2.Value]:
        """Every key that is set (one page of up to 1000), with its value."""
        listed = await self.list_configs(page_size=1000)
        return {(e.service, e.key): e.value for e in listed.configs}

    async def revision(self) -> int:
        return (await self.list_configs(page_size=1)).revision

    async def history_page(self, **fields: Any) -> config_pb2.ListConfigHistoryResponse:
        request = config_pb2.ListConfigHistoryRequest(organization=self.org, **fields)
        return await self.stub.ListConfigHistory(request, metadata=self.md, timeout=TIMEOUT)

    async def history(self, **fields: Any) -> list[config_pb2.ConfigHistoryEntry]:
        """Every history entry matching ``fields`` (one page of up to 1000)."""
        return list((await self.history_page(page_size=1000, **fields)).history_entries)

    async def rollback(self, revision: int, **fields: Any) -> config_pb2.RollbackConfigResponse:
        request = config_pb2.RollbackConfigRequest(
            organization=self.org, revision=revision, **fields
        )
        return await self.stub.RollbackConfig(request, metadata=self.md, timeout=TIMEOUT)

    def schema(
        self, service: str, *keys: config_pb2.ConfigKeySchema, strict: bool = False, etag: str = ""
    ) -> config_pb2.ConfigSchema:
        return config_pb2.ConfigSchema(
            organization=self.org, service=service, keys=keys, strict=strict, etag=etag
        )

    async def set_schema(
        self,
        service: str,
        *keys: config_pb2.ConfigKeySchema,
        strict: bool = False,
        etag: str = "",
        request_id: str = "",
    ) -> config_pb2.ConfigSchema:
        request = config_pb2.SetConfigSchemaRequest(
            schema=self.schema(service, *keys, strict=strict, etag=etag), request_id=request_id
        )
        return await self.stub.SetConfigSchema(request, metadata=self.md, timeout=TIMEOUT)

    async def get_schema(self, service: str) -> config_pb2.ConfigSchema:
        request = config_pb2.GetConfigSchemaRequest(organization=self.org, service=service)
        return await self.stub.GetConfigSchema(request, metadata=self.md, timeout=TIMEOUT)

    async def list_schemas(self, **fields: Any) -> config_pb2.ListConfigSchemasResponse:
        request = config_pb2.ListConfigSchemasRequest(organization=self.org, **fields)
        return await self.stub.ListConfigSchemas(request, metadata=self.md, timeout=TIMEOUT)

    async def delete_schema(self, service: str, etag: str = "") -> None:
        request = config_pb2.DeleteConfigSchemaRequest(
            organization=self.org, service=service, etag=etag
        )
        await self.stub.DeleteConfigSchema(request, metadata=self.md, timeout=TIMEOUT)


@pytest.fixture(scope="module")
async def stub(servers: dict[str, RunningServer]) -> AsyncIterator[ConfigServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        yield config_service_pb2_grpc.ConfigServiceStub(channel)


@pytest.fixture
def api(stub: ConfigServiceAsyncStub, keys: Keys) -> Api:
    """An owner of a fresh organization."""
    org = new_org()
    subject = f"user-{uuid.uuid4().hex[:6]}"
    return Api(stub, org, keys.token(org, "owner", subject=subject), subject)


def assert_invalid(error: grpc.aio.AioRpcError, field: str) -> None:
    """INVALID_ARGUMENT naming ``field`` in a BadRequest violation."""
    assert error.code() == Code.INVALID_ARGUMENT
    assert field in field_violations(error), field_violations(error)


# --- SetConfig / GetConfig: values ------------------------------------------------

VALUES: dict[str, config_pb2.Value] = {
    "string": sval("gpt-4o"),
    "empty string": sval(""),
    "unicode string": sval("grüße 🚀"),
    "int": ival(42),
    "zero int": ival(0),
    "int64 max": ival(2**63 - 1),
    "int64 min": ival(-(2**63)),
    "double": dval(0.75),
    "integral double": dval(3.0),
    "bool true": bval(True),
    "bool false": bval(False),
    "json object": jval({"model": "small", "limits": [1, 2.5, "x", True, None], "nested": {}}),
    "json array": jval([1, "two", {"three": 3}]),
    "json string": jval("text"),
    "json null": jval(None),
    "flag": fval(
        enabled=True,
        rollout_percent=12.5,
        allow_list=["alice", "bob"],
        deny_list=["mallory"],
        variants=[variant("blue", 3, {"color": "#00f"}), variant("green", 1)],
        default_variant="green",
        salt="s1",
    ),
    "flag off, no rollout": fval(enabled=False),
}


@pytest.mark.parametrize("name", list(VALUES))
async def test_each_value_type_round_trips(api: Api, name: str) -> None:
    value = VALUES[name]
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    entry = await api.set("ai", "setting", value)
    assert entry.value == value
    assert (entry.organization, entry.service, entry.key) == (api.org, "ai", "setting")
    assert entry.revision == 1
    assert not entry.is_default
    assert entry.etag
    assert entry.update_actor == api.subject
    assert entry.update_time.ToDatetime(dt.UTC) >= before
    got = await api.get("ai", "setting")
    assert got == entry
    assert got.value.WhichOneof("kind") == value.WhichOneof("kind")


async def test_revision_rises_by_exactly_one_per_change(api: Api) -> None:
    assert await api.revision() == 0
    assert await api.set_int("ai", "a", 1) == 1
    assert await api.set_int("ai", "b", 1) == 2
    assert await api.set_int("ai", "a", 2) == 3
    await api.delete("ai", "b")
    assert await api.revision() == 4
    assert await api.set_int("web", "a", 1) == 5
    assert [e.revision for e in await api.history()] == [1, 2, 3, 4, 5]


async def test_concurrent_writes_get_distinct_consecutive_revisions(api: Api) -> None:
    revisions = await asyncio.gather(*(api.set_int("ai", f"k{i}", i) for i in range(20)))
    assert sorted(revisions) == list(range(1, 21))
    assert await api.revision() == 20


async def test_concurrent_retries_of_one_request_write_once(api: Api) -> None:
    request_id = str(uuid.uuid4())
    entries = await asyncio.gather(
        *(api.set("ai", "threshold", ival(1), request_id=request_id) for _ in range(5))
    )
    assert all(e == entries[0] for e in entries)
    assert await api.revision() == 1
    assert len(await api.history()) == 1


async def test_concurrent_create_only_writes_let_exactly_one_win(api: Api) -> None:
    results = await asyncio.gather(
        *(api.set_int("ai", "leader", i, expected_revision=0) for i in range(5)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert won == [1]
    assert len(lost) == 4
    assert {e.code() for e in lost} == {Code.ABORTED}
    assert {error_info(e).reason for e in lost} == {"REVISION_MISMATCH"}
    assert await api.revision() == 1


async def test_organizations_are_isolated(
    api: Api, stub: ConfigServiceAsyncStub, keys: Keys
) -> None:
    other_org = new_org()
    other = Api(stub, other_org, keys.token(other_org, "owner"), "user-1")
    request_id = str(uuid.uuid4())  # request ids are per organization
    await api.set("ai", "threshold", ival(1), request_id=request_id)
    await api.set_int("ai", "only-here", 1)
    entry = await other.set("ai", "threshold", ival(2), request_id=request_id)
    assert entry.value == ival(2)
    assert entry.revision == 1
    assert entry.organization == other_org
    assert await api.values() == {("ai", "threshold"): ival(1), ("ai", "only-here"): ival(1)}
    assert await other.values() == {("ai", "threshold"): ival(2)}
    assert (await api.revision(), await other.revision()) == (2, 1)
    assert {e.organization for e in await other.history()} == {other_org}
    await api.set_schema("ai", key_schema("threshold", INT, maximum=5))
    assert list((await other.list_schemas()).schemas) == []
    assert (await other.set("ai", "threshold", ival(100))).value == ival(100)


@pytest.mark.parametrize("name", ["string", "int", "double", "json object", "flag"])
async def test_writing_the_same_value_is_a_no_op(api: Api, name: str) -> None:
    first = await api.set("ai", "setting", VALUES[name])
    await api.set_int("ai", "other", 1)
    again = await api.set("ai", "setting", VALUES[name])
    assert again.revision == first.revision == 1
    assert again.etag == first.etag
    assert await api.revision() == 2
    assert len(await api.history(service="ai", key="setting")) == 1


async def test_expected_revision_must_match(api: Api) -> None:
    assert await api.set_int("ai", "threshold", 1) == 1
    await api.set_int("ai", "other", 1)
    assert await api.set_int("ai", "threshold", 2, expected_revision=1) == 3

    err = await rpc_error(api.set("ai", "threshold", ival(3), expected_revision=1), Code.ABORTED)
    info = error_info(err)
    assert info.reason == "REVISION_MISMATCH"
    assert info.domain == "agentready.dev"
    assert info.metadata["service"] == "ai"
    assert info.metadata["key"] == "threshold"
    assert (await api.get("ai", "threshold")).value == ival(2)
    assert await api.revision() == 3


async def test_expected_revision_zero_means_create_only(api: Api) -> None:
    assert await api.set_int("ai", "threshold", 1, expected_revision=0) == 1
    err = await rpc_error(api.set("ai", "threshold", ival(2), expected_revision=0), Code.ABORTED)
    assert error_info(err).reason == "REVISION_MISMATCH"
    assert (await api.get("ai", "threshold")).value == ival(1)


async def test_negative_expected_revision_is_invalid(api: Api) -> None:
    err = await rpc_error(api.set("ai", "k", ival(1), expected_revision=-1), Code.INVALID_ARGUMENT)
    assert_invalid(err, "expected_revision")


async def test_etag_must_match(api: Api) -> None:
    first = await api.set("ai", "threshold", ival(1))
    second = await api.set("ai", "threshold", ival(2), etag=first.etag)
    assert second.etag
    assert second.etag != first.etag

    err = await rpc_error(api.set("ai", "threshold", ival(3), etag=first.etag), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    assert (await api.get("ai", "threshold")).value == ival(2)

    # A key that does not exist matches no etag.
    err = await rpc_error(api.set("ai", "missing", ival(1), etag=second.etag), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    await rpc_error(api.get("ai", "missing"), Code.NOT_FOUND)
    assert await api.revision() == 2


async def test_request_id_retry_returns_the_first_result_and_writes_once(api: Api) -> None:
    request_id = str(uuid.uuid4())
    first = await api.set("ai", "threshold", ival(1), request_id=request_id, reason="tune")
    retried = await api.set("ai", "threshold", ival(1), request_id=request_id, reason="tune")
    assert retried == first
    assert await api.revision() == 1
    (entry,) = await api.history()
    assert entry.request_id == request_id

    # Even after a later change, the retry answers what the first attempt did and
    # does not write again.
    await api.set_int("ai", "threshold", 2)
    late = await api.set("ai", "threshold", ival(1), request_id=request_id, reason="tune")
    assert late == first
    assert (await api.get("ai", "threshold")).value == ival(2)
    assert await api.revision() == 2


async def test_concurrent_attempts_of_one_request_id_write_once(api: Api) -> None:
    request_id = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(api.set("ai", "threshold", ival(7), request_id=request_id) for _ in range(8))
    )
    assert all(answer == answers[0] for answer in answers)
    assert await api.revision() == 1
    (entry,) = await api.history()
    assert entry.request_id == request_id


async def test_request_id_reused_with_a_different_body_is_invalid(api: Api) -> None:
    request_id = str(uuid.uuid4())
    await api.set("ai", "threshold", ival(1), request_id=request_id)
    err = await rpc_error(
        api.set("ai", "threshold", ival(2), request_id=request_id), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "request_id")
    # ... and so is the same id on another method.
    err = await rpc_error(
        api.delete("ai", "threshold", request_id=request_id), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "request_id")
    assert (await api.get("ai", "threshold")).value == ival(1)
    assert await api.revision() == 1


async def test_request_id_must_be_a_uuid(api: Api) -> None:
    err = await rpc_error(
        api.set("ai", "threshold", ival(1), request_id="retry-1"), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "request_id")
    assert await api.revision() == 0


@pytest.mark.parametrize(
    ("service", "key", "field"),
    [
        ("", "threshold", "service"),
        ("AI", "threshold", "service"),
        ("ai/chat", "threshold", "service"),
        ("ai", "", "key"),
        ("ai", "Threshold", "key"),
        ("ai", "-threshold", "key"),
        ("ai", "threshold.", "key"),
        ("ai", "with space", "key"),
        ("ai", "k" * 64, "key"),
    ],
)
async def test_bad_names_are_invalid(api: Api, service: str, key: str, field: str) -> None:
    err = await rpc_error(api.set(service, key, ival(1)), Code.INVALID_ARGUMENT)
    assert_invalid(err, field)
    err = await rpc_error(api.get(service, key), Code.INVALID_ARGUMENT)
    assert_invalid(err, field)
    assert await api.revision() == 0


async def test_longest_names_are_accepted(api: Api) -> None:
    service, key = "s" * 63, "a.b_c-" + "k" * 57
    entry = await api.set(service, key, ival(1))
    assert (entry.service, entry.key) == (service, key)


@pytest.mark.parametrize("org", ["Acme", "ab", "-acme", "acme_corp", "a" * 41])
async def test_bad_organization_slug_is_invalid(
    stub: ConfigServiceAsyncStub, keys: Keys, org: str
) -> None:
    bad = Api(stub, org, keys.token(org, "owner"), "user-1")  # a token for that very slug
    err = await rpc_error(bad.set("ai", "threshold", ival(1)), Code.INVALID_ARGUMENT)
    assert_invalid(err, "organization")


async def test_missing_value_is_invalid(api: Api) -> None:
    err = await rpc_error(api.set("ai", "threshold", config_pb2.Value()), Code.INVALID_ARGUMENT)
    assert_invalid(err, "value")
    assert error_info(err).reason == "INVALID_ARGUMENT"
    assert await api.revision() == 0


async def test_reason_over_500_characters_is_invalid(api: Api) -> None:
    err = await rpc_error(
        api.set("ai", "threshold", ival(1), reason="x" * 501), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "reason")
    assert await api.revision() == 0
    await api.set("ai", "threshold", ival(1), reason="x" * 500)
    assert (await api.history())[0].reason == "x" * 500


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_non_finite_double_is_invalid(api: Api, number: float) -> None:
    err = await rpc_error(api.set("ai", "ratio", dval(number)), Code.INVALID_ARGUMENT)
    assert any(f.startswith("value") for f in field_violations(err))
    assert await api.revision() == 0


async def test_value_over_64_kib_is_invalid(api: Api) -> None:
    err = await rpc_error(api.set("ai", "prompt", sval("x" * 70_000)), Code.INVALID_ARGUMENT)
    assert any(f.startswith("value") for f in field_violations(err))
    assert await api.revision() == 0
    await api.set("ai", "prompt", sval("x" * 60_000))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("value", sval("before\x00after"), ""),
        ("value", jval({"key\x00": 1}), ""),
        ("value", fval(enabled=True, allow_list=["user\x00"]), ""),
        ("reason", ival(1), "because\x00"),
    ],
    ids=["string", "json key", "flag subject", "reason"],
)
async def test_nul_characters_are_stored_or_rejected_cleanly(
    api: Api, field: str, value: config_pb2.Value, reason: str
) -> None:
    # NUL is valid UTF-8 in a protobuf string: it must round-trip or be a clear
    # INVALID_ARGUMENT naming the field (invariant 8), never an INTERNAL error.
    result = await outcome(api.set("ai", "k", value, reason=reason))
    if isinstance(result, grpc.aio.AioRpcError):
        assert result.code() == Code.INVALID_ARGUMENT, f"{result.code()}: {result.details()}"
        assert any(f.startswith(field) for f in field_violations(result))
        assert await api.revision() == 0
    else:
        assert result.value == value
        assert (await api.get("ai", "k")).value == value
        assert (await api.history())[0].reason == reason


BAD_FLAGS: dict[str, tuple[config_pb2.Value, str]] = {
    "rollout 150": (fval(enabled=True, rollout_percent=150), "rollout_percent"),
    "rollout -1": (fval(enabled=True, rollout_percent=-1), "rollout_percent"),
    "rollout NaN": (fval(enabled=True, rollout_percent=math.nan), "rollout_percent"),
    "duplicate variant": (
        fval(enabled=True, variants=[variant("blue"), variant("blue")]),
        "variants[1].name",
    ),
    "bad variant name": (fval(enabled=True, variants=[variant("Blue")]), "variants[0].name"),
    "unknown default variant": (
        fval(enabled=True, variants=[variant("blue")], default_variant="green"),
        "default_variant",
    ),
    "empty subject": (fval(enabled=True, allow_list=["alice", ""]), "allow_list"),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
async def test_invalid_feature_flags_are_rejected(api: Api, name: str) -> None:
    value, suffix = BAD_FLAGS[name]
    err = await rpc_error(api.set("ai", "flag", value), Code.INVALID_ARGUMENT)
    fields = field_violations(err)
    assert any(f.startswith("value.") and f.endswith(suffix) for f in fields), fields
    assert await api.revision() == 0


async def test_feature_flag_violation_names_the_request_field(api: Api) -> None:
    # AIP-193: the field path leads to the field in the request, through the oneof
    # case: SetConfigRequest.value.flag_value.rollout_percent.
    err = await rpc_error(
        api.set("ai", "flag", fval(enabled=True, rollout_percent=150)), Code.INVALID_ARGUMENT
    )
    assert "value.flag_value.rollout_percent" in field_violations(err)


# --- authorization ------------------------------------------------------------------


async def test_token_of_another_organization_is_denied_and_writes_nothing(
    api: Api, keys: Keys
) -> None:
    intruder = api.as_token(keys.token(new_org(), "owner"))
    for call in (
        intruder.set("ai", "threshold", ival(1)),
        intruder.get("ai", "threshold"),
        intruder.list_configs(),
        intruder.batch(put("ai", "threshold", ival(1))),
        intruder.rollback(0),
        intruder.set_schema("ai", key_schema("threshold", INT)),
    ):
        err = await rpc_error(call, Code.PERMISSION_DENIED)
        assert error_info(err).reason == "WRONG_ORGANIZATION"
    assert await api.revision() == 0
    await rpc_error(api.get("ai", "threshold"), Code.NOT_FOUND)
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)


async def test_a_token_without_organization_is_denied(api: Api, keys: Keys) -> None:
    stranger = api.as_token(keys.token(None, "owner"))
    err = await rpc_error(stranger.get("ai", "threshold"), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "WRONG_ORGANIZATION"


@pytest.mark.parametrize("role", ["viewer", "member"])
async def test_readers_can_read_but_not_write(api: Api, keys: Keys, role: str) -> None:
    entry = await api.set("ai", "threshold", ival(1))
    schema = await api.set_schema("ai", key_schema("threshold", INT))
    reader = api.as_token(keys.token(api.org, role))

    assert await reader.get("ai", "threshold") == entry
    assert [e.key for e in (await reader.list_configs()).configs] == ["threshold"]
    assert len(await reader.history()) == 1
    assert await reader.get_schema("ai") == schema
    assert len((await reader.list_schemas()).schemas) == 1

    for call in (
        reader.set("ai", "threshold", ival(2)),
        reader.batch(put("ai", "threshold", ival(2))),
        reader.delete("ai", "threshold"),
        reader.rollback(0),
        reader.set_schema("ai", key_schema("threshold", INT), strict=True),
        reader.delete_schema("ai"),
    ):
        err = await rpc_error(call, Code.PERMISSION_DENIED)
        assert error_info(err).reason == "MISSING_SCOPE"
    assert await api.get("ai", "threshold") == entry
    assert await api.get_schema("ai") == schema
    assert await api.revision() == 1


async def test_admin_can_write(api: Api, keys: Keys) -> None:
    admin = api.as_token(keys.token(api.org, "admin"))
    assert await admin.set_int("ai", "threshold", 1) == 1


async def test_read_only_service_account_cannot_write(api: Api, keys: Keys) -> None:
    pod = api.as_token(keys.token(api.org, "viewer", scopes=frozenset({"config:read"})))
    await api.set_int("ai", "threshold", 1)
    assert (await pod.get("ai", "threshold")).value == ival(1)
    err = await rpc_error(pod.set("ai", "threshold", ival(2)), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "MISSING_SCOPE"


async def test_write_only_scope_cannot_read(api: Api, keys: Keys) -> None:
    writer = api.as_token(keys.token(api.org, "owner", scopes=frozenset({"config:write"})))
    assert await writer.set_int("ai", "threshold", 1) == 1
    err = await rpc_error(writer.get("ai", "threshold"), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "MISSING_SCOPE"


async def test_missing_token_is_unauthenticated(api: Api) -> None:
    request = config_pb2.SetConfigRequest(
        organization=api.org, service="ai", key="threshold", value=ival(1)
    )
    err = await rpc_error(api.stub.SetConfig(request, timeout=TIMEOUT), Code.UNAUTHENTICATED)
    assert error_info(err).reason == "TOKEN_MISSING"
    assert await api.revision() == 0


async def test_expired_token_is_unauthenticated(api: Api, keys: Keys) -> None:
    expired = api.as_token(
        keys.token(
            api.org,
            "owner",
            ttl=dt.timedelta(minutes=5),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        )
    )
    err = await rpc_error(expired.set("ai", "threshold", ival(1)), Code.UNAUTHENTICATED)
    assert error_info(err).reason == "TOKEN_EXPIRED"
    await rpc_error(expired.get("ai", "threshold"), Code.UNAUTHENTICATED)
    assert await api.revision() == 0


async def test_refresh_token_is_not_accepted(api: Api, keys: Keys) -> None:
    refresh = api.as_token(keys.token(api.org, "owner", token_type="refresh"))
    await rpc_error(refresh.set("ai", "threshold", ival(1)), Code.UNAUTHENTICATED)
    assert await api.revision() == 0


# --- BatchSetConfig -------------------------------------------------------------------


async def test_batch_applies_sets_and_deletes_as_one_revision(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "b", 1)
    response = await api.batch(
        put("web", "c", sval("new")),
        put("ai", "a", ival(2)),
        remove("ai", "b"),
        reason="release 42",
    )
    assert response.revision == 3
    changes = {(c.service, c.key): c for c in response.changes}
    assert set(changes) == {("web", "c"), ("ai", "a"), ("ai", "b")}
    assert changes["web", "c"].type == SET
    assert changes["web", "c"].entry.value == sval("new")
    assert changes["web", "c"].entry.revision == 3
    assert changes["ai", "a"].type == SET
    assert changes["ai", "a"].entry.value == ival(2)
    assert changes["ai", "b"].type == DELETE
    assert not changes["ai", "b"].HasField("entry")

    assert await api.revision() == 3
    assert await api.values() == {("ai", "a"): ival(2), ("web", "c"): sval("new")}
    await rpc_error(api.get("ai", "b"), Code.NOT_FOUND)
    batch_history = await api.history(start_revision=3)
    assert len(batch_history) == 3
    assert {e.revision for e in batch_history} == {3}
    assert {e.reason for e in batch_history} == {"release 42"}
    # Within a revision, history is ordered by service then key.
    assert [(e.service, e.key) for e in batch_history] == [("ai", "a"), ("ai", "b"), ("web", "c")]


async def test_batch_changes_follow_the_order_of_the_mutations(api: Api) -> None:
    response = await api.batch(
        put("web", "z", ival(1)), put("ai", "b", ival(1)), put("ai", "a", ival(1))
    )
    # BatchSetConfigResponse.changes: "in the order of the mutations".
    assert [(c.service, c.key) for c in response.changes] == [
        ("web", "z"),
        ("ai", "b"),
        ("ai", "a"),
    ]


async def test_batch_leaves_no_op_sets_out(api: Api) -> None:
    await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(1)))
    response = await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(2)))
    assert response.revision == 2
    assert [(c.key, c.entry.value) for c in response.changes] == [("b", ival(2))]
    assert len(await api.history(start_revision=2)) == 1

    unchanged = await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(2)))
    assert unchanged.revision == 2
    assert list(unchanged.changes) == []
    assert await api.revision() == 2


async def test_batch_with_expected_revisions(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    response = await api.batch(
        put("ai", "a", ival(2), expected_revision=1), put("ai", "new", ival(1), expected_revision=0)
    )
    assert response.revision == 2


async def test_batch_is_all_or_nothing_on_a_revision_mismatch(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "b", 1)
    err = await rpc_error(
        api.batch(
            put("ai", "a", ival(2), expected_revision=1),
            put("ai", "b", ival(2), expected_revision=1),  # b is at revision 2
            put("ai", "c", ival(2)),
        ),
        Code.ABORTED,
    )
    info = error_info(err)
    assert info.reason == "REVISION_MISMATCH"
    assert info.metadata["key"] == "b"
    assert await api.revision() == 2
    assert await api.values() == {("ai", "a"): ival(1), ("ai", "b"): ival(1)}


async def test_batch_is_all_or_nothing_on_a_schema_violation(api: Api) -> None:
    await api.set_schema("ai", key_schema("limit", INT, maximum=10))
    await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(1)))
    err = await rpc_error(
        api.batch(put("ai", "a", ival(2)), put("ai", "limit", ival(11)), remove("ai", "b")),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert any(f.startswith("mutations[1].") for f in field_violations(err))
    assert await api.revision() == 1
    assert await api.values() == {("ai", "a"): ival(1), ("ai", "b"): ival(1)}


async def test_batch_schema_violation_names_the_mutation_field(api: Api) -> None:
    await api.set_schema("ai", key_schema("limit", INT, maximum=10))
    err = await rpc_error(
        api.batch(put("ai", "ok", ival(1)), put("ai", "limit", ival(11))), Code.INVALID_ARGUMENT
    )
    # The value of a ConfigMutation is its `set_value` field.
    assert "mutations[1].set_value" in field_violations(err)


async def test_batch_delete_of_a_missing_key_is_not_found_and_writes_nothing(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    err = await rpc_error(api.batch(put("ai", "a", ival(2)), remove("ai", "ghost")), Code.NOT_FOUND)
    assert "ghost" in detail(err, error_details_pb2.ResourceInfo).resource_name
    assert await api.revision() == 1
    assert (await api.get("ai", "a")).value == ival(1)


async def test_batch_naming_one_key_twice_is_invalid(api: Api) -> None:
    err = await rpc_error(
        api.batch(put("ai", "a", ival(1)), remove("ai", "a")), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "mutations[1].key")
    assert await api.revision() == 0


@pytest.mark.parametrize("count", [0, 101])
async def test_batch_needs_1_to_100_mutations(api: Api, count: int) -> None:
    mutations = [put("ai", f"k{i}", ival(i)) for i in range(count)]
    err = await rpc_error(api.batch(*mutations), Code.INVALID_ARGUMENT)
    assert_invalid(err, "mutations")
    assert await api.revision() == 0


async def test_batch_of_100_mutations_is_one_revision(api: Api) -> None:
    response = await api.batch(*(put("ai", f"k{i:03}", ival(i)) for i in range(100)))
    assert response.revision == 1
    assert len(response.changes) == 100
    assert len(await api.values()) == 100


async def test_batch_violations_name_each_mutation(api: Api) -> None:
    err = await rpc_error(
        api.batch(
            put("ai", "good", ival(1)),
            put("ai", "Bad", ival(1)),
            put("", "good2", ival(1)),
            put("ai", "nan", dval(math.nan)),
            config_pb2.ConfigMutation(service="ai", key="noop"),
            put("ai", "neg", ival(1), expected_revision=-1),
        ),
        Code.INVALID_ARGUMENT,
    )
    fields = field_violations(err)
    assert "mutations[1].key" in fields
    assert "mutations[2].service" in fields
    assert any(f.startswith("mutations[3].set_value") for f in fields)
    assert "mutations[4].op" in fields
    assert "mutations[5].expected_revision" in fields
    assert not any(f.startswith("mutations[0]") for f in fields)
    assert await api.revision() == 0


async def test_batch_request_id_retry_writes_once(api: Api) -> None:
    request_id = str(uuid.uuid4())
    first = await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(1)), request_id=request_id)
    again = await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(1)), request_id=request_id)
    assert again == first
    assert await api.revision() == 1
    assert {e.request_id for e in await api.history()} == {request_id}


async def test_batch_rejects_bad_reason_and_request_id(api: Api) -> None:
    err = await rpc_error(
        api.batch(put("ai", "a", ival(1)), reason="r" * 501), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "reason")
    err = await rpc_error(
        api.batch(put("ai", "a", ival(1)), request_id="nope"), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "request_id")
    assert await api.revision() == 0


# --- GetConfig ------------------------------------------------------------------------


async def test_get_unknown_key_is_not_found(api: Api) -> None:
    err = await rpc_error(api.get("ai", "threshold"), Code.NOT_FOUND)
    resource = detail(err, error_details_pb2.ResourceInfo)
    assert "threshold" in resource.resource_name
    assert api.org in resource.resource_name
    assert error_info(err).reason == "NOT_FOUND"


async def test_get_returns_the_schema_default_while_the_key_is_unset(api: Api) -> None:
    await api.set_schema(
        "ai",
        key_schema("threshold", DOUBLE, default_value=dval(0.5)),
        key_schema("model", STRING),
    )
    default = await api.get("ai", "threshold")
    assert default.value == dval(0.5)
    assert default.is_default
    assert default.revision == 0
    assert default.etag == ""
    assert default.update_actor == ""
    assert not default.HasField("update_time")
    # A key without default stays NOT_FOUND; defaults are not listed.
    await rpc_error(api.get("ai", "model"), Code.NOT_FOUND)
    assert list((await api.list_configs()).configs) == []

    entry = await api.set("ai", "threshold", dval(0.9))
    got = await api.get("ai", "threshold")
    assert got == entry
    assert not got.is_default

    await api.delete("ai", "threshold")
    back = await api.get("ai", "threshold")
    assert back.is_default
    assert back.value == dval(0.5)
    assert back.etag == ""


# --- ListConfigs ----------------------------------------------------------------------


async def seed(api: Api) -> list[tuple[str, str]]:
    """Seven keys over three services, written in scrambled order, as one batch."""
    keys = [("web", "b"), ("ai", "z"), ("billing", "a"), ("ai", "a"), ("web", "a")]
    keys += [("ai", "m"), ("billing", "b")]
    await api.batch(*(put(s, k, sval(f"{s}/{k}")) for s, k in keys))
    return sorted(keys)


async def test_list_orders_by_service_then_key_and_filters_by_service(api: Api) -> None:
    keys = await seed(api)
    listed = await api.list_configs()
    assert [(e.service, e.key) for e in listed.configs] == keys
    assert all(e.value == sval(f"{e.service}/{e.key}") for e in listed.configs)
    assert all(e.organization == api.org for e in listed.configs)
    assert listed.next_page_token == ""
    assert listed.revision == 1

    ai = await api.list_configs(service="ai")
    assert [e.key for e in ai.configs] == ["a", "m", "z"]
    assert {e.service for e in ai.configs} == {"ai"}
    assert list((await api.list_configs(service="nothing")).configs) == []


@pytest.mark.parametrize(("service", "page_size"), [("", 2), ("", 3), ("", 1), ("ai", 2)])
async def test_list_pages_cover_every_key_once(api: Api, service: str, page_size: int) -> None:
    keys = [k for k in await seed(api) if not service or k[0] == service]
    seen: list[tuple[str, str]] = []
    token = ""
    pages = 0
    while True:
        page = await api.list_configs(service=service, page_size=page_size, page_token=token)
        assert len(page.configs) <= page_size
        seen += [(e.service, e.key) for e in page.configs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
        assert pages < 20
    assert seen == keys
    assert pages == math.ceil(len(keys) / page_size)


async def test_list_page_size_default_and_maximum(api: Api) -> None:
    await api.batch(*(put("ai", f"k{i:03}", ival(i)) for i in range(100)))
    await api.batch(*(put("web", f"k{i:03}", ival(i)) for i in range(50)))
    default = await api.list_configs()
    assert len(default.configs) == 100
    assert default.next_page_token
    rest = await api.list_configs(page_token=default.next_page_token)
    assert len(rest.configs) == 50
    assert rest.next_page_token == ""
    huge = await api.list_configs(page_size=5000)
    assert len(huge.configs) == 150
    assert huge.next_page_token == ""


async def test_list_revision_is_the_revision_read_at(api: Api) -> None:
    assert (await api.list_configs()).revision == 0
    await api.set_int("ai", "a", 1)
    await api.set_int("web", "a", 1)
    assert (await api.list_configs()).revision == 2
    assert (await api.list_configs(service="ai")).revision == 2


async def test_page_token_reused_with_another_service_is_invalid(api: Api) -> None:
    await seed(api)
    first = await api.list_configs(page_size=2)
    assert first.next_page_token
    err = await rpc_error(
        api.list_configs(service="ai", page_size=2, page_token=first.next_page_token),
        Code.INVALID_ARGUMENT,
    )
    assert_invalid(err, "page_token")


async def test_page_token_of_another_organization_is_invalid(
    api: Api, stub: ConfigServiceAsyncStub, keys: Keys
) -> None:
    await seed(api)
    token = (await api.list_configs(page_size=2)).next_page_token
    other_org = new_org()
    other = Api(stub, other_org, keys.token(other_org, "owner"), "user-1")
    err = await rpc_error(other.list_configs(page_size=2, page_token=token), Code.INVALID_ARGUMENT)
    assert_invalid(err, "page_token")


@pytest.mark.parametrize("token", ["garbage", "eyJwIjpbXX0", "!!!", "e30"])
async def test_garbage_page_token_is_invalid(api: Api, token: str) -> None:
    err = await rpc_error(api.list_configs(page_token=token), Code.INVALID_ARGUMENT)
    assert_invalid(err, "page_token")


async def test_negative_page_size_is_invalid(api: Api) -> None:
    err = await rpc_error(api.list_configs(page_size=-1), Code.INVALID_ARGUMENT)
    assert_invalid(err, "page_size")


async def test_list_with_a_bad_service_filter_is_invalid(api: Api) -> None:
    err = await rpc_error(api.list_configs(service="AI"), Code.INVALID_ARGUMENT)
    assert_invalid(err, "service")


# --- DeleteConfig ---------------------------------------------------------------------


async def test_delete_removes_the_key_as_a_new_revision(api: Api) -> None:
    await api.set_int("ai", "threshold", 7)
    await api.delete("ai", "threshold", reason="cleanup")
    assert await api.revision() == 2
    await rpc_error(api.get("ai", "threshold"), Code.NOT_FOUND)
    assert await api.values() == {}
    last = (await api.history())[-1]
    assert (last.revision, last.type, last.reason) == (2, DELETE, "cleanup")
    assert last.old_value == ival(7)
    assert not last.HasField("new_value")
    # The key can be created again, as a new revision.
    assert await api.set_int("ai", "threshold", 8, expected_revision=0) == 3


async def test_delete_of_a_missing_key_is_not_found(api: Api) -> None:
    err = await rpc_error(api.delete("ai", "threshold"), Code.NOT_FOUND)
    assert "threshold" in detail(err, error_details_pb2.ResourceInfo).resource_name
    await api.set_int("ai", "threshold", 1)
    await api.delete("ai", "threshold")
    await rpc_error(api.delete("ai", "threshold"), Code.NOT_FOUND)
    assert await api.revision() == 2


async def test_delete_with_a_stale_etag_or_revision_is_aborted(api: Api) -> None:
    first = await api.set("ai", "threshold", ival(1))
    second = await api.set("ai", "threshold", ival(2))
    err = await rpc_error(api.delete("ai", "threshold", etag=first.etag), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    err = await rpc_error(api.delete("ai", "threshold", expected_revision=1), Code.ABORTED)
    assert error_info(err).reason == "REVISION_MISMATCH"
    assert (await api.get("ai", "threshold")).value == ival(2)
    assert await api.revision() == 2

    await api.delete("ai", "threshold", etag=second.etag, expected_revision=2)
    await rpc_error(api.get("ai", "threshold"), Code.NOT_FOUND)


async def test_delete_request_id_retry_succeeds_once(api: Api) -> None:
    await api.set_int("ai", "threshold", 1)
    request_id = str(uuid.uuid4())
    await api.delete("ai", "threshold", request_id=request_id)
    await api.delete("ai", "threshold", request_id=request_id)  # a retry, not NOT_FOUND
    assert await api.revision() == 2


async def test_delete_validates_its_fields(api: Api) -> None:
    err = await rpc_error(api.delete("ai", "Threshold"), Code.INVALID_ARGUMENT)
    assert_invalid(err, "key")
    err = await rpc_error(api.delete("ai", "threshold", reason="r" * 501), Code.INVALID_ARGUMENT)
    assert_invalid(err, "reason")


# --- ListConfigHistory ----------------------------------------------------------------


async def test_history_records_who_when_why_and_the_values(api: Api, keys: Keys) -> None:
    alice = api.as_token(keys.token(api.org, "owner", subject="alice"))
    bob = api.as_token(keys.token(api.org, "admin", subject="bob"))
    request_id = str(uuid.uuid4())
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    await alice.set("ai", "threshold", ival(1), reason="first", request_id=request_id)
    await bob.set("ai", "threshold", ival(2), reason="raise it")
    await alice.delete("ai", "threshold")
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)

    created, changed, deleted = await api.history()
    assert (created.revision, created.type, created.actor) == (1, SET, "alice")
    assert (created.reason, created.request_id) == ("first", request_id)
    assert not created.HasField("old_value")
    assert created.new_value == ival(1)
    assert (created.organization, created.service, created.key) == (api.org, "ai", "threshold")

    assert (changed.revision, changed.type, changed.actor) == (2, SET, "bob")
    assert (changed.reason, changed.request_id) == ("raise it", "")
    assert changed.old_value == ival(1)
    assert changed.new_value == ival(2)

    assert (deleted.revision, deleted.type, deleted.actor) == (3, DELETE, "alice")
    assert deleted.old_value == ival(2)
    assert not deleted.HasField("new_value")

    times = [e.create_time.ToDatetime(dt.UTC) for e in (created, changed, deleted)]
    assert all(before <= t <= after for t in times)
    assert times == sorted(times)


async def test_history_filters_by_service_key_and_revisions(api: Api) -> None:
    await api.set_int("ai", "a", 1)  # 1
    await api.set_int("web", "a", 1)  # 2
    await api.set_int("ai", "b", 1)  # 3
    await api.set_int("ai", "a", 2)  # 4
    await api.batch(put("web", "b", ival(1)), put("ai", "b", ival(2)))  # 5

    def keyed(entries: list[config_pb2.ConfigHistoryEntry]) -> list[tuple[int, str, str]]:
        return [(e.revision, e.service, e.key) for e in entries]

    assert keyed(await api.history(service="ai")) == [
        (1, "ai", "a"),
        (3, "ai", "b"),
        (4, "ai", "a"),
        (5, "ai", "b"),
    ]
    assert keyed(await api.history(service="ai", key="a")) == [(1, "ai", "a"), (4, "ai", "a")]
    assert keyed(await api.history(start_revision=3, end_revision=4)) == [
        (3, "ai", "b"),
        (4, "ai", "a"),
    ]
    assert keyed(await api.history(start_revision=5)) == [(5, "ai", "b"), (5, "web", "b")]
    assert keyed(await api.history(end_revision=2)) == [(1, "ai", "a"), (2, "web", "a")]
    assert keyed(await api.history(service="web", start_revision=3)) == [(5, "web", "b")]
    assert await api.history(start_revision=6) == []


async def test_history_pages_cover_every_entry_once(api: Api) -> None:
    for i in range(4):
        await api.set_int("ai", "a", i)
    await api.batch(put("ai", "b", ival(1)), put("ai", "c", ival(1)), put("web", "a", ival(1)))
    everything = await api.history()
    assert len(everything) == 7

    seen: list[config_pb2.ConfigHistoryEntry] = []
    token = ""
    while True:
        page = await api.history_page(page_size=2, page_token=token)
        assert len(page.history_entries) <= 2
        seen += page.history_entries
        token = page.next_page_token
        if not token:
            break
    assert seen == everything

    # A token belongs to its filters.
    first = await api.history_page(page_size=2)
    err = await rpc_error(
        api.history_page(page_size=2, service="ai", page_token=first.next_page_token),
        Code.INVALID_ARGUMENT,
    )
    assert_invalid(err, "page_token")


async def test_history_pages_of_large_values_are_cut_by_bytes_in_the_database(
    api: Api, database_url: str
) -> None:
    big = "x" * (60 * 1024)
    for i in range(40):  # 40 changes of about 120 KiB each (old and new value)
        await api.set("ai", "big", sval(f"{i:02d}{big}"))
    # Through the API: every page fits what a default client accepts, and the pages
    # cover every change once, in order.
    seen: list[config_pb2.ConfigHistoryEntry] = []
    token = ""
    pages = 0
    while True:
        page = await api.history_page(page_size=1000, page_token=token)
        assert page.ByteSize() <= 4 * 1024 * 1024
        seen += page.history_entries
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert [e.revision for e in seen] == sorted({e.revision for e in seen})
    assert len(seen) == 40
    assert pages >= 3
    # In the database: a page of 1000 asked for reads the rows that fit, and one more
    # that tells more follow; never the values of a thousand rows.
    conn = await asyncpg.connect(database_url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        changes, fitting = await pg.list_history(
            conn,
            api.org,
            service="",
            key="",
            start_revision=0,
            end_revision=0,
            after=(0, -1),
            limit=1000,
            max_bytes=MAX_PAGE_BYTES,
        )
    finally:
        await conn.close()
    assert 10 <= fitting < 40
    assert len(changes) == fitting + 1
    assert [c.revision for c in changes] == [e.revision for e in seen[: fitting + 1]]


async def test_history_key_filter_requires_service(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("web", "a", 1)
    # ListConfigHistoryRequest.key: "Only changes of this key; requires `service`."
    err = await rpc_error(api.history_page(key="a"), Code.INVALID_ARGUMENT)
    assert_invalid(err, "service")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"start_revision": -1}, "start_revision"),
        ({"end_revision": -1}, "end_revision"),
        ({"start_revision": 5, "end_revision": 3}, "end_revision"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "garbage"}, "page_token"),
        ({"service": "AI"}, "service"),
    ],
)
async def test_history_rejects_bad_requests(api: Api, fields: dict[str, Any], field: str) -> None:
    err = await rpc_error(api.history_page(**fields), Code.INVALID_ARGUMENT)
    assert_invalid(err, field)


# --- RollbackConfig -------------------------------------------------------------------


async def test_rollback_restores_an_earlier_state_as_one_revision(api: Api) -> None:
    await api.batch(put("ai", "changed", ival(1)), put("ai", "deleted", sval("keep me")))  # 1
    await api.set_int("web", "untouched", 1)  # 2
    await api.set_int("ai", "changed", 2)  # 3
    await api.delete("ai", "deleted")  # 4
    await api.set_int("ai", "created", 1)  # 5
    await api.set_int("ai", "changed", 3)  # 6

    response = await api.rollback(2, reason="bad release")
    assert response.revision == 7
    assert [(c.service, c.key, c.type) for c in response.changes] == [
        ("ai", "changed", SET),
        ("ai", "created", DELETE),
        ("ai", "deleted", SET),
    ]
    assert all(c.entry.revision == 7 for c in response.changes if c.type == SET)
    assert await api.revision() == 7
    assert await api.values() == {
        ("ai", "changed"): ival(1),
        ("ai", "deleted"): sval("keep me"),
        ("web", "untouched"): ival(1),
    }
    rolled = await api.history(start_revision=7)
    assert len(rolled) == 3
    assert {(e.reason, e.actor) for e in rolled} == {("bad release", api.subject)}
    changed = next(e for e in rolled if e.key == "changed")
    assert (changed.old_value, changed.new_value) == (ival(3), ival(1))


async def test_rollback_to_revision_zero_deletes_everything(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("web", "b", 1)
    response = await api.rollback(0)
    assert response.revision == 3
    assert {(c.key, c.type) for c in response.changes} == {("a", DELETE), ("b", DELETE)}
    assert await api.values() == {}


async def test_rollback_scoped_to_a_service_only_touches_it(api: Api) -> None:
    await api.set_int("ai", "a", 1)  # 1
    await api.set_int("web", "a", 1)  # 2
    await api.set_int("ai", "a", 2)  # 3
    await api.set_int("web", "a", 2)  # 4
    await api.set_int("ai", "new", 1)  # 5
    response = await api.rollback(2, service="ai")
    assert response.revision == 6
    assert {c.service for c in response.changes} == {"ai"}
    assert await api.values() == {("ai", "a"): ival(1), ("web", "a"): ival(2)}


async def test_rollback_scoped_to_a_key_only_touches_it(api: Api) -> None:
    await api.batch(put("ai", "a", ival(1)), put("ai", "b", ival(1)))  # 1
    await api.batch(put("ai", "a", ival(2)), put("ai", "b", ival(2)))  # 2
    response = await api.rollback(1, service="ai", key="b")
    assert response.revision == 3
    assert [(c.key, c.entry.value) for c in response.changes] == [("b", ival(1))]
    assert await api.values() == {("ai", "a"): ival(2), ("ai", "b"): ival(1)}


async def test_rollback_above_the_current_revision_is_invalid(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    err = await rpc_error(api.rollback(2), Code.INVALID_ARGUMENT)
    assert_invalid(err, "revision")
    err = await rpc_error(api.rollback(-1), Code.INVALID_ARGUMENT)
    assert_invalid(err, "revision")
    assert await api.revision() == 1


async def test_rollback_to_the_current_revision_is_a_no_op(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)
    response = await api.rollback(2)
    assert response.revision == 2
    assert list(response.changes) == []
    assert await api.revision() == 2
    assert len(await api.history()) == 2


async def test_rollback_to_an_identical_state_is_a_no_op(api: Api) -> None:
    await api.set_int("ai", "a", 1)  # 1
    await api.set_int("ai", "a", 2)  # 2
    await api.set_int("ai", "a", 1)  # 3: same as at 1
    response = await api.rollback(1)
    assert response.revision == 3
    assert list(response.changes) == []


async def test_rollback_key_requires_service(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    err = await rpc_error(api.rollback(0, key="a"), Code.INVALID_ARGUMENT)
    assert_invalid(err, "service")
    assert await api.revision() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"reason": "r" * 501}, "reason"),
        ({"request_id": "not-a-uuid"}, "request_id"),
        ({"service": "AI"}, "service"),
        ({"service": "ai", "key": "A"}, "key"),
    ],
)
async def test_rollback_rejects_bad_requests(api: Api, fields: dict[str, Any], field: str) -> None:
    await api.set_int("ai", "a", 1)
    err = await rpc_error(api.rollback(0, **fields), Code.INVALID_ARGUMENT)
    assert_invalid(err, field)
    assert await api.revision() == 1


async def test_rollback_that_breaks_todays_schema_is_invalid(api: Api) -> None:
    await api.set_int("ai", "limit", 50)  # 1
    await api.set_int("ai", "limit", 5)  # 2
    await api.set_schema("ai", key_schema("limit", INT, maximum=10))
    err = await rpc_error(api.rollback(1), Code.INVALID_ARGUMENT)
    assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert await api.revision() == 2
    assert (await api.get("ai", "limit")).value == ival(5)


async def test_rollback_request_id_retry_rolls_back_once(api: Api) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)
    request_id = str(uuid.uuid4())
    first = await api.rollback(1, request_id=request_id)
    again = await api.rollback(1, request_id=request_id)
    assert again == first
    assert await api.revision() == 3


# --- config schemas -------------------------------------------------------------------


async def test_schema_lifecycle(api: Api) -> None:
    keys_ = (
        key_schema("threshold", DOUBLE, minimum=0, maximum=1, description="cut-off"),
        key_schema("model", STRING, allowed_values=["small", "large"], default_value=sval("small")),
    )
    created = await api.set_schema("ai", *keys_, strict=True)
    assert (created.organization, created.service, created.strict) == (api.org, "ai", True)
    assert list(created.keys) == list(keys_)
    assert created.etag
    assert created.HasField("create_time")
    assert created.HasField("update_time")
    assert await api.get_schema("ai") == created

    # Replacing it with the current etag works and changes the etag.
    replaced = await api.set_schema("ai", *keys_, strict=False, etag=created.etag)
    assert replaced.etag != created.etag
    assert not replaced.strict
    assert replaced.create_time == created.create_time
    assert replaced.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # A stale etag is ABORTED and changes nothing.
    err = await rpc_error(
        api.set_schema("ai", *keys_, strict=True, etag=created.etag), Code.ABORTED
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    err = await rpc_error(api.delete_schema("ai", etag=created.etag), Code.ABORTED)
    assert error_info(err).reason == "ETAG_MISMATCH"
    assert await api.get_schema("ai") == replaced

    await api.delete_schema("ai", etag=replaced.etag)
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)
    assert list((await api.list_schemas()).schemas) == []


@contextlib.asynccontextmanager
async def write_in_flight(
    database_url: str, organization: str, key: str, text: str
) -> AsyncIterator[Any]:
    """A value write as ConfigService makes one, held open: the organization's revision
    row locked (``config.begin_write``), ``ai/<key>`` set to ``text`` and revision 2
    written, nothing committed; yields the transaction for the test to commit."""
    writer = await asyncpg.connect(database_url)
    try:
        in_flight = writer.transaction()
        await in_flight.start()
        await writer.fetchrow(
            "SELECT * FROM config.begin_write($1, $2::text[], $3::text[], $4::text[])",
            organization,
            ["ai"],
            [key],
            [],
        )
        await writer.execute(
            "INSERT INTO config.entries "
            "(organization, service, key, value, revision, updated_at, updated_by) "
            "VALUES ($1, 'ai', $2, $3::jsonb, 2, now(), 'test')",
            organization,
            key,
            json.dumps(ConfigValue(ValueType.STRING, text).to_json()),
        )
        await writer.execute(
            "UPDATE config.organizations SET revision = 2 WHERE organization = $1", organization
        )
        yield in_flight
    finally:
        await writer.close()


async def lock_waiters(database_url: str, query: str = "%config.organizations%") -> int:
    """Backends of this database waiting for a lock, running a query LIKE ``query``
    (by default, the ones that lock config.organizations themselves)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database() AND a.query LIKE $1",
            query,
        )
        return count
    finally:
        await conn.close()


def write_conflicts() -> float:
    """Value writes of this process's servers read again (config_write_conflicts_total)."""
    return REGISTRY.get_sample_value("config_write_conflicts_total") or 0.0


async def committing(database_url: str) -> None:
    """Until a value write has read and waits, in ``config.commit_write``, for the
    organization's lock: its decision is made on what it read."""
    await eventually(lambda: lock_waiters(database_url, "%config.commit_write%"), lambda n: n >= 1)


async def test_a_write_decided_before_another_committed_is_decided_again(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    before = write_conflicts()
    async with write_in_flight(database_url, api.org, "size", "huge") as in_flight:
        writing = asyncio.ensure_future(api.set_int("ai", "b", 7))
        await committing(database_url)  # it read revision 1
        await in_flight.commit()
        # Revision 2 is the other write's: this one read again and wrote revision 3.
        assert await writing == 3
    assert write_conflicts() == before + 1
    assert await api.values() == {
        ("ai", "a"): ival(1),
        ("ai", "size"): sval("huge"),
        ("ai", "b"): ival(7),
    }
    assert [(h.revision, h.key) for h in await api.history(service="ai", key="b")] == [(3, "b")]


async def test_an_expected_revision_checked_before_another_write_committed_is_checked_again(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    async with write_in_flight(database_url, api.org, "size", "huge") as in_flight:
        # As far as it can see, "size" is not set: it expects just that (revision 0).
        writing = asyncio.ensure_future(api.set("ai", "size", sval("small"), expected_revision=0))
        await committing(database_url)
        await in_flight.commit()
        err = await rpc_error(writing, Code.ABORTED)
        assert error_info(err).reason == "REVISION_MISMATCH"
    # The value written meanwhile is not lost.
    assert (await api.get("ai", "size")).value == sval("huge")


async def test_a_value_checked_before_a_schema_committed_is_checked_against_it(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    schema = ServiceSchema((KeySchema("size", ValueType.STRING, allowed_values=("small",)),))
    holder = await asyncpg.connect(database_url)
    try:
        # A schema write in flight, as SetConfigSchema makes one: the organization's
        # row locked first, then the schema.
        in_flight = holder.transaction()
        await in_flight.start()
        await holder.execute(
            "SELECT 1 FROM config.organizations WHERE organization = $1 FOR UPDATE", api.org
        )
        writing = asyncio.ensure_future(api.set("ai", "size", sval("huge")))
        await committing(database_url)  # judged with no schema
        await holder.execute(
            "INSERT INTO config.schemas (organization, service, schema) "
            "VALUES ($1, 'ai', $2::jsonb)",
            api.org,
            json.dumps(schema.to_json()),
        )
        await in_flight.commit()
        assert_invalid(await rpc_error(writing, Code.INVALID_ARGUMENT), "value")
    finally:
        await holder.close()
    await rpc_error(api.get("ai", "size"), Code.NOT_FOUND)


async def test_a_schema_set_while_a_write_is_in_flight_sees_that_write(
    api: Api, database_url: str
) -> None:
    await api.set("ai", "model", sval("small"))
    async with write_in_flight(database_url, api.org, "size", "huge") as in_flight:
        setting = asyncio.ensure_future(
            api.set_schema("ai", key_schema("size", STRING, allowed_values=["small"]))
        )

        # The schema write waits for the value write: it cannot judge the values
        # without it.
        await eventually(lambda: lock_waiters(database_url), lambda n: n >= 1)
        assert not setting.done()
        await in_flight.commit()
        err = await rpc_error(setting, Code.FAILED_PRECONDITION)
        assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert (await api.get("ai", "size")).value.string_value == "huge"


async def test_a_schema_deleted_while_a_write_is_in_flight_waits_for_that_write(
    api: Api, database_url: str
) -> None:
    """A write that lost the optimistic race reads the schemas under the organization's
    lock, and config.commit_write checks them again: a schema deleted in between (the
    delete did not take that lock) made it fail with INTERNAL ("changed under its
    lock"). The delete now waits for the lock like SetConfigSchema."""
    await api.set_schema("ai", key_schema("model", STRING))
    async with write_in_flight(database_url, api.org, "size", "huge") as in_flight:
        deleting = asyncio.ensure_future(api.delete_schema("ai"))
        await eventually(lambda: lock_waiters(database_url), lambda n: n >= 1)
        assert not deleting.done()
        await in_flight.commit()
        await deleting
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)
    assert (await api.get("ai", "size")).value.string_value == "huge"


async def test_a_purge_while_a_write_is_in_flight_removes_that_write_too(
    api: Api, keys: Keys, database_url: str
) -> None:
    await api.set("ai", "model", sval("small"))
    async with write_in_flight(database_url, api.org, "late", "late") as in_flight:
        platform = (
            (
                "authorization",
                f"Bearer {keys.token(None, 'operator', scopes=frozenset({'config:purge'}))}",
            ),
        )
        purging = asyncio.ensure_future(
            api.stub.PurgeConfig(
                config_pb2.PurgeConfigRequest(organization=api.org),
                metadata=platform,
                timeout=TIMEOUT,
            )
        )

        await eventually(lambda: lock_waiters(database_url), lambda n: n >= 1)
        await in_flight.commit()
        await purging
    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM config.entries WHERE organization = $1", api.org
        )
    finally:
        await conn.close()
    assert left == 0


def memo_writes(outcome: str) -> float:
    """Value writes of this process's servers decided on what they remembered of their
    organization, with that outcome (config_write_memo_total)."""
    return REGISTRY.get_sample_value("config_write_memo_total", {"outcome": outcome}) or 0.0


async def written_elsewhere(database_url: str, organization: str, key: str, number: int) -> None:
    """Sets ``ai/<key>`` to ``number`` as another replica would (its read, its commit),
    behind the back of the servers under test."""
    conn = await asyncpg.connect(database_url)
    try:
        await init_connection(conn)  # jsonb as the servers read and write it
        state = await pg.read_for_write(conn, organization, [("ai", key)], {"ai"})
        old = state.entries.get(("ai", key))
        now = dt.datetime.now(dt.UTC)
        change = Change(
            revision=state.revision + 1,
            seq=0,
            service="ai",
            key=key,
            kind="set",
            old_value=old.value if old else None,
            new_value=ConfigValue(ValueType.INT, number),
            actor="elsewhere",
            reason="",
            request_id="",
            created_at=now,
        )
        outcome, _, _ = await pg.commit_write(
            conn, organization, state, [change], now, limits=pg.Usage(1000, 1 << 20)
        )
        assert outcome is pg.Committed.OK
    finally:
        await conn.close()


async def old_value_at(api: Api, revision: int) -> int | None:
    """The old value of the only change of ``revision``, an int, or None when unset."""
    (entry,) = [h for h in await api.history() if h.revision == revision]
    return entry.old_value.int_value if entry.HasField("old_value") else None


async def test_a_writer_that_keeps_writing_an_organization_commits_without_reading(
    api: Api,
) -> None:
    await api.set_int("ai", "a", 1)  # reads first: nothing is known yet
    await api.set_int("ai", "a", 2)  # reads again: the organization had no row before
    before = memo_writes("committed")
    assert await api.set_int("ai", "a", 3) == 3
    assert await api.set_int("ai", "a", 4) == 4
    await api.delete("ai", "a")
    assert memo_writes("committed") == before + 3
    assert [(h.revision, h.type) for h in await api.history()] == [
        (1, config_pb2.CHANGE_TYPE_SET),
        (2, config_pb2.CHANGE_TYPE_SET),
        (3, config_pb2.CHANGE_TYPE_SET),
        (4, config_pb2.CHANGE_TYPE_SET),
        (5, config_pb2.CHANGE_TYPE_DELETE),
    ]
    assert [await old_value_at(api, r) for r in (1, 2, 3, 4, 5)] == [None, 1, 2, 3, 4]
    await rpc_error(api.get("ai", "a"), Code.NOT_FOUND)


async def test_a_write_made_elsewhere_since_is_not_missed(api: Api, database_url: str) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)  # this replica remembers a = 2 at revision 2
    await written_elsewhere(database_url, api.org, "a", 7)  # revision 3
    stale = memo_writes("stale")
    assert await api.set_int("ai", "a", 3) == 4
    assert memo_writes("stale") == stale + 1
    assert await old_value_at(api, 4) == 7


async def test_a_write_that_changes_nothing_as_remembered_is_checked_on_a_fresh_read(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)
    await written_elsewhere(database_url, api.org, "a", 7)
    unverified = memo_writes("unverified")
    # As remembered, a is 2 already: yet it is 7, and setting it to 2 is a change.
    assert await api.set_int("ai", "a", 2) == 4
    assert memo_writes("unverified") == unverified + 1
    assert (await api.get("ai", "a")).value == ival(2)
    assert await old_value_at(api, 4) == 7


async def test_an_error_found_in_what_was_remembered_is_checked_on_a_fresh_read(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)
    await written_elsewhere(database_url, api.org, "a", 7)  # a is at revision 3 now
    # As remembered, a is at revision 2: the expectations of a caller who read it since
    # hold all the same.
    assert await api.set_int("ai", "a", 8, expected_revision=3) == 4
    assert await api.set_int("ai", "a", 9, etag='"4"') == 5
    # And a real mismatch is still refused.
    err = await rpc_error(api.set_int("ai", "a", 10, expected_revision=4), Code.ABORTED)
    assert error_info(err).reason == "REVISION_MISMATCH"


async def test_an_organization_purged_elsewhere_is_another_organization(
    api: Api, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)
    await api.set_int("ai", "a", 2)  # remembered: a = 2 at revision 2
    # Purged by another replica (its store, not this server's).
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, init=init_connection)
    try:
        await pg.ConfigStore(pool).purge(api.org)
    finally:
        await pool.close()
    # Written again up to the revision remembered, with other values.
    await written_elsewhere(database_url, api.org, "a", 8)
    await written_elsewhere(database_url, api.org, "a", 9)
    stale = memo_writes("stale")
    assert await api.set_int("ai", "a", 5) == 3
    assert memo_writes("stale") == stale + 1
    assert await old_value_at(api, 3) == 9


async def test_an_organization_purged_is_not_remembered(
    api: Api, keys: Keys, database_url: str
) -> None:
    await api.set_int("ai", "a", 1)  # remembered: a = 1 at revision 1
    operator = bearer(keys.token(None, "operator", scopes=frozenset({"config:purge"})))
    await api.stub.PurgeConfig(
        config_pb2.PurgeConfigRequest(organization=api.org), metadata=operator, timeout=TIMEOUT
    )
    # Its revisions start over: revision 1 again, another value.
    await written_elsewhere(database_url, api.org, "a", 9)
    assert await api.set_int("ai", "a", 5) == 2
    assert await old_value_at(api, 2) == 9


async def test_setting_an_identical_schema_keeps_its_etag(api: Api) -> None:
    first = await api.set_schema("ai", key_schema("threshold", INT))
    again = await api.set_schema("ai", key_schema("threshold", INT))
    assert again == first


async def test_conditional_schema_write_on_a_missing_schema_is_aborted(api: Api) -> None:
    err = await rpc_error(
        api.set_schema("ai", key_schema("threshold", INT), etag='"1"'), Code.ABORTED
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)


async def test_schema_of_a_service_without_one_is_not_found(api: Api) -> None:
    err = await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)
    assert "ai" in detail(err, error_details_pb2.ResourceInfo).resource_name
    await rpc_error(api.delete_schema("ai"), Code.NOT_FOUND)


async def test_schema_rpcs_validate_the_service(api: Api) -> None:
    for call in (api.get_schema("AI"), api.delete_schema("a b")):
        err = await rpc_error(call, Code.INVALID_ARGUMENT)
        assert_invalid(err, "service")


async def test_list_schemas_in_service_order_with_pages(api: Api) -> None:
    for service in ("web", "ai", "billing", "search", "auth"):
        await api.set_schema(service, key_schema("k", INT))
    listed = await api.list_schemas()
    assert [s.service for s in listed.schemas] == ["ai", "auth", "billing", "search", "web"]
    assert listed.next_page_token == ""
    assert all(s.organization == api.org for s in listed.schemas)

    seen: list[str] = []
    token = ""
    while True:
        page = await api.list_schemas(page_size=2, page_token=token)
        assert len(page.schemas) <= 2
        seen += [s.service for s in page.schemas]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["ai", "auth", "billing", "search", "web"]
    await rpc_error(api.list_schemas(page_size=-1), Code.INVALID_ARGUMENT)
    await rpc_error(api.list_schemas(page_token="garbage"), Code.INVALID_ARGUMENT)


async def test_schema_changes_do_not_change_the_revision(api: Api) -> None:
    await api.set_int("ai", "threshold", 5)
    schema = await api.set_schema("ai", key_schema("threshold", INT, maximum=10))
    schema = await api.set_schema("ai", key_schema("threshold", INT, maximum=20), etag=schema.etag)
    await api.delete_schema("ai")
    assert await api.revision() == 1
    assert len(await api.history()) == 1


SCHEMAS: dict[str, config_pb2.ConfigKeySchema] = {
    "string": key_schema("k", STRING),
    "int range": key_schema("k", INT, minimum=1, maximum=10),
    "double range": key_schema("k", DOUBLE, minimum=0.5, maximum=1.5),
    "string length": key_schema("k", STRING, minimum=2, maximum=4),
    "allowed values": key_schema("k", STRING, allowed_values=["red", "green"]),
    "pattern": key_schema("k", STRING, pattern=r"v[0-9]+\.[0-9]+"),
    "bool": key_schema("k", BOOL),
    "json": key_schema("k", JSON),
    "flag": key_schema("k", FLAG),
}

SCHEMA_CASES: list[tuple[str, config_pb2.Value, config_pb2.Value]] = [
    # (schema, a value that breaks it, a value that satisfies it)
    ("string", ival(5), sval("5")),
    ("int range", ival(0), ival(1)),
    ("int range", ival(11), ival(10)),
    ("int range", dval(5.0), ival(5)),
    ("double range", dval(0.49), dval(0.5)),
    ("double range", dval(1.51), dval(1.5)),
    ("string length", sval("a"), sval("ab")),
    ("string length", sval("abcde"), sval("abcd")),
    ("string length", sval("ééééé"), sval("éééé")),
    ("allowed values", sval("blue"), sval("green")),
    ("pattern", sval("v1.2-beta"), sval("v1.2")),
    ("pattern", sval("xv1.2"), sval("v10.20")),
    ("bool", sval("true"), bval(False)),
    ("json", sval("{}"), jval({})),
    ("flag", bval(True), fval(enabled=True)),
]


@pytest.mark.parametrize(
    ("schema", "bad", "good"),
    SCHEMA_CASES,
    ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(SCHEMA_CASES)],
)
async def test_writes_that_break_the_schema_are_rejected(
    api: Api, schema: str, bad: config_pb2.Value, good: config_pb2.Value
) -> None:
    await api.set_schema("ai", SCHEMAS[schema])
    err = await rpc_error(api.set("ai", "k", bad), Code.INVALID_ARGUMENT)
    assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert "value" in field_violations(err)
    await rpc_error(api.get("ai", "k"), Code.NOT_FOUND)
    assert await api.revision() == 0
    assert (await api.set("ai", "k", good)).value == good
    # Other services are not constrained by it.
    assert (await api.set("web", "k", bad)).value == bad


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [(r"\p{Lu}[a-z]+", "Hello", "hello"), ("[[:digit:]]+", "123", "12a")],
    ids=["unicode class", "posix class"],
)
async def test_re2_patterns_are_accepted_and_enforced(
    api: Api, pattern: str, good: str, bad: str
) -> None:
    # ConfigKeySchema.pattern is RE2 syntax, which every SDK and language evaluates alike.
    await api.set_schema("ai", key_schema("k", STRING, pattern=pattern))
    assert (await api.set("ai", "k", sval(good))).value == sval(good)
    err = await rpc_error(api.set("ai", "k", sval(bad)), Code.INVALID_ARGUMENT)
    assert error_info(err).reason == "SCHEMA_VIOLATION"


async def test_int_bounds_are_exact_for_large_values(api: Api) -> None:
    await api.set_schema("ai", key_schema("id", INT, minimum=-(2**53), maximum=2**53))
    assert await api.set_int("ai", "id", 2**53) == 1
    for number in (2**53 + 1, -(2**53) - 1):
        err = await rpc_error(api.set("ai", "id", ival(number)), Code.INVALID_ARGUMENT)
        assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert (await api.get("ai", "id")).value == ival(2**53)


async def test_strict_schema_rejects_unknown_keys(api: Api) -> None:
    await api.set_schema("ai", key_schema("threshold", INT), strict=True)
    err = await rpc_error(api.set("ai", "unknown", ival(1)), Code.INVALID_ARGUMENT)
    assert error_info(err).reason == "SCHEMA_VIOLATION"
    assert "key" in field_violations(err)
    err = await rpc_error(
        api.batch(put("ai", "threshold", ival(1)), put("ai", "unknown", ival(1))),
        Code.INVALID_ARGUMENT,
    )
    assert "mutations[1].key" in field_violations(err)
    assert await api.revision() == 0
    await api.set_int("ai", "threshold", 1)

    # A non-strict schema lets unknown keys take any value.
    await api.set_schema("ai", key_schema("threshold", INT))
    assert await api.set_int("ai", "unknown", 1) == 2


async def test_after_deleting_the_schema_any_value_is_accepted(api: Api) -> None:
    await api.set_schema("ai", key_schema("threshold", INT, maximum=10), strict=True)
    await api.set_int("ai", "threshold", 5)
    await rpc_error(api.set("ai", "threshold", sval("high")), Code.INVALID_ARGUMENT)
    await api.delete_schema("ai")
    assert (await api.set("ai", "threshold", sval("high"))).value == sval("high")
    assert (await api.set("ai", "anything", ival(100))).value == ival(100)


INVALID_SCHEMAS: dict[str, tuple[tuple[config_pb2.ConfigKeySchema, ...], str]] = {
    "maximum below minimum": (
        (key_schema("k", INT, minimum=10, maximum=1),),
        "schema.keys[0].maximum",
    ),
    "bad regex": ((key_schema("k", STRING, pattern="(unclosed"),), "schema.keys[0].pattern"),
    "lookahead is not RE2": (
        (key_schema("k", STRING, pattern="a(?=b)"),),
        "schema.keys[0].pattern",
    ),
    "backreference is not RE2": (
        (key_schema("k", STRING, pattern=r"(a)\1"),),
        "schema.keys[0].pattern",
    ),
    "atomic group is not RE2": (
        (key_schema("k", STRING, pattern="(?>a+)b"),),
        "schema.keys[0].pattern",
    ),
    "possessive quantifier is not RE2": (
        (key_schema("k", STRING, pattern="a++b"),),
        "schema.keys[0].pattern",
    ),
    "pattern on an int key": ((key_schema("k", INT, pattern="[0-9]+"),), "schema.keys[0].pattern"),
    "allowed values on an int key": (
        (key_schema("k", INT, allowed_values=["1"]),),
        "schema.keys[0].allowed_values",
    ),
    "bounds on a bool key": ((key_schema("k", BOOL, minimum=0),), "schema.keys[0].minimum"),
    "default above maximum": (
        (key_schema("k", INT, maximum=10, default_value=ival(11)),),
        "schema.keys[0].default_value",
    ),
    "default not allowed": (
        (key_schema("k", STRING, allowed_values=["a"], default_value=sval("b")),),
        "schema.keys[0].default_value",
    ),
    "default of another type": (
        (key_schema("k", INT, default_value=sval("1")),),
        "schema.keys[0].default_value",
    ),
    "duplicate keys": (
        (key_schema("k", INT), key_schema("k", STRING)),
        "schema.keys[1].key",
    ),
    "bad key name": ((key_schema("Bad Key", INT),), "schema.keys[0].key"),
    "no type": ((key_schema("k", config_pb2.VALUE_TYPE_UNSPECIFIED),), "schema.keys[0].type"),
    # An enum number this server does not know (proto3 enums are open): never read as
    # another type.
    "unknown type": (
        (key_schema("a", INT), key_schema("k", cast(Any, 99))),
        "schema.keys[1].type",
    ),
    "description too long": (
        (key_schema("k", INT, description="d" * 1001),),
        "schema.keys[0].description",
    ),
    "second key's default is checked too": (
        (
            key_schema("a", INT, minimum=5, maximum=1),
            key_schema("b", INT, maximum=1, default_value=ival(2)),
        ),
        "schema.keys[1].default_value",
    ),
}


@pytest.mark.parametrize("name", list(INVALID_SCHEMAS))
async def test_invalid_schemas_are_rejected(api: Api, name: str) -> None:
    keys_, field = INVALID_SCHEMAS[name]
    err = await rpc_error(api.set_schema("ai", *keys_), Code.INVALID_ARGUMENT)
    assert_invalid(err, field)
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)


async def test_schema_with_a_bad_service_is_invalid(api: Api) -> None:
    err = await rpc_error(api.set_schema("AI", key_schema("k", INT)), Code.INVALID_ARGUMENT)
    assert_invalid(err, "schema.service")


async def test_schema_that_existing_values_break_is_failed_precondition(api: Api) -> None:
    await api.batch(
        put("ai", "limit", ival(50)), put("ai", "name", ival(1)), put("ai", "fine", ival(1))
    )
    err = await rpc_error(
        api.set_schema(
            "ai",
            key_schema("limit", INT, maximum=10),
            key_schema("name", STRING),
            key_schema("fine", INT),
        ),
        Code.FAILED_PRECONDITION,
    )
    failure = detail(err, error_details_pb2.PreconditionFailure)
    assert {v.subject for v in failure.violations} == {"limit", "name"}
    assert all(v.description for v in failure.violations)
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)

    # A strict schema is broken by keys it does not list.
    err = await rpc_error(
        api.set_schema("ai", key_schema("fine", INT), strict=True), Code.FAILED_PRECONDITION
    )
    failure = detail(err, error_details_pb2.PreconditionFailure)
    assert {v.subject for v in failure.violations} == {"limit", "name"}
    await rpc_error(api.get_schema("ai"), Code.NOT_FOUND)
    assert await api.revision() == 1


async def test_schema_request_id_must_be_a_uuid(api: Api) -> None:
    # request_id is "a UUID chosen by the client" everywhere in the package.
    err = await rpc_error(
        api.set_schema("ai", key_schema("k", INT), request_id="not-a-uuid"), Code.INVALID_ARGUMENT
    )
    assert_invalid(err, "request_id")


async def test_schema_request_id_retry_of_a_conditional_replace_succeeds(api: Api) -> None:
    first = await api.set_schema("ai", key_schema("k", INT))
    request_id = str(uuid.uuid4())
    replaced = await api.set_schema(
        "ai", key_schema("k", INT, maximum=10), etag=first.etag, request_id=request_id
    )
    # The answer to the first attempt got lost; the client retries the same request.
    retried = await api.set_schema(
        "ai", key_schema("k", INT, maximum=10), etag=first.etag, request_id=request_id
    )
    assert retried == replaced
