"""Fixtures shared by the whole suite: real PostgreSQL and Redis, keys and tokens.

PostgreSQL: ``DATABASE_URL`` if set, else the machine's server on 127.0.0.1:5432, else
an embedded one started under ``.data/test-postgres``. Each test session works in a
fresh database of its own, dropped at the end. Redis: ``REDIS_URL``, else
127.0.0.1:6379, else an embedded one on a free port.
"""

from __future__ import annotations

import os

# Before gRPC is imported (see GRPC_ENABLE_FORK_SUPPORT in the Makefile): the suite
# forks only to exec, and gRPC's fork handlers now and then crashed such a child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicekit.auth import ROLE_SCOPES, TokenSigner, generate_signing_key
from servicekit.devstack import REPO_ROOT, postgres_server, redis_server, scratch_database


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server the suite may create databases on (see the module doc)."""
    with postgres_server(REPO_ROOT / ".data" / "test-postgres", try_local=True) as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for this test session."""
    with scratch_database(postgres_server_url, "agentready_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A URL of a running Redis server."""
    with redis_server(REPO_ROOT / ".data" / "test-redis", try_local=True) as url:
        yield url


class Keys:
    """A signing key pair for the session: mints tokens the servers accept."""

    def __init__(self, folder: Path) -> None:
        pem, jwk = generate_signing_key()
        self.private_pem = pem
        self.jwk = jwk
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))
        self.signing_key_file = folder / "signing-key.pem"
        self.signing_key_file.write_bytes(pem)
        self.signer = TokenSigner(pem, issuer="agentready", audience="agentready")
        # What ConfigService and the Provisioner watch the platform configuration with.
        self.platform_token_file = folder / "platform-token"
        self.platform_token_file.write_text(
            self.token(
                None,
                "operator",
                scopes=frozenset({"config:read"}),
                subject="service:test",
                ttl=dt.timedelta(days=1),
            )
        )

    def token(
        self,
        organization: str | None = "acme",
        role: str = "owner",
        *,
        scopes: frozenset[str] | None = None,
        ttl: dt.timedelta = dt.timedelta(minutes=10),
        token_type: str = "access",
        subject: str = "user-1",
        now: dt.datetime | None = None,
    ) -> str:
        """A signed token for ``organization`` with the scopes of ``role``."""
        token, _ = self.signer.mint(
            subject=subject,
            organization=organization,
            role=role,
            scopes=ROLE_SCOPES[role] if scopes is None else scopes,
            ttl=ttl,
            token_type=token_type,
            now=now,
        )
        return token


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """The session's signing keys; servers started by fixtures trust them."""
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def server_env(
    database_url: str, redis_url: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for a server under test: real stores, free ports, the test keys."""
    return {
        "TENANT_SIGNING_KEY_FILE": str(keys.signing_key_file),
        # Redis is shared with earlier runs: this session's keys are its own.
        "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "PLATFORM_TOKEN_FILE": str(keys.platform_token_file),
        # Some tests open thousands of streams with one token; the caps have their own.
        "MAX_STREAMS_PER_TOKEN": "100000",
        "MAX_STREAMS_PER_ORGANIZATION": "100000",
        # Cheap argon2id in tests: the suite signs many users up on two cores.
        "TENANT_ARGON2_TIME_COST": "1",
        "TENANT_ARGON2_MEMORY_KIB": "1024",
        "TENANT_ARGON2_PARALLELISM": "1",
        # Failed sign-ins count per client address (127.0.0.1 for every test, in a Redis
        # shared with earlier runs): the per-client limit has a test of its own.
        "TENANT_LOGIN_MAX_FAILURES_PER_CLIENT": "1000000",
        "PROVISIONER_GITOPS_DIR": str(tmp_path_factory.mktemp("gitops")),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "JWT_JWKS_FILE": str(keys.jwks_file),
        "LOG_LEVEL": "WARNING",
        "SHUTDOWN_GRACE_SECONDS": "1",
    }
