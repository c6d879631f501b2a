"""The SDK's watcher refuses, at construction, options the server would refuse on every
stream (it would otherwise reconnect forever with an INVALID_ARGUMENT each time)."""

from __future__ import annotations

from typing import Any

import pytest
from agentready.watcher import AsyncConfigWatcher


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"progress_interval": 0.5}, "progress_interval"),
        ({"progress_interval": 61}, "progress_interval"),
        ({"services": [f"svc{i}" for i in range(101)]}, "services"),
    ],
)
def test_options_out_of_the_servers_bounds_are_refused(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AsyncConfigWatcher("127.0.0.1:1", "acme", token="t", **options)


def test_options_within_the_bounds_are_taken() -> None:
    watcher = AsyncConfigWatcher(
        "127.0.0.1:1", "acme", token="t", progress_interval=60, services=["ai"] * 100
    )
    assert watcher.organization == "acme"
