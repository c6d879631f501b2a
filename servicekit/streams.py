"""Streams end with their token.

A streaming RPC (``WatchConfig`` today) checks the caller's token when it opens, like
every call. Left alone it would then outlive the token: keep delivering after the token
expired, or after it was revoked (sign-out, member removed, key deleted, organization
deleted). :class:`StreamGuards` keeps, per open stream, a timer for the token's expiry
and an index by token id and organization that revocations are matched against; when
either fires, the task serving the stream is cancelled and the shared call path ends it
with ``UNAUTHENTICATED`` and the reason (``TOKEN_EXPIRED`` or ``TOKEN_REVOKED``). The
SDK's watchers understand both: they fetch a token again and resume from their last
revision, losing nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Iterable

from servicekit.auth import Principal
from servicekit.errors import ResourceExhausted, Unauthenticated
from servicekit.revocation import jti_key, organization_key


@dataclasses.dataclass(eq=False)
class Guard:
    """One open stream: its caller, the task serving it, and why it was ended.

    The task is held weakly: a stream whose client went away must be free to be
    collected (and its generator closed) even before the registry hears of it.
    """

    principal: Principal
    task: weakref.ref[asyncio.Task[object]]
    timer: asyncio.TimerHandle | None = None
    ended: Unauthenticated | None = None


class StreamGuards:
    """Open streams by token id and organization; ends them when their token does, and
    caps how many one token and one organization may hold open on this server.

    Args:
        per_token: most streams one token may hold open at once.
        per_organization: most streams one organization may hold open at once.
    """

    def __init__(self, *, per_token: int = 10**9, per_organization: int = 10**9) -> None:
        self._by_key: dict[str, set[Guard]] = {}
        self._caps = (per_token, per_organization)

    def __len__(self) -> int:
        return len({guard for guards in self._by_key.values() for guard in guards})

    def open(self, principal: Principal) -> Guard | None:
        """Guards the stream served by the current task (None outside a task).

        Raises:
            ResourceExhausted: the token or its organization holds its cap of streams.
        """
        task = asyncio.current_task()
        if task is None:
            return None
        for key, cap, holder in zip(
            self._keys(principal), self._caps, ("token", "organization"), strict=False
        ):
            if len(self._by_key.get(key, ())) >= cap:
                raise ResourceExhausted(
                    f"this {holder} holds {cap} open streams, the most a server allows; "
                    "close some (a process needs one watcher per organization)",
                    reason="TOO_MANY_STREAMS",
                    retry_after_seconds=5.0,
                    metadata={"limit": str(cap), "per": holder},
                )
        guard = Guard(principal, weakref.ref(task))
        delay = principal.expires_at.timestamp() - time.time()
        guard.timer = asyncio.get_running_loop().call_later(
            max(0.0, delay),
            self._end,
            guard,
            Unauthenticated("the token has expired", reason="TOKEN_EXPIRED"),
        )
        for key in self._keys(principal):
            self._by_key.setdefault(key, set()).add(guard)
        return guard

    def close(self, guard: Guard) -> None:
        """Forgets a stream that ended."""
        if guard.timer is not None:
            guard.timer.cancel()
        for key in self._keys(guard.principal):
            guards = self._by_key.get(key)
            if guards is not None:
                guards.discard(guard)
                if not guards:
                    del self._by_key[key]

    def revoked(self, keys: Iterable[str]) -> None:
        """Ends the streams whose token (or organization) was just revoked."""
        for key in keys:
            for guard in list(self._by_key.get(key, ())):
                self._end(
                    guard, Unauthenticated("the token has been revoked", reason="TOKEN_REVOKED")
                )

    @staticmethod
    def _keys(principal: Principal) -> list[str]:
        keys = [jti_key(principal.token_id)]
        if principal.organization:
            keys.append(organization_key(principal.organization))
        return keys

    @staticmethod
    def _end(guard: Guard, error: Unauthenticated) -> None:
        task = guard.task()
        if guard.ended is None and task is not None and not task.done():
            guard.ended = error
            task.cancel()
