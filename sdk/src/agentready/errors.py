"""Errors the SDK raises: one tree, mapped from ``google.rpc.Status``.

Every failed call raises an :class:`AgentReadyError` subclass chosen by the status
code, carrying what the server said: the message, the ``ErrorInfo`` reason and
metadata, ``BadRequest`` field violations and ``RetryInfo``'s delay.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


class AgentReadyError(Exception):
    """A call failed.

    Attributes:
        code: the gRPC status code.
        message: the server's message.
        reason: the ``ErrorInfo`` reason (e.g. ``ETAG_MISMATCH``), or "".
        metadata: the ``ErrorInfo`` metadata.
        field_violations: field path → description, from ``BadRequest``.
        retry_after: seconds to wait before retrying, from ``RetryInfo``, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        # Raised by the SDK itself (no server involved): the code of the class.
        self.code = code if code is not None else _CODE_OF.get(type(self), grpc.StatusCode.UNKNOWN)
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


class InvalidArgument(AgentReadyError):
    """The request was malformed; ``field_violations`` says where. Nothing was written."""


class NotFound(AgentReadyError):
    """The resource does not exist."""


class AlreadyExists(AgentReadyError):
    """A resource with that name exists already."""


class Conflict(AgentReadyError):
    """An etag or expected revision did not match (``ABORTED``): read again, retry."""


class FailedPrecondition(AgentReadyError):
    """The system is not in a state the call needs."""


class Unauthenticated(AgentReadyError):
    """No valid token: missing, malformed, expired or revoked."""


class PermissionDenied(AgentReadyError):
    """The token may not do this (another organization, or a missing scope)."""


class ResourceExhausted(AgentReadyError):
    """Over a rate limit; wait ``retry_after`` seconds."""


class Unavailable(AgentReadyError):
    """The service could not be reached or is shutting down; safe to retry."""


class DeadlineExceeded(AgentReadyError):
    """The call did not finish within its deadline."""


class Internal(AgentReadyError):
    """A server-side failure."""


_BY_CODE: dict[grpc.StatusCode, type[AgentReadyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}

# The code an error raised by the SDK itself carries (the first code mapped to it).
_CODE_OF: dict[type[AgentReadyError], grpc.StatusCode] = {}
for _code, _kind in _BY_CODE.items():
    _CODE_OF.setdefault(_kind, _code)


def from_rpc_error(error: grpc.RpcError) -> AgentReadyError:
    """The typed error for a failed call, with the details of its rich status."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason, metadata, violations, retry_after = "", {}, {}, None
    for key, value in call.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if packed.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif packed.Unpack(bad):
                violations = {v.field: v.description for v in bad.field_violations}
            elif packed.Unpack(retry):
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    kind = _BY_CODE.get(code, AgentReadyError)
    return kind(
        message,
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )
