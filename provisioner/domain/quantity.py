"""Kubernetes quantities ("500m", "20Gi", "1e3"), checked the way the API server does."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# <signedNumber><suffix>, as in k8s.io/apimachinery/pkg/api/resource: a decimal number
# then a binary-SI suffix, a decimal-SI suffix or a decimal exponent. Quota values are
# never negative, so no sign is accepted.
_QUANTITY = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# The API server keeps quantities as int64 milli-units at most; anything larger is
# refused there, so it is refused here first.
_MAX = Decimal(2**63 - 1) / 1000
MAX_LENGTH = 64


class QuantityError(ValueError):
    """Not a valid Kubernetes quantity; the message says what is wrong."""


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity, e.g. ``"500m"`` → 0.5, ``"1Gi"`` → 1073741824.

    Raises:
        QuantityError: malformed, negative or too large.
    """
    if len(text) > MAX_LENGTH:
        raise QuantityError(f"longer than {MAX_LENGTH} characters")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(
            f"{text!r} is not a Kubernetes quantity (e.g. '10', '500m', '20Gi', '1e3')"
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise QuantityError(f"{text!r}: bad number") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if abs(exponent) > 30:
            raise QuantityError(f"{text!r}: exponent out of range")
        value = number.scaleb(exponent)
    if value > _MAX:
        raise QuantityError(f"{text!r} is too large")
    return value
