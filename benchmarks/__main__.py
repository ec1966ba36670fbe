"""Run the benchmarks, print one table, write var/bench/<name>.json."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import benchmarks

OUT_DIR = Path(__file__).resolve().parent.parent / "var" / "bench"


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated names; one of {', '.join(available())}")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(available())}", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, object]] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running benchmark {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        figures = module.run()
        meta = {"benchmark": name, "measured_at": datetime.now(UTC).isoformat(),
                "machine": platform.platform(), "python": platform.python_version(),
                "wall_s": round(time.perf_counter() - started, 2)}
        (OUT_DIR / f"{name}.json").write_text(json.dumps({**meta, "figures": figures}, indent=2) + "\n")
        rows += [(name, key, value) for key, value in figures.items()]
    width = max(len(k) for _, k, _ in rows) if rows else 10
    print(f"{'bench':<10} {'figure':<{width}} value")
    for name, key, value in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{name:<10} {key:<{width}} {shown}")
    print(f"\nwritten to {OUT_DIR}/<name>.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
