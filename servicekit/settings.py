"""Settings read from the environment, validated once at start-up.

Every setting has a sensible default for development. A bad value stops the process
with a one-line message naming the variable (see :func:`servicekit.server.main`),
never with a stack trace.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from servicekit.errors import SettingsError
from servicekit.requests import check_organization

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings of one server process."""

    service: str
    database_url: str
    redis_url: str
    grpc_host: str
    grpc_port: int
    metrics_port: int | None
    log_level: str
    log_format: str
    event_loop: str
    gc_thresholds: tuple[int, int, int] | None
    shutdown_grace_seconds: float
    shutdown_drain_seconds: float
    db_pool_min: int
    db_pool_max: int
    db_connect_timeout_seconds: float
    jwks_file: Path | None
    jwks_url: str | None
    jwks_reload_seconds: float
    jwt_issuer: str
    jwt_audience: str
    platform_organization: str
    config_address: str
    platform_token_file: Path | None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_ca_file: Path | None = None
    grpc_reflection: bool = True
    max_streams_per_token: int = 1000
    max_streams_per_organization: int = 10000
    redis_prefix: str = "agentready"
    # Redis through Sentinel: (host, port) of each sentinel, and the master's name.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = None
    # Connections older than this get a GOAWAY (0: never), so clients rebalance.
    grpc_max_connection_age_seconds: float = 0.0
    grpc_max_connection_age_grace_seconds: float = 30.0
    # Service-specific settings, validated: name → int, float or str.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExtraSetting:
    """A service-specific setting: its default, meaning and accepted range.

    ``kind`` is ``int``, ``seconds`` (a non-negative number) or ``str``.
    """

    default: str
    description: str
    kind: str = "str"
    lo: float = 0
    hi: float = 10**9


# (variable, default, description) for the settings every server shares. The README's
# table is checked against this list by a test, so the two cannot drift apart.
COMMON_SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        "DATABASE_URL",
        "postgresql://127.0.0.1:5432/postgres",
        "PostgreSQL URL (`postgresql://user:pass@host:port/db`, or `?host=/socket/dir`).",
    ),
    (
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis URL (`redis://`, `rediss://` for TLS, or `unix://`); a password or ACL user "
        "goes in it (`redis://user:password@host:6379/0`).",
    ),
    (
        "REDIS_SENTINELS",
        "(unset)",
        "Comma-separated `host:port` of Redis Sentinels; when set, the servers ask them for "
        "the master named `REDIS_SENTINEL_MASTER` (and follow a failover), and `REDIS_URL` "
        "gives only the password, database and TLS (its host is not used).",
    ),
    ("REDIS_SENTINEL_MASTER", "mymaster", "Name of the master the Sentinels watch."),
    (
        "REDIS_SENTINEL_PASSWORD",
        "(unset)",
        "Password of the Sentinels themselves, when they require one (the master's is in "
        "`REDIS_URL`).",
    ),
    (
        "REDIS_KEY_PREFIX",
        "agentready",
        "Prefix of every Redis key the servers share (token revocations, rate-limit and "
        "sign-in counters); suites sharing one Redis need different prefixes.",
    ),
    ("GRPC_HOST", "[::]", "Address the gRPC server binds."),
    (
        "<SVC>_GRPC_PORT / GRPC_PORT",
        "50051 / 50052 / 50053",
        "gRPC port of TenantService / ConfigService / ProvisionerService; 0 picks a free one.",
    ),
    (
        "<SVC>_METRICS_PORT / METRICS_PORT",
        "9451 / 9452 / 9453",
        "Prometheus `/metrics` port; `off` disables it, 0 picks a free one.",
    ),
    (
        "GRPC_MAX_CONNECTION_AGE_SECONDS",
        "0",
        "Age after which the server asks a client to reconnect (HTTP/2 GOAWAY), so clients "
        "spread over replicas added since; 0 never does. Behind a load balancer, e.g. 300.",
    ),
    (
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
        "30",
        "How long RPCs on a connection past its age may go on (a WatchConfig stream is "
        "then ended with UNAVAILABLE and the SDK resumes it on a new connection).",
    ),
    ("LOG_LEVEL", "INFO", "One of DEBUG, INFO, WARNING, ERROR."),
    ("LOG_FORMAT", "json", "`json` (one object a line) or `text`."),
    ("EVENT_LOOP", "uvloop", "`uvloop` (faster) or `asyncio` (the standard library's)."),
    (
        "GC_THRESHOLDS",
        "50000,50,100",
        "Python garbage-collector thresholds once serving; `default` keeps Python's.",
    ),
    ("SHUTDOWN_GRACE_SECONDS", "10", "How long in-flight RPCs may finish after SIGTERM."),
    (
        "SHUTDOWN_DRAIN_SECONDS",
        "0",
        "How long health answers NOT_SERVING before the server stops accepting RPCs.",
    ),
    ("DB_POOL_MIN", "1", "Minimum PostgreSQL connections per process."),
    ("DB_POOL_MAX", "10", "Maximum PostgreSQL connections per process."),
    (
        "DB_CONNECT_TIMEOUT_SECONDS",
        "30",
        "How long start-up waits for PostgreSQL to answer before giving up.",
    ),
    (
        "JWT_JWKS_FILE",
        "(unset)",
        "Path of a JWKS file with the public keys tokens are verified "
        "with; re-read when it changes or a token names an unknown `kid`.",
    ),
    ("JWT_JWKS_URL", "(unset)", "HTTP(S) URL of a JWKS document, used when no file is set."),
    (
        "JWT_JWKS_RELOAD_SECONDS",
        "60",
        "How often a JWKS URL is read again (a JWKS file is read again as soon as it "
        "changes); keys removed from the JWKS stop verifying then.",
    ),
    (
        "JWT_JWKS_ALLOW_HTTP",
        "false",
        "`true` lets `JWT_JWKS_URL` be plain `http://` (development only: anyone on the "
        "path could swap the keys); otherwise it must be `https://`.",
    ),
    ("JWT_ISSUER", "agentready", "Required `iss` claim of every token."),
    ("JWT_AUDIENCE", "agentready", "Required `aud` claim of every token."),
    (
        "TLS_CERT_FILE",
        "(unset)",
        "PEM certificate (chain) the gRPC server presents; with `TLS_KEY_FILE`, the server "
        "speaks TLS only.",
    ),
    ("TLS_KEY_FILE", "(unset)", "PEM private key of `TLS_CERT_FILE`."),
    (
        "TLS_CLIENT_CA_FILE",
        "(unset)",
        "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).",
    ),
    (
        "TLS_CA_FILE",
        "(unset)",
        "PEM CA bundle the suite's own clients (TenantService's sagas, the platform "
        "watchers) trust; when set they connect with TLS (and present `TLS_CERT_FILE` as "
        "their client certificate).",
    ),
    (
        "GRPC_REFLECTION",
        "on",
        "`on` or `off`: gRPC server reflection, served without a token (it reveals the "
        "API's shape, never data).",
    ),
    (
        "MAX_STREAMS_PER_TOKEN",
        "1000",
        "Most streams (WatchConfig) one token may hold open on one server; beyond, "
        "RESOURCE_EXHAUSTED (pods sharing a service-account key count together).",
    ),
    (
        "MAX_STREAMS_PER_ORGANIZATION",
        "10000",
        "Most streams one organization may hold open on one server.",
    ),
    (
        "PLATFORM_ORGANIZATION",
        "platform",
        "Reserved organization holding the platform's own configuration (rate limits, "
        "organization limits); no one can create it.",
    ),
    (
        "CONFIG_ADDRESS",
        "127.0.0.1:50052",
        "host:port of ConfigService, where every server watches the platform "
        "configuration (ConfigService watches itself).",
    ),
    (
        "PLATFORM_TOKEN_FILE",
        "(unset)",
        "File with the bearer token (role `service` or `operator`, `config:read`) a server "
        "watches the platform configuration with, re-read at each connection; unset: no "
        "rate limits (TenantService mints its own).",
    ),
)

SERVICE_PREFIXES = {"tenant": "TENANT", "config": "CONFIG", "provisioner": "PROVISIONER"}
DEFAULT_GRPC_PORTS = {"tenant": 50051, "config": 50052, "provisioner": 50053}
DEFAULT_METRICS_PORTS = {"tenant": 9451, "config": 9452, "provisioner": 9453}


class _Reader:
    """Reads and validates variables, naming the variable in every error."""

    def __init__(self, env: Mapping[str, str], prefix: str) -> None:
        self._env = env
        self._prefix = prefix

    def raw(self, name: str, *, scoped: bool = False) -> tuple[str, str | None]:
        """Returns (variable name actually used, value or None)."""
        if scoped:
            scoped_name = f"{self._prefix}_{name}"
            value = self._env.get(scoped_name)
            if value is not None and value.strip() != "":
                return scoped_name, value.strip()
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return name, None
        return name, value.strip()

    def string(self, name: str, default: str, *, scoped: bool = False) -> str:
        _, value = self.raw(name, scoped=scoped)
        return default if value is None else value

    def integer(self, name: str, default: int, *, lo: int, hi: int, scoped: bool = False) -> int:
        var, value = self.raw(name, scoped=scoped)
        if value is None:
            return default
        try:
            number = int(value, 10)
        except ValueError:
            raise SettingsError(f"{var}={value!r}: not a whole number") from None
        if not lo <= number <= hi:
            raise SettingsError(f"{var}={value!r}: out of range {lo}..{hi}")
        return number

    def seconds(self, name: str, default: float, *, hi: float) -> float:
        var, value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{var}={value!r}: not a number of seconds") from None
        if not 0 <= number <= hi:
            raise SettingsError(f"{var}={value!r}: out of range 0..{hi:g} seconds")
        return number

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper: bool) -> str:
        var, value = self.raw(name)
        if value is None:
            return default
        normalized = value.upper() if upper else value.lower()
        if normalized not in choices:
            raise SettingsError(f"{var}={value!r}: expected one of {', '.join(choices)}")
        return normalized


def validate_database_url(var: str, url: str) -> str:
    """Checks that ``url`` is a PostgreSQL URL asyncpg can use."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"{var}: malformed URL ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(
            f"{var}: scheme {parts.scheme or '(none)'!r} is not postgresql:// "
            "(expected postgresql://user:password@host:port/database)"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise SettingsError(f"{var}: no host (expected postgresql://user@host:port/database)")
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"{var}: port {port} out of range 1..65535")
    return url


def validate_redis_url(var: str, url: str) -> str:
    """Checks that ``url`` is a Redis URL redis-py can use."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"{var}: malformed URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            f"{var}: scheme {parts.scheme or '(none)'!r} is not redis://, rediss:// or unix://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(f"{var}: no host (expected redis://host:port/db)")
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"{var}: port {port} out of range 1..65535")
    return url


def load_settings(
    service: str,
    env: Mapping[str, str] | None = None,
    *,
    extra: Mapping[str, ExtraSetting] | None = None,
) -> Settings:
    """Reads the settings of ``service`` ("tenant", "config" or "provisioner").

    Args:
        service: which server the settings are for; picks the default ports and the
            prefix of service-scoped variables (``CONFIG_GRPC_PORT`` wins over
            ``GRPC_PORT``), so one environment can describe the whole suite.
        env: the environment to read; ``os.environ`` when omitted.
        extra: service-specific variables, validated like the common ones.

    Raises:
        SettingsError: a value is malformed or out of range; the message is one line
            and names the variable.
    """
    if service not in SERVICE_PREFIXES:
        raise SettingsError(f"unknown service {service!r}")
    source = os.environ if env is None else env
    read = _Reader(source, SERVICE_PREFIXES[service])

    db_var, db_url = read.raw("DATABASE_URL")
    redis_var, redis_url = read.raw("REDIS_URL")
    grpc_port = read.integer("GRPC_PORT", DEFAULT_GRPC_PORTS[service], lo=0, hi=65535, scoped=True)
    _, metrics_raw = read.raw("METRICS_PORT", scoped=True)
    metrics_port: int | None
    if metrics_raw is not None and metrics_raw.lower() in ("off", "none", "disabled"):
        metrics_port = None
    else:
        metrics_port = read.integer(
            "METRICS_PORT", DEFAULT_METRICS_PORTS[service], lo=0, hi=65535, scoped=True
        )
    pool_min = read.integer("DB_POOL_MIN", 1, lo=0, hi=1000)
    pool_max = read.integer("DB_POOL_MAX", 10, lo=1, hi=1000)
    if pool_max < pool_min:
        raise SettingsError(f"DB_POOL_MAX={pool_max} is below DB_POOL_MIN={pool_min}")
    jwks_var, jwks_file = read.raw("JWT_JWKS_FILE")
    jwks_url_var, jwks_url = read.raw("JWT_JWKS_URL")
    allow_http = read.choice("JWT_JWKS_ALLOW_HTTP", "false", ("true", "false"), upper=False)
    schemes = ("http", "https") if allow_http == "true" else ("https",)
    if jwks_url is not None and urlsplit(jwks_url).scheme not in schemes:
        raise SettingsError(
            f"{jwks_url_var}={jwks_url!r}: expected an https:// URL (plain http:// only with "
            "JWT_JWKS_ALLOW_HTTP=true, for development)"
        )
    tls = {name: _existing_file(read, name) for name in TLS_FILES}
    if (tls["TLS_CERT_FILE"] is None) != (tls["TLS_KEY_FILE"] is None):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE: set both or neither")
    if tls["TLS_CLIENT_CA_FILE"] is not None and tls["TLS_CERT_FILE"] is None:
        raise SettingsError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
    if jwks_file is not None and not Path(jwks_file).is_file():
        raise SettingsError(f"{jwks_var}={jwks_file!r}: no such file")
    platform_org_var, platform_org = read.raw("PLATFORM_ORGANIZATION")
    if platform_org is not None and check_organization(platform_org):
        raise SettingsError(f"{platform_org_var}={platform_org!r}: not an organization slug")
    token_var, token_file = read.raw("PLATFORM_TOKEN_FILE")
    if token_file is not None and not Path(token_file).is_file():
        raise SettingsError(f"{token_var}={token_file!r}: no such file")
    return Settings(
        service=service,
        database_url=validate_database_url(
            db_var, db_url or "postgresql://127.0.0.1:5432/postgres"
        ),
        redis_url=validate_redis_url(redis_var, redis_url or "redis://127.0.0.1:6379/0"),
        grpc_host=read.string("GRPC_HOST", "[::]"),
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_level=read.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        log_format=read.choice("LOG_FORMAT", "json", LOG_FORMATS, upper=False),
        event_loop=read.choice("EVENT_LOOP", "uvloop", EVENT_LOOPS, upper=False),
        gc_thresholds=_gc_thresholds(read),
        shutdown_grace_seconds=read.seconds("SHUTDOWN_GRACE_SECONDS", 10.0, hi=3600),
        shutdown_drain_seconds=read.seconds("SHUTDOWN_DRAIN_SECONDS", 0.0, hi=600),
        db_pool_min=pool_min,
        db_pool_max=pool_max,
        db_connect_timeout_seconds=read.seconds("DB_CONNECT_TIMEOUT_SECONDS", 30.0, hi=3600),
        jwks_file=Path(jwks_file) if jwks_file else None,
        jwks_url=jwks_url,
        jwks_reload_seconds=max(1.0, read.seconds("JWT_JWKS_RELOAD_SECONDS", 60.0, hi=86400)),
        jwt_issuer=read.string("JWT_ISSUER", "agentready"),
        jwt_audience=read.string("JWT_AUDIENCE", "agentready"),
        platform_organization=platform_org or "platform",
        config_address=read.string("CONFIG_ADDRESS", "127.0.0.1:50052"),
        platform_token_file=Path(token_file) if token_file else None,
        tls_cert_file=tls["TLS_CERT_FILE"],
        tls_key_file=tls["TLS_KEY_FILE"],
        tls_client_ca_file=tls["TLS_CLIENT_CA_FILE"],
        tls_ca_file=tls["TLS_CA_FILE"],
        grpc_reflection=read.choice("GRPC_REFLECTION", "on", ("on", "off"), upper=False) == "on",
        redis_prefix=_redis_prefix(read),
        redis_sentinels=_redis_sentinels(read),
        redis_sentinel_master=read.string("REDIS_SENTINEL_MASTER", "mymaster"),
        redis_sentinel_password=read.raw("REDIS_SENTINEL_PASSWORD")[1],
        grpc_max_connection_age_seconds=read.seconds(
            "GRPC_MAX_CONNECTION_AGE_SECONDS", 0.0, hi=86400 * 30
        ),
        grpc_max_connection_age_grace_seconds=read.seconds(
            "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 30.0, hi=86400
        ),
        max_streams_per_token=read.integer("MAX_STREAMS_PER_TOKEN", 1000, lo=1, hi=10**7),
        max_streams_per_organization=read.integer(
            "MAX_STREAMS_PER_ORGANIZATION", 10000, lo=1, hi=10**7
        ),
        extra={name: _read_extra(read, name, spec) for name, spec in (extra or {}).items()},
    )


def _redis_prefix(read: _Reader) -> str:
    var, value = read.raw("REDIS_KEY_PREFIX")
    if value is None:
        return "agentready"
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
        raise SettingsError(f"{var}={value!r}: 1-64 letters, digits or . _ : -")
    return value


def _redis_sentinels(read: _Reader) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[v6::addr]:port`` for IPv6) → ((host, port), ...)."""
    var, value = read.raw("REDIS_SENTINELS")
    if value is None:
        return ()
    sentinels: list[tuple[str, int]] = []
    for item in value.split(","):
        entry = item.strip()
        try:
            parts = urlsplit(f"//{entry}")
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not entry or not host or port is None or not 1 <= port <= 65535:
            raise SettingsError(f"{var}={value!r}: expected host:port[,host:port...]")
        sentinels.append((host, port))
    return tuple(sentinels)


TLS_FILES = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE", "TLS_CA_FILE")


def _existing_file(read: _Reader, name: str) -> Path | None:
    var, value = read.raw(name)
    if value is None:
        return None
    if not Path(value).is_file():
        raise SettingsError(f"{var}={value!r}: no such file")
    return Path(value)


def _read_extra(read: _Reader, name: str, spec: ExtraSetting) -> Any:
    if spec.kind == "int":
        return read.integer(name, int(spec.default), lo=int(spec.lo), hi=int(spec.hi))
    if spec.kind == "seconds":
        value = read.seconds(name, float(spec.default), hi=spec.hi)
        if value < spec.lo:
            raise SettingsError(f"{name}={value:g}: below the minimum {spec.lo:g}")
        return value
    return read.string(name, spec.default)


def _gc_thresholds(read: _Reader) -> tuple[int, int, int] | None:
    var, value = read.raw("GC_THRESHOLDS")
    if value is not None and value.lower() == "default":
        return None
    try:
        numbers = tuple(int(part, 10) for part in (value or "50000,50,100").split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or any(n < 1 for n in numbers):
        raise SettingsError(
            f"{var}={value!r}: expected three positive whole numbers, e.g. 700,10,10"
        )
    return numbers[0], numbers[1], numbers[2]
