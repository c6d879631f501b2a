"""Domain errors map to google.rpc.Status with the details AIP-193 asks for."""

from __future__ import annotations

from typing import Any, TypeVar

from google.rpc import code_pb2, error_details_pb2

from servicekit import errors
from servicekit.rpc import ERROR_DOMAIN, status_from_error

T = TypeVar("T")


def unpack(status: Any, kind: type[T]) -> list[T]:
    found = []
    for detail in status.details:
        message: Any = kind()
        if detail.Is(message.DESCRIPTOR):
            detail.Unpack(message)
            found.append(message)
    return found


def test_invalid_argument_carries_field_violations() -> None:
    status = status_from_error(
        errors.InvalidArgument(
            "bad request",
            violations=[errors.FieldViolation("key", "must be lowercase")],
        )
    )
    assert status.code == code_pb2.INVALID_ARGUMENT
    (info,) = unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.domain == ERROR_DOMAIN
    (bad,) = unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("key", "must be lowercase")
    ]


def test_not_found_names_the_resource() -> None:
    status = status_from_error(errors.NotFound("config", "acme/ai/threshold"))
    assert status.code == code_pb2.NOT_FOUND
    assert status.message == "config 'acme/ai/threshold' not found"
    (resource,) = unpack(status, error_details_pb2.ResourceInfo)
    assert resource.resource_name == "acme/ai/threshold"


def test_rate_limit_carries_retry_info() -> None:
    status = status_from_error(errors.ResourceExhausted("slow down", retry_after_seconds=1.5))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    (retry,) = unpack(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


def test_etag_mismatch_is_aborted_with_metadata() -> None:
    status = status_from_error(errors.Aborted("stale etag", metadata={"current_etag": "e2"}))
    assert status.code == code_pb2.ABORTED
    (info,) = unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "ETAG_MISMATCH"
    assert dict(info.metadata) == {"current_etag": "e2"}


def test_huge_errors_stay_small_enough_for_any_client() -> None:
    """Hundreds of violations or a long message must not exceed what clients accept in
    trailers (16 KiB by default): the status is bounded and says what was left out."""
    from google.rpc import error_details_pb2

    from servicekit.errors import FieldViolation, InvalidArgument
    from servicekit.rpc import status_from_error

    violations = [FieldViolation(f"schema.keys[{i}].pattern", "x" * 500) for i in range(1000)]
    error = InvalidArgument("; ".join(v.description for v in violations), violations=violations)
    status = status_from_error(error)
    assert len(status.SerializeToString()) < 8 * 1024
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations[0].field == "schema.keys[0].pattern"
    assert "975 more" in bad.field_violations[-1].description


def test_a_status_stays_small_whatever_the_input_holds() -> None:
    # Violations naming a caller's own (long, four-byte) label keys: the trailer a
    # default client must read stays within MAX_STATUS_BYTES, and says what it left out.
    from google.rpc import error_details_pb2

    from servicekit.rpc import MAX_STATUS_BYTES

    wide = "\U0001f600" * 300
    error = errors.InvalidArgument(
        wide,
        violations=[errors.FieldViolation(f"labels[{wide}{i}]", wide) for i in range(40)],
        metadata={"organization": wide},
    )
    status = status_from_error(error)
    assert status.ByteSize() <= MAX_STATUS_BYTES
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations[-1].description.endswith("more problems of the same request")
    assert len(bad.field_violations) >= 2
