"""AIP-158 pagination: page sizes and opaque page tokens bound to their request.

A token carries the position to continue from and a fingerprint of the request's
other fields; a token reused with different fields is ``INVALID_ARGUMENT``, as is a
token that was tampered with or is not ours.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from servicekit.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE) -> int:
    """0 = the default; above the maximum = the maximum; negative = INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, MAX_PAGE_SIZE)


def _binding(fields: Any) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_token(position: Any, *, request: Any) -> str:
    """A token to continue after ``position`` for a request with the fields ``request``."""
    payload = json.dumps({"p": position, "b": _binding(request)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


# Encoded bytes a page may carry: well under the 4 MiB a default client accepts.
MAX_PAGE_BYTES = 2 * 1024 * 1024


def next_page(
    items: Sequence[T],
    limit: int,
    position: Callable[[T], Any],
    *,
    request: Any,
    size: Callable[[T], int] | None = None,
) -> tuple[Sequence[T], str]:
    """Cuts a page from ``items``, read as ``limit + 1`` rows so that the extra one
    tells whether more follow: (the page, the next page's token or "").

    With ``size`` (an item's encoded bytes), a page also ends before it would pass
    :data:`MAX_PAGE_BYTES` (it always holds at least one item), so a default client
    can receive it whatever the page size asked for.
    """
    if size is not None:
        total = 0
        for index, item in enumerate(items[:limit]):
            total += size(item)
            if total > MAX_PAGE_BYTES and index > 0:
                page = items[:index]
                return page, encode_token(position(page[-1]), request=request)
    if len(items) <= limit:
        return items, ""
    page = items[:limit]
    return page, encode_token(position(page[-1]), request=request)


def decode_token(token: str, *, request: Any) -> Any:
    """The position in ``token``; None for an empty token (the first page).

    Raises:
        InvalidArgument: the token is malformed or belongs to a request with other fields.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, binding = payload["p"], payload["b"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "not a page token of this API") from None
    if binding != _binding(request):
        raise InvalidArgument.field(
            "page_token", "belongs to a request with different fields; start again without it"
        )
    return position
