"""RE2 patterns of config schemas, bounded so that no schema can stall a replica.

A pattern is untrusted input compiled by a C++ library that holds the GIL while it
compiles. The bounds (security review finding 1):

* at most :data:`MAX_PATTERN_CHARS` characters, at most :data:`MAX_PATTERNS` patterns
  per schema;
* RE2's own memory budget per pattern (:data:`MAX_PROGRAM_MEMORY`): a pattern whose
  program would be bigger does not compile ("pattern too large"), which also bounds
  the time a compilation takes;
* RE2 holds the GIL while it compiles, so a thread would not keep the event loop
  free: a new schema's patterns are compiled one at a time by :func:`precompile`,
  yielding to the event loop between two (one compilation takes a few milliseconds
  at most under the memory budget), within a time budget for the whole schema;
* compiled patterns are cached in an LRU bounded by the size of their programs, not
  by their count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any

import re2

MAX_PATTERN_CHARS = 1024
MAX_PATTERNS = 200
MAX_PROGRAM_MEMORY = 256 * 1024
# Total size (RE2 program instructions, forward and reverse) of the cached patterns.
CACHE_BUDGET = 2_000_000
# Time all the patterns of one new schema may take to compile.
PRECOMPILE_SECONDS = 2.0

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # an invalid pattern is the caller's error, not a log line
_OPTIONS.max_mem = MAX_PROGRAM_MEMORY


def compile_uncached(pattern: str) -> Any:
    """Compiles ``pattern`` under the bounds.

    Raises:
        re2.error: not valid RE2, or too large for the memory budget.
        ValueError: longer than :data:`MAX_PATTERN_CHARS`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"at most {MAX_PATTERN_CHARS} characters")
    return re2.compile(pattern, _OPTIONS)


def _weight(compiled: Any) -> int:
    return max(1, int(compiled.programsize) + int(compiled.reverseprogramsize))


class PatternCache:
    """Compiled patterns, least recently used first out, within a size budget."""

    def __init__(self, budget: int = CACHE_BUDGET) -> None:
        self._budget = budget
        self._used = 0
        self._entries: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Program size held now."""
        return self._used

    def get(self, pattern: str) -> Any:
        """The compiled pattern (compiling it on a miss).

        Raises:
            re2.error, ValueError: as :func:`compile_uncached`.
        """
        with self._lock:
            hit = self._entries.get(pattern)
            if hit is not None:
                self._entries.move_to_end(pattern)
                return hit[0]
        compiled = compile_uncached(pattern)
        weight = _weight(compiled)
        with self._lock:
            if pattern not in self._entries and weight <= self._budget:
                self._entries[pattern] = (compiled, weight)
                self._used += weight
                while self._used > self._budget:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._used -= dropped
        return compiled


CACHE = PatternCache()


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern, from the process-wide bounded cache."""
    return CACHE.get(pattern)


async def precompile(patterns: Iterable[str], *, budget: float = PRECOMPILE_SECONDS) -> bool:
    """Compiles ``patterns`` into the cache one at a time, letting other work run in
    between; False when they took longer than ``budget`` seconds in all (the schema is
    then refused). Invalid patterns are skipped here and reported by the schema check."""
    spent = 0.0
    for pattern in dict.fromkeys(patterns):
        started = time.perf_counter()
        with contextlib.suppress(re2.error, ValueError):
            CACHE.get(pattern)
        spent += time.perf_counter() - started
        if spent > budget:
            return False
        await asyncio.sleep(0)
    return True
