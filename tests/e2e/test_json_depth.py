"""JSON values are bounded in depth (issue: no write may break a watcher): what a write
accepts, a client with default settings in any language can decode (protobuf runtimes
refuse messages nested deeper than 100 levels by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from google.protobuf import struct_pb2

from config_service.domain.values import MAX_JSON_DEPTH
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, new_slug, rpc_error
from tests.rpcerrors import field_violations

Response = config_pb2.WatchConfigResponse


def nested(depth: int) -> struct_pb2.Value:
    """A JSON value ``depth`` levels deep ([[...[1]...]]), built without json_format
    (which would refuse a deep one on the client side)."""
    value = struct_pb2.Value(number_value=1)
    for _ in range(depth - 1):
        outer = struct_pb2.Value()
        outer.list_value.values.append(value)
        value = outer
    return value


@pytest.fixture(scope="module")
async def stub(servers: dict[str, RunningServer]) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        yield config_service_pb2_grpc.ConfigServiceStub(channel)


async def test_json_deeper_than_the_bound_is_refused_everywhere(stub: Any, keys: Keys) -> None:
    org = new_slug("j")
    md = bearer(keys.token(org))
    too_deep = nested(MAX_JSON_DEPTH + 1)
    err = await rpc_error(
        stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org, service="s", key="k", value=config_pb2.Value(json_value=too_deep)
            ),
            metadata=md,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "value.json_value" in field_violations(err)
    flag = config_pb2.FeatureFlag(
        enabled=True, variants=[config_pb2.FlagVariant(name="a", weight=1, value=too_deep)]
    )
    err = await rpc_error(
        stub.BatchSetConfig(
            config_pb2.BatchSetConfigRequest(
                organization=org,
                mutations=[
                    config_pb2.ConfigMutation(
                        service="s", key="f", set_value=config_pb2.Value(flag_value=flag)
                    )
                ],
            ),
            metadata=md,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "mutations[0].set_value.flag_value.variants[0].value" in field_violations(err)
    listed = await stub.ListConfigs(
        config_pb2.ListConfigsRequest(organization=org), metadata=md, timeout=10
    )
    assert list(listed.configs) == []  # nothing written


async def test_json_at_the_bound_is_written_and_delivered(stub: Any, keys: Keys) -> None:
    org = new_slug("j")
    md = bearer(keys.token(org))
    await stub.SetConfig(
        config_pb2.SetConfigRequest(
            organization=org,
            service="s",
            key="k",
            value=config_pb2.Value(json_value=nested(MAX_JSON_DEPTH)),
        ),
        metadata=md,
        timeout=10,
    )
    got = await stub.GetConfig(
        config_pb2.GetConfigRequest(organization=org, service="s", key="k"),
        metadata=md,
        timeout=10,
    )
    assert got.value.json_value == nested(MAX_JSON_DEPTH)
    call = stub.WatchConfig(config_pb2.WatchConfigRequest(organization=org), metadata=md)
    snapshot = await call.read()
    call.cancel()
    assert snapshot.type == Response.EVENT_TYPE_SNAPSHOT
    assert snapshot.entries[0].value.json_value == nested(MAX_JSON_DEPTH)
