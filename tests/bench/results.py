"""What one `make bench` run measured, written as a table (Markdown and JSON) and a plot.

Benchmarks add to :data:`RESULTS` as they go (latency samples, single figures, ours /
etcd ratios); ``python -m tests.bench`` writes it to the results folder at the end:

* ``results.md``: the machine, the commit, the command and the load, then the tables;
* ``results.json``: the same, with every latency sample in milliseconds;
* ``results.png``: latency distributions (ours vs etcd vs the gRPC floor) and the
  fan-out by watcher count.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servicekit.devstack import REPO_ROOT
from tests.bench.common import percentile


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Latency:
    """A latency distribution (seconds)."""

    section: str
    measure: str
    samples: list[float]

    def stats(self) -> dict[str, float]:
        s = self.samples
        return {
            "p50_ms": _ms(percentile(s, 50)),
            "p90_ms": _ms(percentile(s, 90)),
            "p99_ms": _ms(percentile(s, 99)),
            "max_ms": _ms(max(s)),
            "n": len(s),
        }


@dataclass
class Figure:
    """One figure that is not a latency: a rate, CPU time, memory."""

    section: str
    measure: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Results:
    latencies: dict[str, Latency] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (side, watcher count) -> key in ``latencies`` of the last watcher's delays
    fanout: dict[tuple[str, int], str] = field(default_factory=dict)

    def latency(self, section: str, measure: str, samples: list[float]) -> Latency:
        """Records (and prints) a latency distribution."""
        entry = Latency(section, measure, list(samples))
        self.latencies[measure] = entry
        st = entry.stats()
        print(
            f"{measure}: p50 {st['p50_ms']:.2f} ms, p90 {st['p90_ms']:.2f} ms, "
            f"p99 {st['p99_ms']:.2f} ms, max {st['max_ms']:.2f} ms (n={st['n']})",
            flush=True,
        )
        return entry

    def figure(self, section: str, measure: str, value: float, unit: str, note: str = "") -> None:
        """Records (and prints) a single figure."""
        self.figures.append(Figure(section, measure, value, unit, note))
        print(f"{measure}: {value:,.2f} {unit}{f' ({note})' if note else ''}", flush=True)

    def ratio(self, measure: str, ours: str, theirs: str) -> None:
        """Records ours / theirs at p50, p90, p99 and max (names of latencies)."""
        if ours not in self.latencies or theirs not in self.latencies:
            return
        a, b = self.latencies[ours].stats(), self.latencies[theirs].stats()
        row: dict[str, Any] = {"measure": measure, "ours": ours, "theirs": theirs}
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
            row[key.removesuffix("_ms")] = round(a[key] / b[key], 2) if b[key] else None
        self.ratios.append(row)
        print(f"{measure}: ours/theirs p50 {row['p50']}, p99 {row['p99']}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def empty(self) -> bool:
        return not (self.latencies or self.figures)


RESULTS = Results()


def _run(*command: str) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except OSError:
        pass
    import grpc

    etcd = shutil.which("etcd")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "etcd": _run(etcd, "--version").splitlines()[0].replace("Version: ", "") if etcd else "",
    }


def commit() -> dict[str, Any]:
    return {
        "sha": _run("git", "rev-parse", "HEAD"),
        "subject": _run("git", "log", "-1", "--format=%s")[:120],
        "dirty": bool(_run("git", "status", "--porcelain", "--untracked-files=no")),
    }


def load() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def write(
    results: Results, folder: Path, *, command: str, started: dt.datetime, load_before: list[float]
) -> str:
    """Writes results.md, results.json and results.png to ``folder``; returns the
    Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "commit": commit(),
        "load_before": load_before,
        "load_after": load(),
    }
    markdown = _markdown(results, meta)
    (folder / "results.md").write_text(markdown)
    document = {
        **meta,
        "latencies": [
            {
                "section": e.section,
                "measure": e.measure,
                **e.stats(),
                "samples_ms": [_ms(x) for x in e.samples],
            }
            for e in results.latencies.values()
        ],
        "figures": [vars(f) for f in results.figures],
        "ratios": results.ratios,
        "notes": results.notes,
    }
    (folder / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    try:
        _plot(results, folder / "results.png", meta)
    except ImportError as exc:  # the plot is a bonus; the table is the result
        print(f"no plot: {exc}", flush=True)
    return markdown


def _markdown(results: Results, meta: dict[str, Any]) -> str:
    m, c = meta["machine"], meta["commit"]
    lines = [
        f"Measured {meta['date']} with `{meta['command']}` on {m['cores']} cores "
        f"({m['cpu']}), {m['memory_mib']:,} MiB, Linux {m['kernel']}, Python {m['python']}, "
        f"grpcio {m['grpcio']}{', ' + m['etcd'] if m['etcd'] else ''}; commit "
        f"`{c['sha'][:12]}`{' (with local changes)' if c['dirty'] else ''}; load average "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_before'])} before, "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_after'])} after.",
        "",
        "| section | measure | p50 | p90 | p99 | max | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in results.latencies.values():
        s = e.stats()
        lines.append(
            f"| {e.section} | {e.measure} | {s['p50_ms']:.2f} ms | {s['p90_ms']:.2f} ms | "
            f"{s['p99_ms']:.2f} ms | {s['max_ms']:.2f} ms | {s['n']} |"
        )
    if results.ratios:
        lines += ["", "| ratio | p50 | p90 | p99 | max |", "|---|---|---|---|---|"]
        for r in results.ratios:
            lines.append(f"| {r['measure']} | {r['p50']} | {r['p90']} | {r['p99']} | {r['max']} |")
    if results.figures:
        lines += ["", "| section | measure | figure |", "|---|---|---|"]
        for f in results.figures:
            note = f" ({f.note})" if f.note else ""
            lines.append(f"| {f.section} | {f.measure} | {f.value:,.2f} {f.unit}{note} |")
    if results.notes:
        lines += [""] + [f"- {n}" for n in results.notes]
    return "\n".join(lines) + "\n"


def _plot(results: Results, path: Path, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    shown = [e for e in results.latencies.values() if e.section == "hot reload"]
    shown += [e for e in results.latencies.values() if e.section == "floor"]
    # One colour family per side, as in the fan-out panel: ours red, etcd blue, the
    # floor grey; line styles tell the curves of one family apart.
    families = {"ours": "tab:red", "etcd": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    used: dict[str, int] = {}
    for entry in shown:
        values = sorted(_ms(x) for x in entry.samples)
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        side = next((k for k in families if entry.measure.lower().startswith(k)), "")
        if not side and "etcd" in entry.measure:
            side = "etcd"
        family = side or "floor"
        index = used.get(family, 0)
        used[family] = index + 1
        left.plot(
            values,
            fractions,
            label=entry.measure,
            linewidth=1.4,
            color=families.get(side, "dimgray"),
            linestyle=styles[index % len(styles)],
        )
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of changes / calls")
    left.set_title("Latency distributions (CDF)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")

    sides = sorted({side for side, _ in results.fanout})
    counts = sorted({count for _, count in results.fanout})
    width = 0.8 / max(1, len(sides))
    colours = {"ours": "tab:red", "etcd": "tab:blue"}
    for i, side in enumerate(sides):
        positions = [k + i * width - 0.4 + width / 2 for k in range(len(counts))]
        for pct, share, alpha in ((99, 0.9, 0.35), (50, 0.55, 0.9)):
            heights = []
            for count in counts:
                key = results.fanout.get((side, count))
                samples = results.latencies[key].samples if key else []
                heights.append(_ms(percentile(samples, pct)) if samples else 0.0)
            right.bar(
                positions,
                heights,
                width * share,
                label=f"{side} p{pct}",
                color=colours.get(side),
                alpha=alpha,
            )
    right.set_xticks(range(len(counts)), [f"{c:,} watchers" for c in counts])
    right.set_ylabel("write → last watcher has it (ms)")
    right.set_title("Fan-out")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=8)
    figure.suptitle(
        f"{meta['command']} · {meta['date']} · {meta['machine']['cores']} cores · "
        f"commit {meta['commit']['sha'][:12]}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
