"""Benchmarks: `make bench` runs every `bench_*.py` module here and prints its figures.

Each module has `main(args) -> None` (sync; it may run its own event loop) and prints
what it measured. Benchmarks bring up what they need (servers, fake APIs) on loopback,
are bounded in time and stop by themselves. Nothing here asserts timings.
"""
