"""Schemas cannot stall a replica (security review finding 1): patterns are bounded in
length, number and compiled size, compiled a step at a time, cached within a size
budget; a schema and an organization's schemas are bounded in size."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

from config_service.domain.patterns import CACHE, CACHE_BUDGET, MAX_PATTERN_CHARS, MAX_PATTERNS
from config_service.domain.schema import MAX_ORGANIZATION_SCHEMA_BYTES, MAX_SCHEMA_BYTES
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, new_slug, rpc_error
from tests.rpcerrors import error_info, field_violations

STRING = config_pb2.VALUE_TYPE_STRING
Code = grpc.StatusCode


@pytest.fixture(scope="module")
async def stub(servers: dict[str, RunningServer]) -> AsyncIterator[object]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        yield config_service_pb2_grpc.ConfigServiceStub(channel)


async def set_schema(
    stub: object, keys: Keys, org: str, service: str, key_schemas: list[config_pb2.ConfigKeySchema]
) -> config_pb2.ConfigSchema:
    return await stub.SetConfigSchema(  # type: ignore[attr-defined, no-any-return]
        config_pb2.SetConfigSchemaRequest(
            schema=config_pb2.ConfigSchema(organization=org, service=service, keys=key_schemas)
        ),
        metadata=bearer(keys.token(org)),
        timeout=30,
    )


def pattern_key(name: str, pattern: str, description: str = "") -> config_pb2.ConfigKeySchema:
    return config_pb2.ConfigKeySchema(
        key=name, type=STRING, pattern=pattern, description=description
    )


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("a" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS} characters"),
        # The review's attack shape, in one pattern: refused, not compiled.
        ("([\\x{80}-\\x{10FFFF}]{1000})" * 60, f"at most {MAX_PATTERN_CHARS} characters"),
        # Short, but its program would not fit RE2's memory budget.
        ("\\pL{1000}", "pattern too large"),
        ("(\\pL|\\pN){1000}", "pattern too large"),
        ("(unclosed", "not valid RE2"),
    ],
)
async def test_expensive_or_bad_patterns_are_refused(
    stub: object, keys: Keys, pattern: str, problem: str
) -> None:
    org = new_slug("p")
    err = await rpc_error(
        set_schema(stub, keys, org, "svc", [pattern_key("k", pattern)]), Code.INVALID_ARGUMENT
    )
    assert problem in field_violations(err)["schema.keys[0].pattern"]


async def test_the_number_of_patterns_per_schema_is_bounded(stub: object, keys: Keys) -> None:
    org = new_slug("p")
    many = [pattern_key(f"k{i}", f"v{i}[a-z]*") for i in range(MAX_PATTERNS + 1)]
    err = await rpc_error(set_schema(stub, keys, org, "svc", many), Code.INVALID_ARGUMENT)
    assert "schema.keys" in field_violations(err)
    await set_schema(stub, keys, org, "svc", many[:MAX_PATTERNS])  # the bound itself is fine


async def test_the_pattern_cache_stays_within_its_budget(stub: object, keys: Keys) -> None:
    org = new_slug("p")
    for batch in range(4):
        heavy = [
            pattern_key(f"k{i}", f"[\\x{{80}}-\\x{{10FFFF}}]{{{800 + (batch * 50 + i) % 200}}}")
            for i in range(MAX_PATTERNS)
        ]
        await set_schema(stub, keys, org, f"svc{batch}", heavy)
    assert 0 < CACHE.used <= CACHE_BUDGET


async def test_schema_sizes_are_bounded_per_service_and_per_organization(
    stub: object, keys: Keys
) -> None:
    org = new_slug("p")
    note = "d" * 900

    def keys_of(count: int) -> list[config_pb2.ConfigKeySchema]:
        return [
            config_pb2.ConfigKeySchema(key=f"k{i}", type=STRING, description=note)
            for i in range(count)
        ]

    too_big = keys_of(MAX_SCHEMA_BYTES // 900 + 10)
    err = await rpc_error(set_schema(stub, keys, org, "big", too_big), Code.INVALID_ARGUMENT)
    assert "schema" in field_violations(err)
    # Schemas just under the per-service bound, until the organization's is reached.
    per_schema = keys_of(MAX_SCHEMA_BYTES // 1100)
    stored = 0
    while True:
        assert stored < 2 * MAX_ORGANIZATION_SCHEMA_BYTES // MAX_SCHEMA_BYTES, "never refused"
        try:
            await set_schema(stub, keys, org, f"s{stored}", per_schema)
        except grpc.aio.AioRpcError as exc:
            refused = exc
            break
        stored += 1
    assert stored >= MAX_ORGANIZATION_SCHEMA_BYTES // MAX_SCHEMA_BYTES
    assert refused.code() == Code.RESOURCE_EXHAUSTED
    info = error_info(refused)
    assert info.reason == "SCHEMA_LIMIT"
    assert int(info.metadata["used_bytes"]) <= MAX_ORGANIZATION_SCHEMA_BYTES
    # Replacing an existing schema with one of the same size still works.
    await set_schema(stub, keys, org, "s0", per_schema[:-1])
