"""`python -m tests.bench [name ...]`: run the benchmarks (all, or the named ones), print
the table and write it (Markdown, JSON, PNG) to the results folder."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from tests.bench import results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("names", nargs="*", help="benchmarks to run, e.g. config (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.md, results.json and results.png (default: bench-results)",
    )
    args = parser.parse_args()
    folder = Path(__file__).parent
    available = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(folder)])
        if m.name.startswith("bench_")
    )
    chosen = args.names or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {available}")
    command = " ".join(["python -m tests.bench", *sys.argv[1:]])
    started_at = dt.datetime.now(dt.UTC)
    load_before = results.load()
    for name in chosen:
        module = importlib.import_module(f"tests.bench.bench_{name}")
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        module.main(args)
        print(f"== {name}: {time.perf_counter() - started:.1f} s ==\n", flush=True)
    if not results.RESULTS.empty():
        table = results.write(
            results.RESULTS,
            args.out,
            command=command,
            started=started_at,
            load_before=load_before,
        )
        print(table)
        print(f"written to {args.out}/results.md, results.json, results.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
