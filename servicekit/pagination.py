"""AIP-158 pagination: page sizes and opaque page tokens bound to their request.

A token carries the position to continue from and a fingerprint of the request's
other fields; a token reused with different fields is ``INVALID_ARGUMENT``, as is a
token that was tampered with or is not ours. Tokens are not signed: a client can forge
one with any position, so a decoded position is checked against the shape its RPC
issues before it goes near a query.
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


# What a position holds: text, an integer, or a list of those (``(str, str)`` = a list
# of two texts).
Shape = type[str] | type[int] | tuple[type[str] | type[int], ...]
# Positions are names, emails, ids and times: far shorter than this.
MAX_POSITION_CHARS = 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NOT_OURS = "not a page token of this API"


def _fits(value: Any, kind: type[str] | type[int]) -> bool:
    if kind is int:
        # bool is an int to Python, not to a query; int64 is what the columns hold.
        return type(value) is int and _INT64_MIN <= value <= _INT64_MAX
    # PostgreSQL text cannot hold NUL (U+0000).
    return isinstance(value, str) and len(value) <= MAX_POSITION_CHARS and "\x00" not in value


def decode_token(token: str, *, request: Any, shape: Shape) -> Any:
    """The position in ``token``; None for an empty token (the first page).

    ``shape`` is what the RPC's positions are: ``str`` (text without NUL), ``int`` (an
    int64), or a tuple of those for a list of that many values, returned as a tuple.

    Raises:
        InvalidArgument: the token is malformed, holds a position of another shape, or
            belongs to a request with other fields.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, binding = payload["p"], payload["b"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", _NOT_OURS) from None
    if binding != _binding(request):
        raise InvalidArgument.field(
            "page_token", "belongs to a request with different fields; start again without it"
        )
    if isinstance(shape, tuple):
        if not (
            isinstance(position, list)
            and len(position) == len(shape)
            and all(_fits(v, k) for v, k in zip(position, shape, strict=True))
        ):
            raise InvalidArgument.field("page_token", _NOT_OURS)
        return tuple(position)
    if not _fits(position, shape):
        raise InvalidArgument.field("page_token", _NOT_OURS)
    return position
