"""Failure injection, per-kind latency and the request log."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from .resources import resolve_type


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
            simulate a hang). With ``status == 0`` the request is then served normally.
        message: ``Status.message``; a default derived from the status when empty.
        reason: ``Status.reason``; derived from the status when empty.
        retry_after: seconds for the ``Retry-After`` header and
            ``details.retryAfterSeconds``.
        hits: how many requests it has affected so far.
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
    hits: int = 0
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path) if self.path is not None else None
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

    @property
    def duration(self) -> float:
        """Seconds between arrival and answer."""
        return self.finished - self.started


class FaultTable:
    """Thread-safe injected faults and per-kind latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._latency_default = 0.0
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
        """Drop every injected fault (latency is kept)."""
        with self._lock:
            self._faults.clear()

    def set_latency(self, default: float | None, per_resource: dict[str, float]) -> None:
        """Set the default latency and/or per-resource latencies (resource plurals)."""
        with self._lock:
            if default is not None:
                self._latency_default = default
            self._latency.update(per_resource)

    def clear_latency(self) -> None:
        """No added latency anywhere."""
        with self._lock:
            self._latency_default = 0.0
            self._latency.clear()

    def latency_for(self, request: RequestInfo) -> float:
        """Seconds to add to ``request`` (0 for discovery)."""
        if not request.resource:
            return 0.0
        with self._lock:
            return self._latency.get(request.resource, self._latency_default)


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
