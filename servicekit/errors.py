"""Domain errors: what went wrong, in terms a caller can act on.

These carry no gRPC types, so domain and service-layer code can raise them freely;
:mod:`servicekit.rpc` maps each to a ``google.rpc.Status`` with ``ErrorInfo`` (and
``BadRequest`` field violations, ``ResourceInfo`` or ``RetryInfo`` where they apply).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


class SettingsError(Exception):
    """A setting is malformed or out of range; the message is one line."""


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request.

    Attributes:
        field: the field path, e.g. ``"value.int_value"`` or ``"organization"``.
        description: what is wrong and what would be right.
    """

    field: str
    description: str


class AgentReadyError(Exception):
    """The root of every domain error.

    Attributes:
        reason: an UPPER_SNAKE_CASE machine-readable reason (``ErrorInfo.reason``).
        metadata: extra machine-readable facts (``ErrorInfo.metadata``).
    """

    code_name = "UNKNOWN"
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class _ViolationsError(AgentReadyError):
    """An error that names what is wrong, field by field (or key by key)."""

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)


class InvalidArgument(_ViolationsError):
    """The request is malformed; nothing was written."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """One bad field: the message names it too."""
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])


class _ResourceError(AgentReadyError):
    """An error about one named resource (``ResourceInfo`` in the status)."""

    summary = ""

    def __init__(
        self,
        resource_type: str,
        name: str,
        message: str | None = None,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message or f"{resource_type} {name!r} {self.summary}", reason=reason, metadata=metadata
        )
        self.resource_type = resource_type
        self.resource_name = name


class NotFound(_ResourceError):
    """The addressed resource does not exist (or the caller may not know it does)."""

    code_name = "NOT_FOUND"
    default_reason = "NOT_FOUND"
    summary = "not found"


class AlreadyExists(_ResourceError):
    """A resource with that name already exists."""

    code_name = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"
    summary = "already exists"


class Aborted(AgentReadyError):
    """A concurrency check failed (etag or expected revision); re-read and retry."""

    code_name = "ABORTED"
    default_reason = "ETAG_MISMATCH"


class FailedPrecondition(_ViolationsError):
    """The system is not in a state the operation needs.

    ``violations`` name what stands in the way (``PreconditionFailure`` details, with
    the error's reason as their type).
    """

    code_name = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(AgentReadyError):
    """No valid credentials: missing, malformed, expired or revoked token."""

    code_name = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(AgentReadyError):
    """Valid credentials that do not allow this call (wrong organization, scope or role)."""

    code_name = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class _RetryLaterError(AgentReadyError):
    """An error that tells when to try again (``RetryInfo`` in the status)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = 1.0,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``retry_after_seconds`` None: no ``RetryInfo``, since waiting will not help
        (a limit of what is stored, as opposed to a rate)."""
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class ResourceExhausted(_RetryLaterError):
    """Over a rate limit or quota; retry after ``retry_after_seconds``."""

    code_name = "RESOURCE_EXHAUSTED"
    default_reason = "RATE_LIMITED"


class Unavailable(_RetryLaterError):
    """A dependency is down; the call may be retried after ``retry_after_seconds``."""

    code_name = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class Internal(AgentReadyError):
    """A bug or an unexpected failure; the message never carries internal details."""

    code_name = "INTERNAL"
    default_reason = "INTERNAL"


class Unimplemented(AgentReadyError):
    """The RPC exists in the contract but is not built yet."""

    code_name = "UNIMPLEMENTED"
    default_reason = "NOT_IMPLEMENTED"
