"""Attacks on input checks and log redaction (security review findings 10 and 11)."""

from __future__ import annotations

import math

import pytest

from config_service.domain.schema import KeySchema, ServiceSchema, check_schema
from config_service.domain.values import (
    MAX_FLAG_VARIANTS,
    NOT_FINITE,
    TOO_DEEP,
    ConfigValue,
    FeatureFlag,
    FlagVariant,
    ValueType,
    check_name,
    check_value,
)
from config_service.service_layer.clients import Selector
from servicekit.db import quote_identifier, redact_url
from servicekit.errors import InvalidArgument
from servicekit.pagination import Shape, decode_token, encode_token
from servicekit.requests import check_kubernetes_labels, check_organization
from tenant_service.domain.checks import key_ttl


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


def _forged(position: object, binding: object) -> str:
    """A page token as a client can forge one: tokens are not signed."""
    return encode_token(position, request=binding)


@pytest.mark.parametrize(
    ("position", "shape"),
    [
        ("a\x00b", str),
        ("a" * 5000, str),
        (1, str),
        (2**70, int),
        (True, int),
        ("1", int),
        ([1, 2, 3], (int, int)),
        ({"x": 1}, (str, str)),
        (["2024-01-01T00:00:00+00:00", "\x00"], (str, str)),
    ],
)
def test_a_forged_page_position_is_invalid_argument(position: object, shape: Shape) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_token(_forged(position, ["acme", 1]), request=["acme", 1], shape=shape)
    assert [v.field for v in refused.value.violations] == ["page_token"]


def test_a_page_position_of_the_right_shape_comes_back() -> None:
    token = _forged(["svc", "key"], [1])
    assert decode_token(token, request=[1], shape=(str, str)) == ("svc", "key")
    assert decode_token(_forged(7, [1]), request=[1], shape=int) == 7
    assert decode_token("", request=[1], shape=str) is None


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**63 - 1, 0), (-(2**63), 0), (3600, 2**31 - 1), (59, 999_999_999)]
)
def test_a_key_lifetime_out_of_range_is_a_violation(seconds: int, nanos: int) -> None:
    _, violations = key_ttl(seconds, nanos)
    assert [v.field for v in violations] == ["ttl"]


@pytest.mark.parametrize(
    ("key", "field"),
    [
        (KeySchema("k", ValueType.STRING, minimum=math.nan), "minimum"),
        (KeySchema("k", ValueType.STRING, maximum=math.inf), "maximum"),
        (KeySchema("k", ValueType.STRING, description="a\x00"), "description"),
        (KeySchema("k", ValueType.STRING, pattern="a\x00"), "pattern"),
        (KeySchema("k", ValueType.STRING, allowed_values=("x", "\x00")), "allowed_values"),
        (KeySchema("k", ValueType.JSON, ConfigValue(ValueType.JSON, TOO_DEEP)), "default_value"),
        (KeySchema("k", ValueType.JSON, ConfigValue(ValueType.JSON, NOT_FINITE)), "default_value"),
    ],
)
def test_a_schema_jsonb_cannot_store_is_refused(key: KeySchema, field: str) -> None:
    fields = [v.field for v in check_schema(ServiceSchema((key,)))]
    assert fields
    assert all(f.startswith(f"schema.keys[0].{field}") for f in fields), fields


@pytest.mark.parametrize("selector", ["app=x\x00", "app\x00=x", "app!=" + "x" * 64, "\x00"])
def test_a_label_selector_no_label_can_match_is_refused(selector: str) -> None:
    with pytest.raises(InvalidArgument):
        Selector.parse(selector)


def test_a_json_value_too_large_on_the_wire_is_refused_unconverted() -> None:
    from agentready.config.v1 import config_pb2
    from google.protobuf import struct_pb2

    from config_service.domain.values import MAX_VALUE_BYTES, TOO_LARGE, check_value
    from config_service.entrypoints.convert import value_from_proto

    items = struct_pb2.ListValue()
    items.values.extend(struct_pb2.Value(number_value=1) for _ in range(40_000))
    message = config_pb2.Value(json_value=struct_pb2.Value(list_value=items))
    value = value_from_proto(message)
    assert value is not None
    assert value.data is TOO_LARGE
    violations = check_value(value)
    assert [(v.field, v.description) for v in violations] == [
        ("value.json_value", f"larger than {MAX_VALUE_BYTES} bytes")
    ]
    # Just under the limit in JSON ("1.0," an item) is still converted and accepted.
    fits = struct_pb2.ListValue()
    fits.values.extend(struct_pb2.Value(number_value=1) for _ in range(MAX_VALUE_BYTES // 4 - 100))
    value = value_from_proto(config_pb2.Value(json_value=struct_pb2.Value(list_value=fits)))
    assert value is not None
    assert check_value(value) == []


def test_the_value_limit_counts_text_in_utf8_bytes_not_json_escapes() -> None:
    from config_service.domain.values import MAX_VALUE_BYTES

    # 60,000 bytes of UTF-8 (30,000 two-byte characters): under 64 KiB, accepted; as
    # \u00e9 escapes it would have counted 180,000 bytes and been refused.
    accented = ConfigValue(ValueType.STRING, "é" * 30_000)
    assert accented.encoded_size() < MAX_VALUE_BYTES
    assert check_value(accented) == []
    too_long = ConfigValue(ValueType.STRING, "é" * 33_000)
    assert [v.description for v in check_value(too_long)] == [
        f"larger than {MAX_VALUE_BYTES} bytes"
    ]


def test_a_negative_zero_is_taken_as_the_zero_postgresql_stores() -> None:
    # jsonb has no -0: kept as written, the write's answer and the streams of its
    # replica (handed the value from memory) showed -0.0, every other read 0.0.
    from agentready.config.v1 import config_pb2
    from google.protobuf import json_format, struct_pb2

    from config_service.entrypoints.convert import value_from_proto

    def sign(number: float) -> float:
        return math.copysign(1.0, number)

    double = value_from_proto(config_pb2.Value(double_value=-0.0))
    assert double is not None
    assert sign(double.data) == 1.0
    nested = json_format.ParseDict({"a": [-0.0, {"b": -0.0}], "c": -1.5}, struct_pb2.Value())
    json = value_from_proto(config_pb2.Value(json_value=nested))
    assert json is not None
    assert [sign(json.data["a"][0]), sign(json.data["a"][1]["b"])] == [1.0, 1.0]
    assert json.data["c"] == -1.5
    scalar = value_from_proto(config_pb2.Value(json_value=struct_pb2.Value(number_value=-0.0)))
    assert scalar is not None
    assert sign(scalar.data) == 1.0
    flag = value_from_proto(
        config_pb2.Value(flag_value=config_pb2.FeatureFlag(enabled=True, rollout_percent=-0.0))
    )
    assert flag is not None
    assert sign(flag.data.rollout_percent) == 1.0
