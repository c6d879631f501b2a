"""Validation of every object the fake stores.

Two layers, like the real server:

* the official OpenAPI schemas shipped by ``kubernetes-validate`` (strict variant, so an
  unknown field is an error), for :data:`KUBERNETES_VERSION`;
* the hand-written checks the real server adds on top of the schema and that matter
  for the objects a tenant gets: DNS-1123 names, label syntax, quantity syntax,
  RBAC references, immutable ``roleRef``.

``kubernetes_validate.validate()`` re-reads a 1.5 MB definitions file on every call
(~10 ms); a fake that spends that long on each write, under load, would distort
latency benchmarks. So the schema files of that package are loaded once and the
compiled validators are cached, with the same file layout and the same jsonschema
draft as the package's own ``validate()``.
"""

from __future__ import annotations

import collections
import functools
import importlib.resources
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import referencing

from .errors import (
    FIELD_INVALID,
    FIELD_NOT_SUPPORTED,
    FIELD_REQUIRED,
    FIELD_TOO_LONG,
    FIELD_TYPE_INVALID,
    KubeApiError,
    cause,
    invalid,
)
from .resources import KUBERNETES_VERSION, ResourceType

_SCHEMA_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
_QUANTITY_REF = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# The real server's quantity grammar: a signed decimal number, then either a binary
# suffix (Ki..Ei), a decimal suffix (n u m k M G T P E) or a decimal exponent.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_compile_lock = threading.Lock()


@functools.cache
def _schema_file(name: str) -> dict[str, Any]:
    ref = importlib.resources.files("kubernetes_validate").joinpath(f"{_SCHEMA_DIR}/{name}")
    loaded: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return loaded


def _definitions() -> dict[str, Any]:
    defs: dict[str, Any] = _schema_file("_definitions.json")["$defs"]
    return defs


def _schema_name(rt: ResourceType) -> str:
    # Same naming rule as kubernetes_validate.validate(): the group's first label,
    # e.g. rbac.authorization.k8s.io/v1 -> rbac-v1.
    group = rt.group.split(".", 1)[0]
    suffix = f"{group}-{rt.version}" if group else rt.version
    return f"{rt.kind.lower()}-{suffix}.json"


@functools.cache
def _validator(rt: ResourceType) -> jsonschema.protocols.Validator:
    with _compile_lock:
        schema = _schema_file(_schema_name(rt))
        registry: referencing.Registry[Any] = referencing.Registry().with_resources(
            [
                (schema["$id"], referencing.Resource.from_contents(schema)),
                (
                    _schema_file("_definitions.json")["$id"],
                    referencing.Resource.from_contents(_schema_file("_definitions.json")),
                ),
            ]
        )
        validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(
            schema, registry=registry
        )
        return validator


def warm_up() -> None:
    """Load and compile every schema now, so the first request is not slow."""
    from .resources import RESOURCE_TYPES

    for rt in RESOURCE_TYPES:
        _validator(rt).is_valid({"apiVersion": rt.api_version, "kind": rt.kind})


def field_path(parts: Iterator[Any] | list[Any] | tuple[Any, ...]) -> str:
    """``spec.limits[0].max`` from ``["spec", "limits", 0, "max"]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _schema_causes(rt: ResourceType, obj: dict[str, Any]) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    for error in _validator(rt).iter_errors(obj):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - known):
                causes.append(
                    cause(
                        FIELD_INVALID,
                        f'field not declared in schema: "{extra}"',
                        field_path([*path, extra]),
                    )
                )
            continue
        if error.validator == "required" and isinstance(error.instance, dict):
            # Name the missing field itself, as the real server does.
            for missing in error.validator_value:
                if missing not in error.instance:
                    causes.append(
                        cause(FIELD_REQUIRED, "Required value", field_path([*path, missing]))
                    )
            continue
        if error.validator == "type":
            reason = FIELD_TYPE_INVALID
        elif error.validator == "required":
            reason = FIELD_REQUIRED
        elif error.validator == "enum":
            reason = FIELD_NOT_SUPPORTED
        else:
            reason = FIELD_INVALID
        message = f"Invalid value: {error.message}"
        causes.append(cause(reason, message, field_path(path) or "<root>"))
    return causes


def _quantity_causes(schema: Any, value: Any, path: list[Any]) -> Iterator[dict[str, str]]:
    """Walk the object along its schema and check every Quantity-typed value."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name == _QUANTITY_REF:
            if isinstance(value, str) and not _QUANTITY.match(value):
                yield cause(
                    FIELD_INVALID,
                    f'Invalid value: "{value}": {_QUANTITY_MESSAGE}',
                    field_path(path),
                )
            return
        schema = _definitions().get(name, {})
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            yield from _quantity_causes(sub, item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _quantity_causes(schema.get("items"), item, [*path, index])


def _name_causes(rt: ResourceType, name: str) -> list[dict[str, str]]:
    if not name:
        return [
            cause(
                FIELD_REQUIRED, "Required value: name or generateName is required", "metadata.name"
            )
        ]
    if rt.group == "rbac.authorization.k8s.io":
        # RBAC objects accept path-segment names such as "system:admin".
        if name in (".", "..") or "/" in name or "%" in name:
            return [
                cause(
                    FIELD_INVALID,
                    f'Invalid value: "{name}": may not contain "/" or "%"',
                    "metadata.name",
                )
            ]
        return []
    if rt.kind == "Namespace":
        if len(name) > 63:
            return [
                cause(
                    FIELD_INVALID,
                    f'Invalid value: "{name}": must be no more than 63 characters',
                    "metadata.name",
                )
            ]
        if not _DNS1123_LABEL.match(name):
            return [
                cause(
                    FIELD_INVALID,
                    f'Invalid value: "{name}": a lowercase RFC 1123 label '
                    "must consist of lower case alphanumeric characters or '-', and must "
                    "start and end with an alphanumeric character",
                    "metadata.name",
                )
            ]
        return []
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return [
            cause(
                FIELD_INVALID,
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                "must consist of lower case alphanumeric characters, '-' or '.', and must "
                "start and end with an alphanumeric character",
                "metadata.name",
            )
        ]
    return []


def _label_causes(labels: Any) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    if not isinstance(labels, dict):
        return causes
    for key, value in labels.items():
        field = "metadata.labels"
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix))) or (
            len(name) > 63 or not _QUALIFIED_NAME.match(name)
        ):
            causes.append(
                cause(
                    FIELD_INVALID,
                    f'Invalid value: "{key}": name part must consist '
                    "of alphanumeric characters, '-', '_' or '.'",
                    field,
                )
            )
        if isinstance(value, str) and (len(value) > 63 or not _LABEL_VALUE.match(value)):
            reason = FIELD_TOO_LONG if len(value) > 63 else FIELD_INVALID
            causes.append(
                cause(
                    reason,
                    f'Invalid value: "{value}": a valid label must be an '
                    "empty string or consist of alphanumeric characters, '-', '_' "
                    "or '.', at most 63 characters",
                    field,
                )
            )
    return causes


def _kind_causes(rt: ResourceType, obj: dict[str, Any]) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    if rt.kind == "RoleBinding":
        ref = obj.get("roleRef") or {}
        if ref.get("kind") not in ("Role", "ClusterRole"):
            causes.append(
                cause(
                    FIELD_NOT_SUPPORTED,
                    f'Unsupported value: "{ref.get("kind")}": '
                    'supported values: "Role", "ClusterRole"',
                    "roleRef.kind",
                )
            )
        for index, subject in enumerate(obj.get("subjects") or []):
            if subject.get("kind") not in ("User", "Group", "ServiceAccount"):
                causes.append(
                    cause(
                        FIELD_NOT_SUPPORTED,
                        f'Unsupported value: "{subject.get("kind")}": supported '
                        'values: "ServiceAccount", "User", "Group"',
                        f"subjects[{index}].kind",
                    )
                )
    return causes


# Objects whose schema checks passed, by kind and shape (see _shape_key): tenants'
# objects differ only in names and label values, which the schemas type as plain
# strings, so a shape seen valid once need not be walked again. This keeps the fake's
# own CPU work per request small, so its latency model is not skewed by concurrent
# requests queuing for one interpreter (a real API server validates on many cores).
_VALID_SHAPES: collections.OrderedDict[str, None] = collections.OrderedDict()
_VALID_SHAPES_MAX = 4096
_VALID_SHAPES_LOCK = threading.Lock()
_PLAIN_STRING_META = frozenset(
    {"name", "namespace", "generateName", "uid", "resourceVersion", "creationTimestamp"}
)


def _shape_key(rt: ResourceType, obj: dict[str, Any], status_write: bool) -> str:
    """The object with metadata strings and string maps reduced to their types."""
    meta = obj.get("metadata")
    shape: dict[str, Any] = {}
    if isinstance(meta, dict):
        for key, value in meta.items():
            if key in _PLAIN_STRING_META and isinstance(value, str):
                shape[key] = "<string>"
            elif (
                key in ("labels", "annotations")
                and isinstance(value, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                shape[key] = "<map of strings>"
            else:
                shape[key] = value
    rest = _names_reduced({k: v for k, v in obj.items() if k != "metadata"})
    return json.dumps(
        [rt.kind, status_write, meta is None, shape, rest], sort_keys=True, default=str
    )


def _names_reduced(value: Any) -> Any:
    """``value`` with every string under a ``name`` key (subjects, refs) reduced to its
    type: the schemas type those as plain strings."""
    if isinstance(value, dict):
        return {
            k: "<string>" if k == "name" and isinstance(v, str) else _names_reduced(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_names_reduced(v) for v in value]
    return value


def validate_object(rt: ResourceType, obj: dict[str, Any], *, status_write: bool = False) -> None:
    """Validate an object about to be stored.

    Args:
        rt: its type.
        obj: the complete object.
        status_write: whether the write came through ``/status``; otherwise status is
            server-derived and its quantities are not checked again (the real server
            validates status only on status updates).

    Raises:
        KubeApiError: 422 Invalid, with one cause per problem naming the field.
    """
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    shape = _shape_key(rt, obj, status_write)
    with _VALID_SHAPES_LOCK:
        known_valid = shape in _VALID_SHAPES
    causes = [] if known_valid else _schema_causes(rt, obj)
    if not causes:
        # The deeper checks assume the shapes the schema guarantees.
        if not known_valid:
            schema = _schema_file(_schema_name(rt))
            checked = obj if status_write else {k: v for k, v in obj.items() if k != "status"}
            causes.extend(_quantity_causes(schema, checked, []))
            if not causes:
                with _VALID_SHAPES_LOCK:
                    _VALID_SHAPES[shape] = None
                    if len(_VALID_SHAPES) > _VALID_SHAPES_MAX:
                        _VALID_SHAPES.popitem(last=False)
        causes.extend(_name_causes(rt, name))
        causes.extend(_label_causes(meta.get("labels")))
        causes.extend(_kind_causes(rt, obj))
    if causes:
        raise invalid(rt, name, causes)


def validate_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Checks that compare the stored object with its replacement (immutable fields).

    Raises:
        KubeApiError: 422 Invalid.
    """
    name = str(new.get("metadata", {}).get("name", ""))
    if rt.kind == "RoleBinding" and old.get("roleRef") != new.get("roleRef"):
        raise invalid(
            rt,
            name,
            [
                cause(
                    FIELD_INVALID,
                    f"Invalid value: {new.get('roleRef')}: cannot change roleRef",
                    "roleRef",
                )
            ],
        )


__all__ = ["KubeApiError", "field_path", "validate_object", "validate_update", "warm_up"]
