"""Channels from the suite's servers to each other (TenantService to the Provisioner
and ConfigService, every server to ConfigService for the platform configuration):
plaintext by default, TLS when ``TLS_CA_FILE`` is set, presenting the server's own
certificate as the client certificate (for servers that require mutual TLS)."""

from __future__ import annotations

import grpc

from servicekit import tracing
from servicekit.settings import Settings


def client_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to another server of the suite at ``target`` (``host:port``)."""
    interceptors = tracing.client_interceptors()  # none unless tracing is on
    if settings.tls_ca_file is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    key = settings.tls_key_file.read_bytes() if settings.tls_key_file else None
    chain = settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes(),
        private_key=key,
        certificate_chain=chain,
    )
    return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
