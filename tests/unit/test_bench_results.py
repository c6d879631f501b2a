"""`make bench` writes what it measured: the table (Markdown, JSON) and the plot."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from tests.bench import results
from tests.bench.common import percentile


def test_results_are_written_as_table_json_and_plot(tmp_path: Path) -> None:
    run = results.Results()
    ours = [0.001 * (1 + i % 10) for i in range(100)]  # 1..10 ms
    theirs = [0.0005 * (1 + i % 10) for i in range(100)]  # 0.5..5 ms
    run.latency("hot reload", "ours: change → listener", ours)
    run.latency("hot reload", "etcd: Put → watch event", theirs)
    run.latency("fan-out", "ours: last of 100", ours)
    run.latency("fan-out", "etcd: last of 100", theirs)
    run.fanout[("ours", 100)] = "ours: last of 100"
    run.fanout[("etcd", 100)] = "etcd: last of 100"
    run.ratio("hot reload / etcd", "ours: change → listener", "etcd: Put → watch event")
    run.ratio("absent", "ours: change → listener", "no such measure")  # skipped
    run.figure("throughput", "SetConfig, 32 concurrent clients", 1234.5, "/s")
    run.note("etcd column measured")

    markdown = results.write(
        run,
        tmp_path,
        command="python -m tests.bench",
        started=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        load_before=[1.0, 1.0, 1.0],
    )

    assert (tmp_path / "results.md").read_text() == markdown
    assert "`python -m tests.bench`" in markdown
    assert "| hot reload | ours: change → listener | 5.00 ms | 9.00 ms | 10.00 ms |" in markdown
    assert "| hot reload / etcd | 2.0 | 2.0 | 2.0 | 2.0 |" in markdown
    assert "absent" not in markdown
    assert "| throughput | SetConfig, 32 concurrent clients | 1,234.50 /s |" in markdown
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["command"] == "python -m tests.bench"
    assert document["machine"]["cores"]
    assert len(document["commit"]["sha"]) == 40
    listener = document["latencies"][0]
    assert listener["p50_ms"] == percentile(ours, 50) * 1000
    assert len(listener["samples_ms"]) == 100
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
