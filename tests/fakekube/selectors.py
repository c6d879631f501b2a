"""Label and field selectors of list and deletecollection requests."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import KubeApiError, bad_request

Predicate = Callable[[dict[str, Any]], bool]

# One requirement of a label selector. Commas inside "in (a,b)" are why the selector
# is tokenised with a regex rather than split on ",".
_REQUIREMENT = re.compile(
    r"\s*(?:"
    r"(?P<not_exists>!\s*(?P<ne_key>[^\s,!=()]+))"
    r"|(?P<set>(?P<set_key>[^\s,!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\))"
    r"|(?P<cmp>(?P<cmp_key>[^\s,!=()]+)\s*(?P<cmp_op>==|=|!=)\s*(?P<cmp_value>[^\s,!=()]*))"
    r"|(?P<exists>(?P<ex_key>[^\s,!=()]+))"
    r")\s*(?:,|$)"
)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _absent(key: str) -> Predicate:
    return lambda obj: key not in _labels(obj)


def _present(key: str) -> Predicate:
    return lambda obj: key in _labels(obj)


def _in_set(key: str, values: set[str], wanted: bool) -> Predicate:
    return lambda obj: (_labels(obj).get(key) in values) == wanted


def _equals(key: str, value: str, wanted: bool) -> Predicate:
    # "a!=b" also matches objects without the label, as on the real server.
    return lambda obj: (_labels(obj).get(key) == value) == wanted


def parse_label_selector(text: str) -> Predicate:
    """Compile ``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` into a predicate.

    Raises:
        KubeApiError: 400 BadRequest for a selector the real server would reject too.
    """
    checks: list[Predicate] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _REQUIREMENT.match(text, pos)
        if not match or match.end() == pos:
            raise bad_request(f"unable to parse requirement: invalid label selector {text!r}")
        pos = match.end()
        if match["not_exists"]:
            checks.append(_absent(match["ne_key"]))
        elif match["set"]:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            checks.append(_in_set(match["set_key"], values, match["op"] == "in"))
        elif match["cmp"]:
            checks.append(_equals(match["cmp_key"], match["cmp_value"], match["cmp_op"] != "!="))
        else:
            checks.append(_present(match["ex_key"]))
    return lambda obj: all(check(obj) for check in checks)


_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "metadata.name": lambda o: o.get("metadata", {}).get("name", ""),
    "metadata.namespace": lambda o: o.get("metadata", {}).get("namespace", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
}


def _field_equals(getter: Callable[[dict[str, Any]], Any], value: str, wanted: bool) -> Predicate:
    return lambda obj: (getter(obj) == value) == wanted


def parse_field_selector(text: str) -> Predicate:
    """Compile ``metadata.name=x,metadata.namespace!=y`` (the fields every kind supports).

    Raises:
        KubeApiError: 400 BadRequest for an unsupported field or syntax.
    """
    checks: list[Predicate] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(.*)", part)
        if not match:
            raise bad_request(f"invalid selector: {text!r}")
        field, op, value = match.groups()
        getter = _FIELDS.get(field)
        if getter is None:
            raise KubeApiError(400, "BadRequest", f"field label not supported: {field}")
        checks.append(_field_equals(getter, value, op != "!="))
    return lambda obj: all(check(obj) for check in checks)
