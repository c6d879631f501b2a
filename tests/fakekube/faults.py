"""Failure injection, the latency model and the request log.

The latency model: every request to a resource is charged as one verb (see
:data:`VERBS`) and answers no earlier than the latency found for it, measured from its
arrival, the fake's own work included. The latency is looked up, first match wins, as

1. ``"<verb>:<resource>"``, e.g. ``"create:namespaces"``;
2. ``"<verb>"``, e.g. ``"update"``;
3. ``"<resource>"``, e.g. ``"namespaces"`` (the per-resource form);
4. the default (0 unless set).

Discovery and unknown paths are charged no verb and no latency.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from .resources import resolve_type

VERBS = ("create", "update", "delete", "get", "list", "watch")
"""The verbs a request is charged as:

* ``create``: POST, or a PATCH/PUT that created the object (server-side apply of a
  missing object); a PATCH/PUT that failed is ``create`` when the object does not
  exist;
* ``update``: PATCH/PUT of an existing object, and of a ``status`` subresource;
* ``delete``: DELETE of an object or a collection;
* ``get``: GET of one object; ``list``: GET of a collection; ``watch``: GET with
  ``watch=true`` (refused by this fake, but charged as such).
"""


def latency_rule_key(key: str) -> str:
    """The normalised form of a latency rule key, as :class:`FaultTable` stores it.

    Args:
        key: ``"<verb>:<resource>"``, ``"<verb>"`` or ``"<resource>"``; a resource by
            plural, singular or Kind (``create:Namespace`` -> ``create:namespaces``).

    Raises:
        ValueError: an unknown verb or resource.
    """
    verb, sep, resource = key.strip().partition(":")
    verb, resource = verb.strip(), resource.strip()
    if sep:
        if verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r} in latency rule {key!r}; verbs: {VERBS}")
        return f"{verb}:{_plural(resource, key)}"
    if verb in VERBS:
        return verb
    return _plural(verb, key, f" (nor is it one of the verbs {', '.join(VERBS)})")


def _plural(resource: str, key: str, hint: str = "") -> str:
    try:
        return resolve_type(resource).plural
    except KeyError:
        raise ValueError(
            f"latency rule {key!r}: the fake serves no resource called {resource!r}{hint}"
        ) from None


@dataclass(frozen=True)
class RequestInfo:
    """What the HTTP layer knows about a request before handling it.

    Attributes:
        method: HTTP method.
        path: URL path without the query.
        resource: resource plural (``namespaces``), or ``""`` for discovery and
            unknown paths.
        kind: the resource's Kind, or ``""``.
        namespace: namespace from the URL, or ``""``.
        name: object name from the URL, or ``""``.
        subresource: ``status`` or ``""``.
    """

    method: str
    path: str
    resource: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""


@dataclass
class Fault:
    """One injected failure; matches when every given criterion matches.

    Attributes:
        status: HTTP status to answer with (0 for a delay-only fault).
        method: HTTP method to match, any when None.
        path: regular expression searched in the URL path, any when None.
        kind: resource plural, singular or Kind to match, any when None (stored as
            the plural).
        times: how many matching requests it affects; None means always.
        delay: seconds to wait before answering (longer than a client's timeout to
            simulate a hang), or until :meth:`release`. With ``status == 0`` the
            request is then served normally.
        message: ``Status.message``; a default derived from the status when empty.
        reason: ``Status.reason``; derived from the status when empty.
        retry_after: seconds for the ``Retry-After`` header and
            ``details.retryAfterSeconds``.
        rendezvous: when above 0, each matching request, once served and before it
            answers (where its latency is waited out, no lock held), waits until this
            many matching requests wait together, then all go on. Proves that requests
            are in flight, and in their latency wait, at the same time.
        rendezvous_timeout: seconds a request waits for the others; after that the
            rendezvous is broken (see ``broken``) and every waiting request answers.
        hits: how many requests it has affected so far.
        broken: whether the rendezvous timed out (or the server stopped) before it
            filled, i.e. the requests were not all in flight together.
    """

    status: int
    method: str | None = None
    path: str | None = None
    kind: str | None = None
    times: int | None = 1
    delay: float = 0.0
    message: str = ""
    reason: str = ""
    retry_after: int | None = None
    rendezvous: int = 0
    rendezvous_timeout: float = 10.0
    hits: int = 0
    broken: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)
    _barrier: threading.Barrier | None = field(default=None, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, repr=False)
    _waiting: threading.Semaphore = field(
        default_factory=lambda: threading.Semaphore(0), repr=False
    )

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path) if self.path is not None else None
        if self.rendezvous < 0:
            raise ValueError("rendezvous must be 0 (none) or a number of requests")
        self._barrier = threading.Barrier(self.rendezvous) if self.rendezvous else None
        if self.kind is not None:
            try:
                self.kind = resolve_type(self.kind).plural
            except KeyError:
                raise ValueError(f"the fake serves no resource called {self.kind!r}") from None

    def matches(self, request: RequestInfo) -> bool:
        """Whether this fault applies to ``request`` (ignores the remaining count)."""
        if self.method is not None and self.method.upper() != request.method:
            return False
        if self._pattern is not None and not self._pattern.search(request.path):
            return False
        return self.kind is None or self.kind == request.resource

    @property
    def exhausted(self) -> bool:
        """Whether it has already affected ``times`` requests."""
        return self.times is not None and self.hits >= self.times

    def meet(self) -> None:
        """Wait at the rendezvous (no-op without one); notes a timeout in ``broken``."""
        if self._barrier is None:
            return
        try:
            self._barrier.wait(self.rendezvous_timeout)
        except threading.BrokenBarrierError:
            self.broken = True

    def hold(self) -> None:
        """Waits out the delay (no-op without one), or less once released."""
        if self.delay > 0:
            self._waiting.release()
            self._released.wait(self.delay)

    def wait_held(self, timeout: float = 10.0) -> bool:
        """Blocks until one more request is held by the delay (each call waits for
        the next one); False after ``timeout`` seconds without one."""
        return self._waiting.acquire(timeout=timeout)

    def release(self) -> None:
        """Let every request it holds go: waiting at the rendezvous, or out its delay
        (which then no longer holds any)."""
        self._released.set()
        if self._barrier is not None:
            self._barrier.abort()


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as the request log keeps it.

    Attributes:
        seq: arrival order, from 0.
        method: HTTP method.
        path: URL path.
        query: the raw query string.
        content_type: the request's ``Content-Type`` (``""`` when absent).
        status: the HTTP status answered.
        resource: resource plural or ``""``.
        namespace: namespace from the URL or ``""``.
        name: object name from the URL or ``""``.
        started: ``time.monotonic()`` when the request arrived.
        finished: ``time.monotonic()`` when the answer was ready (just before writing it).
        verb: the verb the request was charged as (one of :data:`VERBS`), decided once
            it was served; ``""`` for discovery and unknown paths.
        latency: the latency charged, in seconds: the answer was held until
            ``started + latency`` at the earliest (unless the server was stopping).
    """

    seq: int
    method: str
    path: str
    query: str
    content_type: str
    status: int
    resource: str
    namespace: str
    name: str
    started: float
    finished: float
    verb: str = ""
    latency: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds between arrival and answer."""
        return self.finished - self.started


class FaultTable:
    """Thread-safe injected faults and latency rules (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._latency_default = 0.0
        # Normalised keys (latency_rule_key): "verb:plural", "verb" or "plural".
        self._latency: dict[str, float] = {}

    def add(self, fault: Fault) -> Fault:
        """Add a fault; the earliest added matching fault wins."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, request: RequestInfo) -> Fault | None:
        """The first live fault matching ``request``, counting the hit."""
        with self._lock:
            for fault in self._faults:
                if not fault.exhausted and fault.matches(request):
                    fault.hits += 1
                    return fault
        return None

    def clear(self) -> None:
        """Drop every injected fault (latency is kept), releasing held requests."""
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.release()

    def release(self) -> None:
        """Release every request held at a rendezvous (the faults are kept)."""
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            fault.release()

    def set_latency(self, default: float | None, rules: Mapping[str, float]) -> None:
        """Set the default latency and/or latency rules.

        Args:
            default: seconds when no rule matches; unchanged when None.
            rules: seconds by key (``verb:resource``, ``verb`` or ``resource``, in any
                form :func:`latency_rule_key` accepts), added to the current rules.

        Raises:
            ValueError: an unknown verb or resource, or a negative latency.
        """
        normalised = {latency_rule_key(key): float(value) for key, value in rules.items()}
        if any(value < 0 for value in normalised.values()) or (default or 0) < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            if default is not None:
                self._latency_default = float(default)
            self._latency.update(normalised)

    def clear_latency(self) -> None:
        """No added latency anywhere: no rules, default 0."""
        with self._lock:
            self._latency_default = 0.0
            self._latency.clear()

    def latency_rules(self) -> dict[str, float]:
        """The current rules (normalised keys) and the default, under the key ``""``."""
        with self._lock:
            return {"": self._latency_default, **self._latency}

    def latency_for(self, verb: str, resource: str) -> float:
        """Seconds a request charged as ``verb`` on ``resource`` takes to answer.

        Looks up ``verb:resource``, then ``verb``, then ``resource``, then the default;
        0 for discovery and unknown paths (no verb or no resource).
        """
        if not verb or not resource:
            return 0.0
        with self._lock:
            for key in (f"{verb}:{resource}", verb, resource):
                latency = self._latency.get(key)
                if latency is not None:
                    return latency
            return self._latency_default


class RequestLog:
    """Served requests, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._records: list[RequestRecord] = []

    def next_seq(self) -> int:
        """Number an arriving request."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def add(self, record: RequestRecord) -> None:
        """Record a finished request."""
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        """Finished requests, sorted by arrival (requests still in flight are absent)."""
        with self._lock:
            return sorted(self._records, key=lambda r: r.seq)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()
