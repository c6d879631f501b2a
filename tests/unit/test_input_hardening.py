"""Attacks on input checks and log redaction (security review findings 10 and 11)."""

from __future__ import annotations

import pytest

from config_service.domain.values import (
    MAX_FLAG_VARIANTS,
    ConfigValue,
    FeatureFlag,
    FlagVariant,
    ValueType,
    check_name,
    check_value,
)
from servicekit.db import quote_identifier, redact_url
from servicekit.requests import check_kubernetes_labels, check_organization


@pytest.mark.parametrize("slug", ["acme\n", "acme\r\n", "\nacme", "ac me", "acme "])
def test_a_trailing_newline_is_no_valid_slug(slug: str) -> None:
    assert check_organization(slug)


@pytest.mark.parametrize("name", ["svc\n", "svc\r", "sv c"])
def test_a_trailing_newline_is_no_valid_config_name(name: str) -> None:
    assert check_name(name, "service")


def test_a_trailing_newline_is_no_valid_label() -> None:
    assert check_kubernetes_labels({"team": "x\n"}, max_labels=8)
    assert check_kubernetes_labels({"team\n": "x"}, max_labels=8)
    assert check_kubernetes_labels({"example.com\n/team": "x"}, max_labels=8)
    assert not check_kubernetes_labels({"example.com/team": "x"}, max_labels=8)


def test_identifiers_are_whole_identifiers() -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        quote_identifier("config\n")
    assert quote_identifier("config") == '"config"'


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://app:s3cret@db:5432/x", "s3cret"),
        ("postgresql://app:pass@word@db:5432/x", "pass@word"),
        ("postgresql://app:alpha:beta:gamma@db/x", "alpha:beta:gamma"),
        ("postgresql://db:5432/x?user=app&password=hunter2", "hunter2"),
        ("postgresql://db/x?PASSWORD=hunter2&sslmode=require", "hunter2"),
        ("redis://:tok3n@cache:6379/0", "tok3n"),
    ],
)
def test_redacted_urls_keep_no_part_of_a_secret(url: str, secret: str) -> None:
    redacted = redact_url(url)
    assert "***" in redacted
    for piece in {secret, *secret.split("@"), *secret.split(":")}:
        assert piece not in redacted.replace("***", ""), (url, redacted)


def test_redaction_keeps_what_helps_debugging() -> None:
    assert redact_url("postgresql://app:x@db:5432/main?sslmode=require") == (
        "postgresql://app:***@db:5432/main?sslmode=require"
    )
    assert redact_url("postgresql://db/main") == "postgresql://db/main"


def test_a_trailing_newline_is_no_quantity() -> None:
    from provisioner.domain.quantity import QuantityError, parse_quantity

    assert parse_quantity("10Gi") == parse_quantity("10240Mi")
    with pytest.raises(QuantityError):
        parse_quantity("10Gi\n")


def test_flag_structures_are_bounded_and_named() -> None:
    def flag(variants: int, subjects: int = 0) -> ConfigValue:
        return ConfigValue(
            ValueType.FEATURE_FLAG,
            FeatureFlag(
                enabled=True,
                allow_list=tuple(f"s{i}" for i in range(subjects)),
                variants=tuple(FlagVariant(f"v{i}", 1, i) for i in range(variants)),
            ),
        )

    assert check_value(flag(MAX_FLAG_VARIANTS)) == []
    too_many = check_value(flag(MAX_FLAG_VARIANTS + 1))
    assert [v.field for v in too_many] == ["value.flag_value.variants"]
    assert [v.field for v in check_value(flag(1, subjects=1001))] == ["value.flag_value.allow_list"]
