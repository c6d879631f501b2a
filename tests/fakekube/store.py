"""The object store: what etcd plus the API server's registries do for the fake.

Every public method takes the store lock for its whole duration, so each request is
atomic, exactly like one etcd transaction. The lock is never held while the HTTP
layer sleeps for injected latency, so slow calls still overlap.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import errors
from .errors import KubeApiError
from .patch import (
    FieldPath,
    PatchError,
    clone,
    deep_merge,
    delete_path,
    fields_v1,
    get_path,
    has_path,
    json_patch,
    leaf_paths,
    merge_patch,
    overlaps,
    strip_nulls,
)
from .resources import NAMESPACES, RESOURCE_TYPES, ResourceType
from .selectors import parse_field_selector, parse_label_selector
from .validation import validate_object, validate_update

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (APPLY_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)

# Metadata the server owns: never taken from a request body, never tracked as a field.
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)
_IDENTITY_METADATA = ("name", "namespace")

Key = tuple[str, str, str]  # (plural, namespace or "", name)


def _now() -> str:
    # Seconds precision, as the real server's metav1.Time.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Manager:
    """One ``managedFields`` entry, with its fields as a path set."""

    manager: str
    operation: str  # "Apply" or "Update"
    api_version: str
    time: str
    subresource: str
    paths: set[FieldPath] = field(default_factory=set)

    def render(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry

    def identity(self) -> tuple[str, str, str, frozenset[FieldPath]]:
        return (self.manager, self.operation, self.subresource, frozenset(self.paths))


@dataclass
class _Entry:
    obj: dict[str, Any]
    managers: list[_Manager]


def _tracked(obj: dict[str, Any], subresource: str) -> dict[str, Any]:
    """The part of an object whose fields are owned by managers."""
    if subresource == "status":
        return {"status": clone(obj.get("status", {}))}
    tracked = {k: clone(v) for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    meta = tracked.get("metadata")
    if isinstance(meta, dict):
        for name in (*_SERVER_METADATA, *_IDENTITY_METADATA):
            meta.pop(name, None)
        if not meta:
            tracked.pop("metadata")
    return tracked


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    out = clone(obj)
    meta = out.get("metadata", {})
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return out


def _stringify_quantities(values: Any) -> Any:
    # JSON numbers are accepted for quantities but always served back as strings.
    if isinstance(values, dict):
        return {
            k: (str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in values.items()
        }
    return values


class ObjectStore:
    """Objects by type, namespace and name, with one global resourceVersion counter.

    Args:
        namespace_deletion_delay: seconds a deleted namespace stays ``Terminating``
            before it and everything in it disappear. Read when the purge is due, so a
            change applies to namespaces already terminating too (a test can hold one
            in ``Terminating`` with a long delay, then let it go by setting 0).
    """

    def __init__(self, *, namespace_deletion_delay: float = 0.2) -> None:
        self.namespace_deletion_delay = namespace_deletion_delay
        self._lock = threading.RLock()
        self._objects: dict[Key, _Entry] = {}
        self._revision = 0
        # Terminating namespaces and the monotonic time they were deleted at; each is
        # purged namespace_deletion_delay seconds later. The purge happens lazily on
        # the next store access: observably the same as a background controller,
        # without a thread to manage.
        self._deleted_at: dict[str, float] = {}

    # -- helpers -------------------------------------------------------------------

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _purge_expired(self) -> None:
        now = time.monotonic()
        for namespace, deleted_at in list(self._deleted_at.items()):
            if deleted_at + self.namespace_deletion_delay <= now:
                del self._deleted_at[namespace]
                self._drop_namespace(namespace)

    def _drop_namespace(self, namespace: str) -> None:
        for key in [k for k in self._objects if k[1] == namespace]:
            del self._objects[key]
            self._next_revision()
        if self._objects.pop((NAMESPACES.plural, "", namespace), None) is not None:
            self._next_revision()
        self._deleted_at.pop(namespace, None)

    @staticmethod
    def _key(rt: ResourceType, namespace: str | None, name: str) -> Key:
        return (rt.plural, (namespace or "") if rt.namespaced else "", name)

    def _check_namespace_for_create(self, rt: ResourceType, namespace: str, name: str) -> None:
        if not rt.namespaced:
            return
        ns = self._objects.get((NAMESPACES.plural, "", namespace))
        if ns is None:
            raise errors.not_found(NAMESPACES, namespace)
        if ns.obj.get("metadata", {}).get("deletionTimestamp"):
            raise errors.forbidden_terminating(rt, name, namespace)

    def _check_body_identity(
        self, rt: ResourceType, body: Any, namespace: str | None, name: str | None
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of the request is not a {rt.kind} object")
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version}) or the kind ({kind}) is not {rt.kind}"
            )
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and namespace and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        body_name = meta.get("name")
        if name is not None and body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        return body

    def _normalize(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, subresource: str
    ) -> dict[str, Any]:
        """Fill in what the real server's strategies and defaulting would."""
        obj = strip_nulls(obj)  # a new object: its maps and lists are rebuilt
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta = obj.setdefault("metadata", {})
        old_meta = (old or {}).get("metadata", {})
        for name in _SERVER_METADATA:
            meta.pop(name, None)
            if name in old_meta and name not in ("resourceVersion", "managedFields"):
                meta[name] = clone(old_meta[name])
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or old_meta.get("namespace")
        else:
            meta.pop("namespace", None)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()

        if subresource == "status":
            # Only status may change through /status.
            status = obj.get("status")
            obj = clone(old or {})
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
            return obj
        if rt.status_subresource:
            # The main resource ignores status, as the real registries do.
            if old is not None and "status" in old:
                obj["status"] = clone(old["status"])
            else:
                obj.pop("status", None)

        if rt.kind == "Namespace":
            labels = meta.setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = meta.get("name", "")
            spec = obj.setdefault("spec", {})
            spec.setdefault("finalizers", ["kubernetes"])
            if old is None:
                obj["status"] = {"phase": "Active"}
        elif rt.kind == "ResourceQuota":
            spec = obj.get("spec") or {}
            if "hard" in spec:
                spec["hard"] = _stringify_quantities(spec["hard"])
            # The quota controller's job, done synchronously: hard mirrors spec.hard and
            # used starts at zero for each tracked resource.
            hard = clone(spec.get("hard") or {})
            used_before = ((old or {}).get("status") or {}).get("used") or {}
            obj["status"] = {
                "hard": hard,
                "used": {k: used_before.get(k, "0") for k in hard},
            }
        elif rt.kind == "LimitRange":
            for item in (obj.get("spec") or {}).get("limits") or []:
                for section in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
                    if section in item:
                        item[section] = _stringify_quantities(item[section])
        elif rt.kind == "NetworkPolicy":
            spec = obj.get("spec")
            if isinstance(spec, dict):
                if not spec.get("policyTypes"):
                    spec["policyTypes"] = ["Ingress"] + (["Egress"] if "egress" in spec else [])
                for direction in ("ingress", "egress"):
                    for rule in spec.get(direction) or []:
                        for port in (rule or {}).get("ports") or []:
                            if isinstance(port, dict):
                                port.setdefault("protocol", "TCP")
        elif rt.kind == "RoleBinding":
            for subject in obj.get("subjects") or []:
                if isinstance(subject, dict) and subject.get("kind") in ("User", "Group"):
                    subject.setdefault("apiGroup", "rbac.authorization.k8s.io")

        if rt.has_generation:
            if old is None:
                meta["generation"] = 1
            elif obj.get("spec") != old.get("spec"):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return obj

    def _commit(
        self,
        rt: ResourceType,
        key: Key,
        old: _Entry | None,
        new_obj: dict[str, Any],
        managers: list[_Manager],
        *,
        dry_run: bool,
        subresource: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Validate and store; returns (object, changed). A no-op keeps the old version."""
        validate_object(rt, new_obj, status_write=subresource == "status")
        managers = [m for m in managers if m.paths]
        if old is not None:
            validate_update(rt, old.obj, new_obj)
            unchanged = _comparable(old.obj) == _comparable(new_obj) and [
                m.identity() for m in old.managers
            ] == [m.identity() for m in managers]
            if unchanged:
                return clone(old.obj), False
        new_obj["metadata"]["managedFields"] = [m.render() for m in managers]
        if dry_run:
            if old is not None:
                new_obj["metadata"]["resourceVersion"] = old.obj["metadata"]["resourceVersion"]
            return new_obj, True
        new_obj["metadata"]["resourceVersion"] = self._next_revision()
        self._objects[key] = _Entry(clone(new_obj), managers)
        return new_obj, True

    @staticmethod
    def _record_update(
        managers: list[_Manager],
        manager: str,
        rt: ResourceType,
        old: dict[str, Any] | None,
        new: dict[str, Any],
        subresource: str,
    ) -> list[_Manager]:
        """Ownership after a non-apply write: the writer takes every field it changed."""
        before = _tracked(old or {}, subresource)
        after = _tracked(new, subresource)
        changed = {p for p in leaf_paths(after) if get_path(before, p) != get_path(after, p)}
        gone = {p for p in leaf_paths(before) if not has_path(after, p)}
        result: list[_Manager] = []
        for m in managers:
            if m.subresource != subresource:
                result.append(m)
                continue
            kept = {
                p for p in m.paths if p not in gone and not any(overlaps(p, c) for c in changed)
            }
            result.append(
                _Manager(m.manager, m.operation, m.api_version, m.time, m.subresource, kept)
            )
        mine = next(
            (
                m
                for m in result
                if (m.manager, m.operation, m.subresource) == (manager, "Update", subresource)
            ),
            None,
        )
        if changed:
            if mine is None:
                mine = _Manager(manager, "Update", rt.api_version, _now(), subresource)
                result.append(mine)
            mine.paths |= changed
            mine.time = _now()
        return result

    def _entry(self, rt: ResourceType, namespace: str | None, name: str) -> _Entry:
        entry = self._objects.get(self._key(rt, namespace, name))
        if entry is None:
            raise errors.not_found(rt, name)
        return entry

    # -- verbs ---------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        manager: str,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """POST: store a new object.

        Raises:
            KubeApiError: 400, 403 (terminating namespace), 404 (missing namespace),
                409 AlreadyExists, 422 Invalid.
        """
        with self._lock:
            self._purge_expired()
            body = self._check_body_identity(rt, body, namespace, None)
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
            name = str(meta.get("name") or "")
            if rt.namespaced:
                meta["namespace"] = namespace
            obj = self._normalize(rt, body, None, "")
            if name:
                self._check_namespace_for_create(rt, namespace or "", name)
            key = self._key(rt, namespace, name)
            if name and key in self._objects:
                raise errors.already_exists(rt, name)
            managers = self._record_update([], manager, rt, None, obj, "")
            created, _ = self._commit(rt, key, None, obj, managers, dry_run=dry_run)
            return created

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """GET one object.

        Raises:
            KubeApiError: 404 NotFound.
        """
        with self._lock:
            self._purge_expired()
            return clone(self._entry(rt, namespace, name).obj)

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        """GET a collection, as ``{Kind}List``; ``namespace=None`` lists all namespaces.

        A list in a namespace that does not exist is empty, as on the real server.

        Raises:
            KubeApiError: 400 for a bad selector or continue token.
        """
        match_labels = parse_label_selector(label_selector)
        match_fields = parse_field_selector(field_selector)
        start: tuple[str, str] = ("", "")
        if continue_token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(decoded["ns"]), str(decoded["name"]))
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise errors.bad_request(f"invalid continue token: {exc}") from exc
        with self._lock:
            self._purge_expired()
            entries = sorted(
                (
                    (k[1], k[2], e.obj)
                    for k, e in self._objects.items()
                    if k[0] == rt.plural and (namespace is None or k[1] == (namespace or ""))
                ),
                key=lambda t: (t[0], t[1]),
            )
            selected = [
                obj
                for ns, name, obj in entries
                if (ns, name) > start or not continue_token
                if match_labels(obj) and match_fields(obj)
            ]
            revision = str(self._revision)
        meta: dict[str, Any] = {"resourceVersion": revision}
        if limit and len(selected) > limit:
            last = selected[limit - 1]["metadata"]
            token = {"ns": last.get("namespace", ""), "name": last["name"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(selected) - limit
            selected = selected[:limit]
        items = []
        for obj in selected:
            # Items of a typed list carry no kind/apiVersion on the real server.
            item = clone(obj)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT: replace an existing object; a ``metadata.resourceVersion`` is a precondition.

        Raises:
            KubeApiError: 400, 404, 409 Conflict (stale resourceVersion), 422.
        """
        with self._lock:
            self._purge_expired()
            body = self._check_body_identity(rt, body, namespace, name)
            entry = self._entry(rt, namespace, name)
            wanted = str((body.get("metadata") or {}).get("resourceVersion") or "")
            if wanted and wanted != entry.obj["metadata"]["resourceVersion"]:
                raise errors.stale_resource_version(rt, name)
            body.setdefault("metadata", {})["name"] = name
            obj = self._normalize(rt, body, entry.obj, subresource)
            managers = self._record_update(entry.managers, manager, rt, entry.obj, obj, subresource)
            result, _ = self._commit(
                rt,
                self._key(rt, namespace, name),
                entry,
                obj,
                managers,
                dry_run=dry_run,
                subresource=subresource,
            )
            return result

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        *,
        manager: str,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """PATCH of any supported type; returns (object, created).

        Only server-side apply creates a missing object.

        Raises:
            KubeApiError: 400, 403, 404, 409 (stale resourceVersion or field-manager
                conflict), 422.
        """
        with self._lock:
            self._purge_expired()
            if patch_type == APPLY_PATCH:
                return self._apply(
                    rt,
                    namespace,
                    name,
                    body,
                    manager=manager,
                    force=force,
                    subresource=subresource,
                    dry_run=dry_run,
                )
            entry = self._entry(rt, namespace, name)
            try:
                if patch_type == JSON_PATCH:
                    patched = json_patch(entry.obj, body)
                else:
                    # Strategic merge patch is treated as a JSON merge patch. For the kinds
                    # served here every list is atomic (replaced whole) under both, so
                    # the results agree; $patch directives are not supported.
                    if not isinstance(body, dict):
                        raise errors.bad_request("a merge patch must be a JSON object")
                    patched = merge_patch(entry.obj, body)
            except PatchError as exc:
                raise errors.invalid(
                    rt, name, [errors.cause(errors.FIELD_INVALID, str(exc), "<patch>")]
                ) from exc
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            meta = patched.get("metadata") or {}
            if meta.get("name") != name:
                raise errors.invalid(
                    rt,
                    name,
                    [errors.cause(errors.FIELD_INVALID, "field is immutable", "metadata.name")],
                )
            wanted = str(meta.get("resourceVersion") or "")
            if wanted and wanted != entry.obj["metadata"]["resourceVersion"]:
                raise errors.stale_resource_version(rt, name)
            obj = self._normalize(rt, patched, entry.obj, subresource)
            managers = self._record_update(entry.managers, manager, rt, entry.obj, obj, subresource)
            result, _ = self._commit(
                rt,
                self._key(rt, namespace, name),
                entry,
                obj,
                managers,
                dry_run=dry_run,
                subresource=subresource,
            )
            return result, False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool,
        subresource: str,
        dry_run: bool,
    ) -> tuple[dict[str, Any], bool]:
        body = self._check_body_identity(rt, body, namespace, name)
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise errors.bad_request(
                f"apiVersion and kind must be set in an apply patch (expected "
                f"{rt.api_version}, {rt.kind})"
            )
        applied = strip_nulls(body)
        key = self._key(rt, namespace, name)
        entry = self._objects.get(key)
        new_paths = leaf_paths(_tracked(applied, subresource))
        me = (manager, "Apply", subresource)

        if entry is None:
            if subresource:
                raise errors.not_found(rt, name)
            self._check_namespace_for_create(rt, namespace or "", name)
            applied.setdefault("metadata", {})["name"] = name
            if rt.namespaced:
                applied["metadata"]["namespace"] = namespace
            obj = self._normalize(rt, applied, None, "")
            owner = _Manager(manager, "Apply", rt.api_version, _now(), "", new_paths)
            created, _ = self._commit(rt, key, None, obj, [owner], dry_run=dry_run)
            return created, True

        wanted = str((applied.get("metadata") or {}).get("resourceVersion") or "")
        if wanted and wanted != entry.obj["metadata"]["resourceVersion"]:
            raise errors.stale_resource_version(rt, name)
        current = _tracked(entry.obj, subresource)
        wanted_values = _tracked(applied, subresource)

        # Conflicts: another manager owns a field this apply sets to a different value.
        conflicts: list[tuple[str, FieldPath]] = []
        for other in entry.managers:
            if (other.manager, other.operation, other.subresource) == me:
                continue
            if other.subresource != subresource:
                continue
            for path in new_paths:
                if any(overlaps(path, q) for q in other.paths) and get_path(
                    current, path
                ) != get_path(wanted_values, path):
                    conflicts.append((other.manager, path))
        if conflicts and not force:
            causes = [
                errors.cause("FieldManagerConflict", f'conflict with "{m}"', "." + ".".join(p))
                for m, p in sorted(set(conflicts))
            ]
            lines = "\n".join(f"- {c['field']}: {c['message']}" for c in causes)
            raise KubeApiError(
                409,
                "Conflict",
                f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}:"
                f"\n{lines}",
                details={
                    "name": name,
                    **({"group": rt.group} if rt.group else {}),
                    "kind": rt.plural,
                    "causes": causes,
                },
            )

        managers: list[_Manager] = []
        previous: set[FieldPath] = set()
        for m in entry.managers:
            if (m.manager, m.operation, m.subresource) == me:
                previous = set(m.paths)
                continue
            paths = set(m.paths)
            if force and m.subresource == subresource:
                # Forced apply takes over every field it sets with a different value.
                taken = {path for owner, path in conflicts if owner == m.manager}
                paths = {q for q in paths if not any(overlaps(q, t) for t in taken)}
            managers.append(
                _Manager(m.manager, m.operation, m.api_version, m.time, m.subresource, paths)
            )

        # Fields this manager applied before and dropped now are removed, unless
        # another manager still owns them (the real server's behaviour).
        base = clone(entry.obj)
        owned_by_others = [q for m in managers if m.subresource == subresource for q in m.paths]
        for path in sorted(previous - new_paths, key=len, reverse=True):
            if any(q[: len(path)] == path for q in new_paths):
                continue  # still set, one level deeper
            if any(overlaps(path, q) for q in owned_by_others):
                continue
            delete_path(base, path)
        merged = deep_merge(
            base,
            wanted_values if subresource else {k: v for k, v in applied.items() if k != "status"},
        )
        obj = self._normalize(rt, merged, entry.obj, subresource)
        old_me = next(
            (m for m in entry.managers if (m.manager, m.operation, m.subresource) == me), None
        )
        stamp = old_me.time if old_me is not None and old_me.paths == new_paths else _now()
        managers.append(_Manager(manager, "Apply", rt.api_version, stamp, subresource, new_paths))
        # Keep the real server's order: existing entries stay where they were.
        order = {(m.manager, m.operation, m.subresource): i for i, m in enumerate(entry.managers)}
        managers.sort(key=lambda m: order.get((m.manager, m.operation, m.subresource), 1 << 30))
        result, _ = self._commit(
            rt, key, entry, obj, managers, dry_run=dry_run, subresource=subresource
        )
        return result, False

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """DELETE: the response body the real server sends for this kind.

        A namespace is not removed at once: it turns ``Terminating`` and disappears,
        with its contents, after ``namespace_deletion_delay`` seconds.

        Raises:
            KubeApiError: 404, 409 (failed precondition or namespace already terminating).
        """
        with self._lock:
            self._purge_expired()
            entry = self._entry(rt, namespace, name)
            meta = entry.obj["metadata"]
            for field_name, label in (("resourceVersion", "ResourceVersion"), ("uid", "UID")):
                expected = (preconditions or {}).get(field_name)
                if expected and expected != meta.get(field_name):
                    raise errors.conflict(
                        rt,
                        name,
                        f"Precondition failed: {label} in precondition: {expected}, "
                        f"{label} in object meta: {meta.get(field_name)}",
                    )
            if rt is NAMESPACES:
                if meta.get("deletionTimestamp"):
                    raise errors.conflict(
                        rt,
                        name,
                        "The system is ensuring all content is removed from this namespace.  "
                        "Upon completion, this namespace will automatically be purged by the "
                        "system.",
                    )
                obj = clone(entry.obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                obj["status"] = {"phase": "Terminating"}
                if dry_run:
                    return obj
                obj["metadata"]["resourceVersion"] = self._next_revision()
                entry.obj = clone(obj)
                self._deleted_at[name] = time.monotonic()
                return obj
            if dry_run:
                return clone(entry.obj)
            del self._objects[self._key(rt, namespace, name)]
            self._next_revision()
            if rt.returns_deleted_object:
                return clone(entry.obj)
            details: dict[str, Any] = {"name": name}
            if rt.group:
                details["group"] = rt.group
            details.update({"kind": rt.plural, "uid": meta.get("uid")})
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> dict[str, Any]:
        """DELETE on a collection: removes the matching objects, returns them as a list."""
        with self._lock:
            listed = self.list_objects(
                rt, namespace, label_selector=label_selector, field_selector=field_selector
            )
            for item in listed["items"]:
                meta = item["metadata"]
                self._objects.pop(self._key(rt, meta.get("namespace"), meta["name"]), None)
                self._next_revision()
            return listed

    # -- direct access for tests ------------------------------------------------------

    def peek(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, bypassing HTTP, or None."""
        with self._lock:
            self._purge_expired()
            entry = self._objects.get(self._key(rt, namespace, name))
            return clone(entry.obj) if entry else None

    def exists(self, rt: ResourceType, namespace: str | None, name: str) -> bool:
        """Whether the object is stored (a terminating namespace still is)."""
        with self._lock:
            self._purge_expired()
            return self._key(rt, namespace, name) in self._objects

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> bool:
        """Remove an object at once (a namespace with all its contents), bypassing HTTP."""
        with self._lock:
            self._purge_expired()
            key = self._key(rt, namespace, name)
            if key not in self._objects:
                return False
            if rt is NAMESPACES:
                self._drop_namespace(name)
            else:
                del self._objects[key]
                self._next_revision()
            return True

    def all_objects(self) -> list[dict[str, Any]]:
        """Every stored object, ordered by type, namespace and name."""
        with self._lock:
            self._purge_expired()
            order = {rt.plural: i for i, rt in enumerate(RESOURCE_TYPES)}
            keys = sorted(self._objects, key=lambda k: (order[k[0]], k[1], k[2]))
            return [clone(self._objects[k].obj) for k in keys]

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        with self._lock:
            return self._revision
