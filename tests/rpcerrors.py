"""Reading ``google.rpc.Status`` details out of a failed call, as clients do."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf import message
from google.rpc import error_details_pb2, status_pb2

T = TypeVar("T", bound=message.Message)


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status in the call's trailers (``grpc-status-details-bin``)."""
    trailers: Any = error.trailing_metadata()
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no google.rpc.Status in the trailers of {error!r}")


def detail(error: grpc.RpcError, kind: type[T]) -> T:
    """The first detail of ``kind`` (e.g. ``ErrorInfo``) in the call's status."""
    for packed in status_of(error).details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in the status of {error!r}")


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ``ErrorInfo`` of a failed call."""
    return detail(error, error_details_pb2.ErrorInfo)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The ``BadRequest`` field violations of a failed call, field → description."""
    bad = detail(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations}
