"""Transport security (security review finding 12): server TLS and mutual TLS through
settings, JWKS only over https unless development says otherwise, reflection as a
setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from config_service.app import SPEC as CONFIG
from servicekit.errors import SettingsError
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate and a client certificate it signed."""
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _serving(channel: grpc.aio.Channel) -> bool:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _secure(port: int, pki: dict[str, Path], *, client_cert: bool) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes() if client_cert else None,
        certificate_chain=pki["client_cert"].read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def _start(server_env: dict[str, str], **variables: str) -> RunningServer:
    env = {**server_env, "METRICS_PORT": "off", **variables}
    return await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))


async def test_the_server_speaks_tls_only(server_env: dict[str, str], pki: dict[str, Path]) -> None:
    server = await _start(
        server_env, TLS_CERT_FILE=str(pki["server_cert"]), TLS_KEY_FILE=str(pki["server_key"])
    )
    try:
        async with _secure(server.port, pki, client_cert=False) as channel:
            assert await _serving(channel)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert not await _serving(channel)
    finally:
        await server.stop()


async def test_mutual_tls_wants_a_client_certificate(
    server_env: dict[str, str], pki: dict[str, Path]
) -> None:
    server = await _start(
        server_env,
        TLS_CERT_FILE=str(pki["server_cert"]),
        TLS_KEY_FILE=str(pki["server_key"]),
        TLS_CLIENT_CA_FILE=str(pki["ca"]),
    )
    try:
        async with _secure(server.port, pki, client_cert=True) as channel:
            assert await _serving(channel)
        async with _secure(server.port, pki, client_cert=False) as channel:
            assert not await _serving(channel)
    finally:
        await server.stop()


async def test_reflection_can_be_turned_off(server_env: dict[str, str]) -> None:
    server = await _start(server_env, GRPC_REFLECTION="off")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"JWT_JWKS_URL": "http://keys.example/jwks.json"}, "https://"),
        ({"TLS_CERT_FILE": "/no/such/cert.pem", "TLS_KEY_FILE": "/no/such/key.pem"}, "no such"),
        ({"TLS_CLIENT_CA_FILE": __file__}, "needs TLS_CERT_FILE"),
        ({"GRPC_REFLECTION": "maybe"}, "GRPC_REFLECTION"),
    ],
)
def test_insecure_or_inconsistent_settings_are_refused(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings("config", variables)


def test_plain_http_jwks_only_when_development_says_so() -> None:
    settings = load_settings(
        "config",
        {"JWT_JWKS_URL": "http://127.0.0.1:8080/jwks.json", "JWT_JWKS_ALLOW_HTTP": "true"},
    )
    assert settings.jwks_url == "http://127.0.0.1:8080/jwks.json"
