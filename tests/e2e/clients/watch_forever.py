"""A pod's watcher in a process of its own, until it is killed: it reports its
rollout status like any SDK watcher. Used by test_rollout_status.py.

    python watch_forever.py <host:port> <organization> <client id> <label k=v>

Reads the bearer token from AGENTREADY_TOKEN; prints "ready <revision>" once started.
"""

from __future__ import annotations

import asyncio
import os
import sys

from agentready.watcher import AsyncConfigWatcher


async def main(target: str, organization: str, client_id: str, label: str) -> None:
    key, _, value = label.partition("=")
    async with AsyncConfigWatcher(
        target,
        organization,
        token=os.environ["AGENTREADY_TOKEN"],
        client_id=client_id,
        labels={key: value},
        report_interval=0.5,
    ) as watcher:
        print("ready", watcher.revision, flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
