"""Where the time goes: the per-phase splits quoted in docs/ (not a benchmark; `make bench` skips it).

    .venv/bin/python -m benchmarks._phases consume   # the bus benchmark's consume side, per event
    .venv/bin/python -m benchmarks._phases grants    # the members benchmark's grants, as a timeline

Each phase is a method wrapped with a timer for the run, so the totals run a little slower than in
`make bench`; the split, not the total, is the point.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOTALS: dict[str, list[float]] = {}  # phase -> [calls, seconds]
TIMELINE: list[tuple[float, float, str]] = []  # (start, end, phase)


def _timed(owner: Any, name: str, phase: str, *, timeline: bool = False) -> None:
    """Replace owner.name with a wrapper adding its time to TOTALS[phase] (and its start and end to
    TIMELINE). Works for plain functions, methods and coroutine methods; keeps staticmethods static."""
    raw = owner.__dict__.get(name) if isinstance(owner, type) else None
    static = isinstance(raw, staticmethod)
    fn: Callable[..., Any] = getattr(owner, name)

    def record(started: float) -> None:
        ended = time.perf_counter()
        entry = TOTALS.setdefault(phase, [0, 0.0])
        entry[0] += 1
        entry[1] += ended - started
        if timeline:
            TIMELINE.append((started, ended, phase))

    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                record(started)
    else:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                record(started)
    setattr(owner, name, staticmethod(wrapper) if static else wrapper)


async def _consume() -> None:
    from aiokafka import AIOKafkaConsumer

    from benchmarks import bus
    from datacoop.bus import ensure_topics
    from datacoop.bus.consumer import ConsumerRunner
    from datacoop.store import ProjectionStore
    from datacoop.testing.ledger import LedgerProjection
    from infra.local import start_broker

    broker = start_broker()
    try:
        envelopes = bus._envelopes(bus.EVENTS)
        await ensure_topics(broker.bootstrap, [("p.raw", bus.PARTITIONS), ("p.bus", bus.PARTITIONS), ("p.bus.dlq", 1)])
        await bus._raw_produce(broker.bootstrap, "p.raw", [bus.encode(e) for e in envelopes])
        await bus._bus_produce(broker.bootstrap, "p.bus", envelopes)
        _timed(AIOKafkaConsumer, "getmany", "fetch: aiokafka getmany")
        _timed(ConsumerRunner, "_decode", "decode: validate envelope + data")
        _timed(ConsumerRunner, "_commit", "commit: the whole transaction")
        _timed(ProjectionStore, "already_applied", "  commit: applied-id check")
        _timed(LedgerProjection, "apply", "  commit: projection rows")
        _timed(ProjectionStore, "mark_applied", "  commit: applied ids")
        for n in range(3):
            raw = await bus._raw_consume(broker.bootstrap, "p.raw", bus.EVENTS)
            TOTALS.clear()
            with tempfile.TemporaryDirectory() as tmp:
                ours = await bus._bus_consume(broker.bootstrap, "p.bus", bus.EVENTS, Path(tmp) / "p.duckdb")
            print(f"pass {n + 1}: raw {1e6 / raw:.1f} us an event, runner {1e6 / ours:.1f} us an event "
                  f"(ratio {ours / raw:.2f}, timers on)")
            for phase, (_, seconds) in TOTALS.items():
                print(f"    {phase:<36} {seconds * 1e6 / bus.EVENTS:6.2f} us an event")
    finally:
        broker.stop()


async def _grants() -> None:
    from benchmarks import members
    from datacoop import command
    from datacoop.bus import consumer, publisher
    from infra.local import start_broker
    from services.consent import domain, eip712, projection

    _timed(eip712, "digest", "eip712.digest")
    _timed(eip712, "recover", "eip712.recover")
    _timed(domain, "decide", "decide")
    _timed(command, "new_event_id", "new_event_id")
    _timed(command, "_envelope", "the envelope (event id made before)")
    _timed(projection, "evolve", "evolve (in the projection)")
    _timed(projection.MembersProjection, "apply", "the consent projection's apply")
    _timed(publisher, "encode", "Kafka encoding")
    _timed(publisher.Publisher, "_send", "publisher packs batches", timeline=True)
    _timed(publisher.Publisher, "_acked", "acks answered", timeline=True)
    _timed(consumer.ConsumerRunner, "_decode", "own consumer reads (what was not passed over)", timeline=True)
    _timed(command.Writer, "_commit", "group commit", timeline=True)
    _timed(consumer.ConsumerRunner, "pass_over", "reader passes over the writer's events")
    collecting: list[float] = []

    def gc_pause(phase: str, info: dict[str, Any]) -> None:  # the collector's pauses, on the timeline too
        if phase == "start" and TIMELINE:  # from the first batch on, not while the benchmark signs
            collecting.append(time.perf_counter())
        elif collecting:
            started = collecting.pop()
            TIMELINE.append((started, time.perf_counter(), f"GC pause (generation {info['generation']})"))

    broker = start_broker()
    gc.callbacks.append(gc_pause)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            registrations, signed = members._signed_grants()
            seconds = await members._grants_once(broker.bootstrap, Path(tmp) / "consent", 0, registrations, signed)
            verify_seconds = members._verify_once(signed)
    finally:
        gc.callbacks.remove(gc_pause)
        broker.stop()
    grants = sum(len(mine) for mine in signed)
    print(f"{grants} grants at {grants / seconds:,.0f}/s (timers on, one run); "
          f"verify only {grants / verify_seconds:,.0f}/s")
    print("per call (the verify-only baseline's calls included in digest and recover; apply is per batch):")
    on_timeline = {label for _, _, label in TIMELINE}
    for phase, (calls, seconds) in TOTALS.items():
        if phase not in on_timeline:
            print(f"    {phase:<28} {seconds * 1e6 / calls:6.1f} us x {int(calls)}")
    spans: list[list[Any]] = []  # [start, end, phase, count]: runs of one phase merged
    for start, end, phase in sorted(TIMELINE):
        if spans and spans[-1][2] == phase:
            spans[-1][1], spans[-1][3] = end, spans[-1][3] + 1
        else:
            spans.append([start, end, phase, 1])
    if spans:
        origin, previous_end = spans[0][0], spans[0][0]
        print("timeline (ms from the first batch packed; the registrations come first, then the two waves of grants):")
        for start, end, phase, count in spans:
            times = f" x{count}" if count > 1 else ""
            print(f"    {1000 * (start - origin):7.1f} -> {1000 * (end - origin):7.1f}  {phase}{times}"
                  f"  ({1000 * (end - start):.1f} ms; {1000 * (start - previous_end):.1f} ms before it)")
            previous_end = end


def main(argv: list[str]) -> int:
    runs = {"consume": _consume, "grants": _grants}
    if len(argv) != 1 or argv[0] not in runs:
        print(f"usage: python -m benchmarks._phases {{{'|'.join(runs)}}}", file=sys.stderr)
        return 2
    asyncio.run(runs[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
