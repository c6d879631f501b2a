"""Kubernetes ``Status`` errors, shaped like the ones a real API server sends.

The official client parses these bodies into ``ApiException.body``; callers branch on
``reason`` and ``code``, so both (and the message wording) follow the real server.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType

# Field-error reasons used by the real server in ``details.causes[].reason``.
FIELD_REQUIRED = "FieldValueRequired"
FIELD_INVALID = "FieldValueInvalid"
FIELD_NOT_SUPPORTED = "FieldValueNotSupported"
FIELD_TYPE_INVALID = "FieldValueTypeInvalid"
FIELD_TOO_LONG = "FieldValueTooLong"
FIELD_FORBIDDEN = "FieldValueForbidden"

_REASON_BY_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def reason_for_code(code: int) -> str:
    """The ``Status.reason`` the real server uses for an HTTP status code."""
    return _REASON_BY_CODE.get(code, "Unknown")


class KubeApiError(Exception):
    """An API error that the HTTP layer turns into a ``Status`` body.

    Attributes:
        code: HTTP status code.
        reason: ``Status.reason`` (``NotFound``, ``Conflict`` ...).
        message: human-readable message, worded like the real server's.
        details: ``Status.details`` (name, group, kind, causes, retryAfterSeconds).
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``meta/v1 Status`` body for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def cause(reason: str, message: str, field: str) -> dict[str, str]:
    """One ``details.causes`` entry."""
    return {"reason": reason, "message": message, "field": field}


def _details(rt: ResourceType, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    details.update(extra)
    return details


def not_found(rt: ResourceType, name: str) -> KubeApiError:
    """404 for a missing object: ``resourcequotas "q" not found``."""
    return KubeApiError(
        404, "NotFound", f'{rt.qualified} "{name}" not found', details=_details(rt, name)
    )


def already_exists(rt: ResourceType, name: str) -> KubeApiError:
    """409 AlreadyExists on create."""
    return KubeApiError(
        409,
        "AlreadyExists",
        f'{rt.qualified} "{name}" already exists',
        details=_details(rt, name),
    )


def conflict(rt: ResourceType, name: str, why: str) -> KubeApiError:
    """409 Conflict: ``Operation cannot be fulfilled on ...``."""
    return KubeApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        details=_details(rt, name),
    )


def stale_resource_version(rt: ResourceType, name: str) -> KubeApiError:
    """409 Conflict for an optimistic-concurrency failure."""
    return conflict(
        rt,
        name,
        "the object has been modified; please apply your changes to the latest version "
        "and try again",
    )


def invalid(rt: ResourceType, name: str, causes: list[dict[str, str]]) -> KubeApiError:
    """422 Invalid; ``details.kind`` is the Kind (not the plural), as on the real server."""
    parts = [f"{c['field']}: {c['message']}" for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.kind
    details["causes"] = causes
    group_kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return KubeApiError(
        422, "Invalid", f'{group_kind} "{name}" is invalid: {summary}', details=details
    )


def bad_request(message: str) -> KubeApiError:
    """400 BadRequest."""
    return KubeApiError(400, "BadRequest", message)


def forbidden_terminating(rt: ResourceType, name: str, namespace: str) -> KubeApiError:
    """403 from the NamespaceLifecycle admission plugin."""
    return KubeApiError(
        403,
        "Forbidden",
        f'{rt.qualified} "{name}" is forbidden: unable to create new content in namespace '
        f"{namespace} because it is being terminated",
        details=_details(
            rt,
            name,
            causes=[
                cause(
                    "NamespaceTerminating",
                    f"namespace {namespace} is being terminated",
                    "metadata.namespace",
                )
            ],
        ),
    )


def route_not_found() -> KubeApiError:
    """404 for a path the server does not serve."""
    return KubeApiError(404, "NotFound", "the server could not find the requested resource")


def method_not_allowed() -> KubeApiError:
    """405 for a verb a path does not support."""
    return KubeApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )
