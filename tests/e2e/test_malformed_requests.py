"""A request body that does not parse (bad UTF-8 in a string field, truncated bytes) is
answered INVALID_ARGUMENT, reason MALFORMED_REQUEST, by every service, once the caller
is authenticated; gRPC alone would answer UNKNOWN with the parser's exception."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.rpcerrors import error_info

# Field 1 (a string) whose bytes are not UTF-8; a length-delimited field cut short.
BAD_UTF8 = b"\x0a\x05ac\xffme"
TRUNCATED = b"\x0a\x10acme"


async def call_raw(
    server: RunningServer, method: str, body: bytes, *, token: str | None, streaming: bool
) -> grpc.aio.AioRpcError:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        identity: Any = lambda data: data  # noqa: E731 - raw bytes both ways
        try:
            if streaming:
                stream = channel.unary_stream(
                    method, request_serializer=identity, response_deserializer=identity
                )
                async for _ in stream(body, metadata=metadata, timeout=10):
                    pass
            else:
                unary = channel.unary_unary(
                    method, request_serializer=identity, response_deserializer=identity
                )
                await unary(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error
    raise AssertionError(f"{method} accepted a malformed request")


@pytest.mark.parametrize(
    ("service", "method", "body", "streaming"),
    [
        ("config", "/agentready.config.v1.ConfigService/GetConfig", BAD_UTF8, False),
        ("config", "/agentready.config.v1.ConfigService/WatchConfig", TRUNCATED, True),
        (
            "provisioner",
            "/agentready.provisioner.v1.ProvisionerService/GetTenantEnvironment",
            BAD_UTF8,
            False,
        ),
        ("tenant", "/agentready.tenant.v1.TenantService/GetOrganization", TRUNCATED, False),
    ],
)
async def test_a_malformed_request_is_invalid_argument(
    servers: dict[str, RunningServer],
    keys: Keys,
    service: str,
    method: str,
    body: bytes,
    streaming: bool,
) -> None:
    error = await call_raw(
        servers[service], method, body, token=keys.token("acme"), streaming=streaming
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error_info(error).reason == "MALFORMED_REQUEST"
    assert "DecodeError" not in (error.details() or "")


async def test_a_public_method_answers_a_malformed_request_too(
    servers: dict[str, RunningServer],
) -> None:
    error = await call_raw(
        servers["tenant"],
        "/agentready.tenant.v1.TenantService/Login",
        BAD_UTF8,
        token=None,
        streaming=False,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "MALFORMED_REQUEST"


async def test_an_unauthenticated_caller_learns_nothing_about_its_body(
    servers: dict[str, RunningServer],
) -> None:
    error = await call_raw(
        servers["config"],
        "/agentready.config.v1.ConfigService/GetConfig",
        BAD_UTF8,
        token=None,
        streaming=False,
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
