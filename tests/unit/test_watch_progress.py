"""WatchConfig's progress interval as the contract gives it: unset or zero is the
server default (5 s), other values are clamped to 1-60 s, negative is refused."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from config_service.entrypoints.grpc_api import DEFAULT_PROGRESS_SECONDS, progress_seconds


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (None, DEFAULT_PROGRESS_SECONDS),
        (duration_pb2.Duration(), DEFAULT_PROGRESS_SECONDS),
        (duration_pb2.Duration(nanos=500_000_000), 1.0),
        (duration_pb2.Duration(seconds=7), 7.0),
        (duration_pb2.Duration(seconds=3600), 60.0),
        (duration_pb2.Duration(seconds=-1), None),
        (duration_pb2.Duration(nanos=-1), None),
    ],
)
def test_progress_interval(given: duration_pb2.Duration | None, seconds: float | None) -> None:
    assert progress_seconds(given) == seconds
