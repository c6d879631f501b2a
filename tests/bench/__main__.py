"""`python -m tests.bench [name ...]`: run the benchmarks (all, or the named ones)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("names", nargs="*", help="benchmarks to run, e.g. config (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
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
    for name in chosen:
        module = importlib.import_module(f"tests.bench.bench_{name}")
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        module.main(args)
        print(f"== {name}: {time.perf_counter() - started:.1f} s ==\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
