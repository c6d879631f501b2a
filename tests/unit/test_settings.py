"""Settings: defaults, service-scoped overrides, and one-line errors for bad values."""

from __future__ import annotations

import pytest

from servicekit.errors import SettingsError
from servicekit.settings import load_settings


def test_defaults_give_each_service_its_own_port() -> None:
    ports = {
        name: load_settings(name, {}).grpc_port for name in ("tenant", "config", "provisioner")
    }
    assert ports == {"tenant": 50051, "config": 50052, "provisioner": 50053}


def test_service_scoped_variable_wins_over_the_shared_one() -> None:
    env = {"GRPC_PORT": "7000", "CONFIG_GRPC_PORT": "7002"}
    assert load_settings("config", env).grpc_port == 7002
    assert load_settings("tenant", env).grpc_port == 7000


def test_metrics_can_be_turned_off() -> None:
    assert load_settings("config", {"METRICS_PORT": "off"}).metrics_port is None
    assert load_settings("config", {"CONFIG_METRICS_PORT": "0"}).metrics_port == 0


def test_gc_thresholds_default_and_opt_out() -> None:
    assert load_settings("config", {}).gc_thresholds == (50000, 50, 100)
    assert load_settings("config", {"GC_THRESHOLDS": "default"}).gc_thresholds is None
    assert load_settings("config", {"GC_THRESHOLDS": "700,10,10"}).gc_thresholds == (700, 10, 10)


def test_unix_socket_database_url_is_accepted() -> None:
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert load_settings("config", {"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_URL": "mysql://db:3306/x"},
            "DATABASE_URL: scheme 'mysql' is not postgresql://",
        ),
        ({"DATABASE_URL": "postgresql://host:99999/db"}, "DATABASE_URL: malformed URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL: scheme '(none)'"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL: scheme 'http'"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT='70000': out of range 0..65535"),
        ({"CONFIG_GRPC_PORT": "-1"}, "CONFIG_GRPC_PORT='-1': out of range"),
        ({"GRPC_PORT": "fifty"}, "GRPC_PORT='fifty': not a whole number"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD': expected one of DEBUG"),
        ({"SHUTDOWN_GRACE_SECONDS": "soon"}, "SHUTDOWN_GRACE_SECONDS='soon': not a number"),
        ({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"}, "DB_POOL_MAX=2 is below DB_POOL_MIN=5"),
        (
            {"JWT_JWKS_FILE": "/nonexistent/jwks.json"},
            "JWT_JWKS_FILE='/nonexistent/jwks.json': no such file",
        ),
        ({"JWT_JWKS_URL": "ftp://keys"}, "JWT_JWKS_URL='ftp://keys': expected an http"),
        ({"GC_THRESHOLDS": "1,2"}, "GC_THRESHOLDS='1,2': expected three positive whole numbers"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings("config", env)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
