"""make run's choice of PostgreSQL and Redis: the configured ones when set."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicekit.devstack import backing_services


def test_configured_servers_are_used_and_nothing_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal:5432/agentready")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/0")
    with backing_services(tmp_path) as env:
        assert env == {
            "DATABASE_URL": "postgresql://app@db.internal:5432/agentready",
            "REDIS_URL": "redis://cache.internal:6379/0",
        }
    assert list(tmp_path.iterdir()) == []  # no embedded server was set up
