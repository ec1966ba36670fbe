"""Benchmarks: each module `benchmarks/<name>.py` has `run() -> dict[str, float | int | str]`.

`python -m benchmarks [--only NAME]` (or `make bench ONLY=NAME`) runs them, prints one table and
writes var/bench/<name>.json. Every figure stands beside a baseline measured in the same run.
"""
