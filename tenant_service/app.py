"""Wiring of TenantService into the shared server start-up: the signing key, password
hashing, sign-in throttling, revocation publishing, the clients of the other services,
the use cases and the saga loop (which runs while this replica holds the leader lock)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import grpc
from agentready.tenant.v1 import tenant_service_pb2, tenant_service_pb2_grpc

from servicekit.channels import client_channel
from servicekit.errors import SettingsError
from servicekit.leader import LeaderLock, leader_lock_key
from servicekit.platform import PlatformConfig
from servicekit.server import Resources, ServiceSpec
from servicekit.settings import ExtraSetting
from tenant_service.adapters.platform import Platform
from tenant_service.adapters.postgres import TenantStore
from tenant_service.domain.model import Limits
from tenant_service.domain.permissions import PUBLIC
from tenant_service.entrypoints.grpc_api import TenantServiceServicer
from tenant_service.service_layer.organizations import Organizations, SagaLoop, SagaTiming
from tenant_service.service_layer.tenancy import Tenancy
from tenant_service.service_layer.tokens import (
    Passwords,
    Revoker,
    ServiceToken,
    SigningKey,
    Throttle,
    TokenPolicy,
)
from tenant_service.service_layer.users import Users

SERVICE_NAME = tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name

SETTINGS = {
    "TENANT_SIGNING_KEY_FILE": ExtraSetting(
        "(unset)",
        "Required. PEM file of the Ed25519 private key tokens are signed with; re-read when "
        "it changes (its public key must be in the JWKS the verifiers read).",
    ),
    "TENANT_PROVISIONER_ADDRESS": ExtraSetting(
        "127.0.0.1:50053", "host:port of ProvisionerService, for the organization sagas."
    ),
    "TENANT_CALL_TIMEOUT_SECONDS": ExtraSetting(
        "5", "Deadline of each call to another service.", kind="seconds", lo=0.1, hi=600
    ),
    "TENANT_ACCESS_TOKEN_TTL_SECONDS": ExtraSetting(
        "900", "Lifetime of access tokens.", kind="int", lo=30, hi=86400
    ),
    "TENANT_REFRESH_TOKEN_TTL_SECONDS": ExtraSetting(
        "2592000", "Lifetime of refresh tokens (30 days).", kind="int", lo=60, hi=31_536_000
    ),
    "TENANT_ARGON2_TIME_COST": ExtraSetting(
        "3", "argon2id passes over memory.", kind="int", lo=1, hi=100
    ),
    "TENANT_ARGON2_MEMORY_KIB": ExtraSetting(
        "65536", "argon2id memory per hash, in KiB (64 MiB).", kind="int", lo=1024, hi=4_194_304
    ),
    "TENANT_ARGON2_PARALLELISM": ExtraSetting("4", "argon2id lanes.", kind="int", lo=1, hi=64),
    "TENANT_LOGIN_MAX_FAILURES_PER_EMAIL": ExtraSetting(
        "5",
        "Failed sign-ins for one email within the window before Login answers RESOURCE_EXHAUSTED.",
        kind="int",
        lo=1,
        hi=1_000_000,
    ),
    "TENANT_LOGIN_MAX_FAILURES_PER_CLIENT": ExtraSetting(
        "50",
        "Failed sign-ins from one client address within the window before Login refuses it.",
        kind="int",
        lo=1,
        hi=1_000_000,
    ),
    "TENANT_LOGIN_FAILURE_WINDOW_SECONDS": ExtraSetting(
        "900",
        "How long failed sign-ins count, from the first.",
        kind="seconds",
        lo=1,
        hi=86400,
    ),
    "TENANT_SAGA_GRACE_SECONDS": ExtraSetting(
        "2",
        "How long the saga loop leaves a new organization to the RPC that created it.",
        kind="seconds",
        lo=0,
        hi=3600,
    ),
    "TENANT_SAGA_BACKOFF_BASE_SECONDS": ExtraSetting(
        "1",
        "Wait before retrying a saga step after its first failure; doubles per failure.",
        kind="seconds",
        lo=0.01,
        hi=3600,
    ),
    "TENANT_SAGA_BACKOFF_MAX_SECONDS": ExtraSetting(
        "300",
        "Longest wait between retries, and the wait after a permanent failure.",
        kind="seconds",
        lo=0.01,
        hi=86400,
    ),
    "TENANT_SAGA_POLL_SECONDS": ExtraSetting(
        "1",
        "How often an environment still being built or removed is checked again.",
        kind="seconds",
        lo=0.01,
        hi=600,
    ),
    "TENANT_LEADER_LOCK": ExtraSetting(
        "agentready:tenant:leader",
        "Name of the PostgreSQL advisory lock the saga loop's leader holds.",
    ),
}


def limits_from(platform: PlatformConfig) -> Callable[[str], Limits]:
    """An organization's limits: the platform configuration's, else the built-in ones."""
    defaults = Limits()

    def limits(organization: str) -> Limits:
        values = platform.limits(organization)
        return Limits(
            **{
                f.name: values.get(f.name, getattr(defaults, f.name))
                for f in dataclasses.fields(Limits)
            }
        )

    return limits


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Builds TenantService and starts its saga loop."""
    settings = resources.settings
    extra = settings.extra
    key_file = extra["TENANT_SIGNING_KEY_FILE"]
    if key_file in ("", "(unset)"):
        raise SettingsError("TENANT_SIGNING_KEY_FILE: required (PEM of the Ed25519 signing key)")
    if not Path(key_file).is_file():  # noqa: ASYNC240 - once, at start-up
        raise SettingsError(f"TENANT_SIGNING_KEY_FILE={key_file!r}: no such file")
    try:
        key = SigningKey(Path(key_file), issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    except ValueError as exc:
        raise SettingsError(f"TENANT_SIGNING_KEY_FILE: {exc}") from None
    store = TenantStore(resources.pool)
    revoker = Revoker(resources.redis, resources.revocations, prefix=settings.redis_prefix)
    policy = TokenPolicy(
        access_ttl=dt.timedelta(seconds=extra["TENANT_ACCESS_TOKEN_TTL_SECONDS"]),
        refresh_ttl=dt.timedelta(seconds=extra["TENANT_REFRESH_TOKEN_TTL_SECONDS"]),
    )
    users = Users(
        store,
        passwords=Passwords(
            time_cost=extra["TENANT_ARGON2_TIME_COST"],
            memory_kib=extra["TENANT_ARGON2_MEMORY_KIB"],
            parallelism=extra["TENANT_ARGON2_PARALLELISM"],
        ),
        throttle=Throttle(
            resources.redis,
            max_per_email=extra["TENANT_LOGIN_MAX_FAILURES_PER_EMAIL"],
            max_per_client=extra["TENANT_LOGIN_MAX_FAILURES_PER_CLIENT"],
            window=extra["TENANT_LOGIN_FAILURE_WINDOW_SECONDS"],
            prefix=settings.redis_prefix,
        ),
        key=key,
        policy=policy,
        revoker=revoker,
    )
    platform = Platform(
        ServiceToken(key),
        provisioner_address=extra["TENANT_PROVISIONER_ADDRESS"],
        config_address=settings.config_address,
        timeout=extra["TENANT_CALL_TIMEOUT_SECONDS"],
        connect=lambda target: client_channel(target, settings),
    )
    timing = SagaTiming(
        grace=extra["TENANT_SAGA_GRACE_SECONDS"],
        backoff_base=extra["TENANT_SAGA_BACKOFF_BASE_SECONDS"],
        backoff_max=extra["TENANT_SAGA_BACKOFF_MAX_SECONDS"],
        poll=extra["TENANT_SAGA_POLL_SECONDS"],
    )
    organizations = Organizations(
        store, platform, revoker, timing, reserved=frozenset({settings.platform_organization})
    )
    if resources.platform.token is None:
        resources.platform.token = ServiceToken(key)  # TenantService signs its own
    tenancy = Tenancy(
        store,
        revoker,
        key,
        limits_from(resources.platform),
        owners_changed=organizations.owners_changed,
        grace=timing.grace,
    )
    keys = resources.verifier.keys if resources.verifier is not None else None
    servicer = TenantServiceServicer(
        users, organizations, tenancy, keys=keys, signer=lambda: key.signer
    )
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(servicer, server)

    leader = LeaderLock(
        settings.database_url,
        key=leader_lock_key(extra["TENANT_LEADER_LOCK"]),
        application_name="agentready-tenant-leader",
    )
    saga = SagaLoop(
        organizations, revoker, store, leader, tick=min(1.0, timing.poll, timing.backoff_base)
    )
    resources.parts.update(organizations=organizations, saga_loop=saga, users=users)
    resources.run_in_background(saga.run(), name="tenant-saga", stop_when_stopping=True)

    async def close() -> None:
        await organizations.close()
        await platform.close()

    resources.on_shutdown(close)


SPEC = ServiceSpec(
    name="tenant",
    schema="tenant",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    public_methods=frozenset(f"/{SERVICE_NAME}/{name}" for name in PUBLIC),
    extra_settings=SETTINGS,
)
