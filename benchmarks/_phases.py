"""Where the time goes: the per-phase splits quoted in docs/ (not a benchmark; `make bench` skips it).

    .venv/bin/python -m benchmarks._phases consume   # the bus benchmark's consume side, per event
    .venv/bin/python -m benchmarks._phases grants    # the members benchmark's grants, as a timeline
    .venv/bin/python -m benchmarks._phases micro     # the single costs quoted in docs/, each with timeit
    .venv/bin/python -m benchmarks._phases rest      # the grants path without its signature check

Each phase is a method wrapped with a timer for the run, so the totals run a little slower than in
`make bench`; the split, not the total, is the point.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
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


class _Cpu:
    """CPU seconds spent in a block by this process (all its threads) and by another (the broker), from
    /proc: how busy each side keeps its core, beside the wall time the figures give."""

    def __init__(self, other_pid: int) -> None:
        self.other_pid = other_pid
        self.ours = self.other = 0.0

    def _other_s(self) -> float:
        with open(f"/proc/{self.other_pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def __enter__(self) -> _Cpu:
        self.ours, self.other = -time.process_time(), -self._other_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ours += time.process_time()
        self.other += self._other_s()

    def per_event(self, events: int) -> str:
        return f"{self.ours * 1e6 / events:.1f} / {self.other * 1e6 / events:.1f} us"


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
        for owner, name, phase in [
                (AIOKafkaConsumer, "getmany", "fetch: aiokafka getmany"),
                (ConsumerRunner, "_decode", "decode: validate envelope + data"),
                (ConsumerRunner, "_commit", "commit: the whole transaction"),
                (ProjectionStore, "already_applied", "  commit: applied-id check"),
                (LedgerProjection, "apply", "  commit: projection rows"),
                (ProjectionStore, "mark_applied", "  commit: applied ids")]:
            _timed(owner, name, phase)
        for n in range(3):
            with _Cpu(broker.pid) as raw_cpu:
                raw = await bus._raw_consume(broker.bootstrap, "p.raw", bus.EVENTS)
            TOTALS.clear()
            with tempfile.TemporaryDirectory() as tmp, _Cpu(broker.pid) as ours_cpu:
                ours = await bus._bus_consume(broker.bootstrap, "p.bus", bus.EVENTS, Path(tmp) / "p.duckdb")
            print(f"pass {n + 1}: raw {1e6 / raw:.1f} us an event, runner {1e6 / ours:.1f} us an event "
                  f"(ratio {ours / raw:.2f}, timers on)")
            print(f"    CPU an event, this process / the broker: raw {raw_cpu.per_event(bus.EVENTS)}, "
                  f"runner {ours_cpu.per_event(bus.EVENTS)}")
            for phase, (_, seconds) in TOTALS.items():
                print(f"    {phase:<36} {seconds * 1e6 / bus.EVENTS:6.2f} us an event")
        # The runner's own floor: the same loop with every record counted as applied, not decoded or
        # written (no event is parsed at all), beside raw passes in the same run.
        decode, apply = ConsumerRunner._decode, ConsumerRunner._apply

        def nothing_decoded(self: ConsumerRunner, records: list[Any]) -> list[Any]:
            return records

        async def counted(self: ConsumerRunner, fetched: list[Any]) -> int:
            self.applied_count += len(fetched)
            return len(fetched)

        ConsumerRunner._decode, ConsumerRunner._apply = nothing_decoded, counted  # type: ignore[method-assign]
        try:
            for n in range(3):
                raw = await bus._raw_consume(broker.bootstrap, "p.raw", bus.EVENTS)
                with tempfile.TemporaryDirectory() as tmp:
                    ours = await bus._bus_consume(broker.bootstrap, "p.bus", bus.EVENTS, Path(tmp) / "p.duckdb",
                                                  check_rows=False)
                print(f"floor {n + 1}: raw {1e6 / raw:.1f} us an event, the runner's loop with nothing decoded or "
                      f"applied {1e6 / ours:.1f} us an event")
        finally:
            ConsumerRunner._decode, ConsumerRunner._apply = decode, apply  # type: ignore[method-assign]
    finally:
        broker.stop()


async def _grants() -> None:
    from benchmarks import members
    from datacoop import command
    from datacoop.bus import consumer, publisher
    from infra.local import start_broker
    from services.consent import domain, eip712, projection

    for owner, name, phase in [
            (eip712, "digest", "eip712.digest"),
            (eip712, "recover", "eip712.recover"),
            (domain, "decide", "decide"),
            (command, "new_event_id", "new_event_id"),
            (command, "_envelope", "the envelope (event id made before)"),
            (projection, "evolve", "evolve (in the projection)"),
            (projection.MembersProjection, "apply", "the consent projection's apply"),
            (publisher, "encode", "Kafka encoding"),
            (consumer.ConsumerRunner, "pass_over", "reader passes over the writer's events")]:
        _timed(owner, name, phase)
    for owner, name, phase in [  # also on the timeline
            (publisher.Publisher, "_send", "publisher packs batches"),
            (publisher.Publisher, "_acked", "acks answered"),
            (consumer.ConsumerRunner, "_decode", "own consumer reads (what was not passed over)"),
            (command.Writer, "_commit", "group commit")]:
        _timed(owner, name, phase, timeline=True)
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


async def _micro() -> None:
    """The parts quoted in docs/ on their own, each the best of five `timeit` repeats (warm caches, so
    lower than inside a run): what one event's JSON costs, DuckDB's cost per statement and per upserted
    member row, the consent state's JSON, and where a signature check's time goes."""
    import json
    import timeit
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace
    from datetime import UTC, datetime

    import coincurve
    import duckdb
    import orjson
    import pyarrow as pa
    from eth_account import Account
    from eth_utils import to_checksum_address
    from pydantic import TypeAdapter, create_model
    from sha3 import keccak_256

    from benchmarks import bus, members
    from datacoop.events.codec import decode, encode
    from datacoop.events.types import to_checksum
    from datacoop.testing.ledger import LEDGER_REGISTRY
    from services.consent import domain, eip712, projection

    def best_us(fn: Callable[[], object], number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6

    value = encode(bus._envelopes(1)[0]).value
    typed = LEDGER_REGISTRY.typed_envelope(decode(value).type)
    assert typed is not None
    print(f"one {len(value)}-byte bus-benchmark envelope:")
    print(f"    json.loads                               {best_us(lambda: json.loads(value), 20_000):6.2f} us")
    print(f"    orjson.loads (no validation at all)      {best_us(lambda: orjson.loads(value), 20_000):6.2f} us")
    one_pass = best_us(lambda: typed.model_validate_json(value), 20_000)
    print(f"    envelope + data in one pass (typed)      {one_pass:6.2f} us")

    def two_steps() -> object:
        envelope = decode(value)
        return LEDGER_REGISTRY.decode(envelope.type, envelope.data)

    print(f"    envelope, then its data (two steps)      {best_us(two_steps, 20_000):6.2f} us")
    plain = create_model("PlainEnvelope", **{name: (field.annotation, ...) for name, field in typed.model_fields.items()
                                             if name != "data"}, data=(dict[str, Any], ...))
    plain_us = best_us(lambda: plain.model_validate_json(value), 20_000)
    print(f"    a plain model of its fields' types       {plain_us:6.2f} us")
    batch = [encode(e).value for e in bus._envelopes(2_000)]
    as_list = TypeAdapter(list[typed])  # type: ignore[valid-type]
    array = b"[" + b",".join(batch) + b"]"
    print(f"    one of {len(batch):,} validated as one JSON array   "
          f"{best_us(lambda: as_list.validate_json(array), 5) / len(batch):6.2f} us")

    folder = tempfile.TemporaryDirectory()
    conn = duckdb.connect(str(Path(folder.name) / "micro.duckdb"))  # on disk, as a service's projection is
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b INTEGER); INSERT INTO t VALUES (1, 1)")
    print("DuckDB, one statement:")
    print(f"    SELECT 1                                 {best_us(lambda: conn.execute('SELECT 1'), 200):6.0f} us")
    print(f"    UPDATE of one row by its key             "
          f"{best_us(lambda: conn.execute('UPDATE t SET b = b + 1 WHERE a = 1'), 200):6.0f} us")

    now = datetime.now(UTC)
    member = domain.Member("0x" + "ab" * 20, registered=True, registered_at=now, last_nonce=2)
    for nonce in (1, 2):
        consent = domain.Consent(f"c-{nonce}", "health-research", ("fitness", "health"), now, None, 1,
                                 "0x" + "cd" * 65, nonce, history=(domain.HistoryEntry("active", now, "granted"),))
        member = replace(member, consents={**member.consents, consent.consent_id: consent})
    print("a member with two consents, as the consent projection writes it:")
    with_pydantic = best_us(lambda: projection._MEMBER.dump_json(member), 20_000)
    print(f"    state JSON with pydantic (before)        {with_pydantic:6.2f} us")
    print(f"    state JSON with orjson (now)             {best_us(lambda: orjson.dumps(member), 20_000):6.2f} us")
    conn.execute(projection.SCHEMA_SQL)
    rows = 2_000
    state = orjson.dumps(member).decode()
    conn.register("_micro_members", pa.table({
        "member": [f"0x{i:040x}" for i in range(rows)], "state": [state] * rows, "registered": [True] * rows,
        "erased": [False] * rows, "next_expiry": pa.array([None] * rows, pa.timestamp("us", tz="UTC"))}))
    conn.execute("INSERT INTO members SELECT * FROM _micro_members")
    # the same table with the state in DuckDB's JSON type, as it was before: each value is parsed on write
    conn.execute(projection.SCHEMA_SQL.replace("members", "members_json").replace("state VARCHAR", "state JSON"))
    conn.execute("INSERT INTO members_json SELECT * FROM _micro_members")
    replace_sql = "INSERT OR REPLACE INTO members SELECT * FROM _micro_members"
    upsert_sql = ("INSERT INTO members SELECT * FROM _micro_members ON CONFLICT (member) DO UPDATE SET "
                  "state = excluded.state, registered = excluded.registered, erased = excluded.erased, "
                  "next_expiry = excluded.next_expiry")
    for label, sql in [("INSERT OR REPLACE (before)", replace_sql),
                       ("ON CONFLICT, JSON (before)", upsert_sql.replace("INTO members ", "INTO members_json ")),
                       ("ON CONFLICT, VARCHAR (now)", upsert_sql)]:
        per_row = best_us(lambda sql=sql: conn.execute(sql), 1) / rows  # type: ignore[misc]
        print(f"    {rows:,} existing rows, {label:<27} {per_row:6.2f} us a row")

    flat = []
    for _ in range(2_000):
        account = Account.create()
        signed = {"member": account.address, "consentId": "c-1", "purpose": "health-research",
                  "categories": ["health", "fitness"], "expiresAt": 0, "nonce": 1}
        flat.append({**signed, "signature": members._sign(account, "GrantConsent", signed)})
    grant = flat[0]
    message = {k: v for k, v in grant.items() if k != "signature"}
    digest = eip712.digest(members.DOMAIN, "GrantConsent", message)
    sig = bytes.fromhex(grant["signature"][2:])
    rs = sig[:64] + bytes([sig[64] - 27])
    address = flat[0]["member"].lower()
    def per_digit(hex_address: str) -> str:  # the loop over the digits to_checksum replaced
        lower = hex_address.lower().removeprefix("0x")
        digest_hex = keccak_256(lower.encode()).hexdigest()
        return "0x" + "".join(c.upper() if int(digest_hex[i], 16) >= 8 else c for i, c in enumerate(lower))

    assert per_digit(address) == to_checksum(address)
    print("EIP-55 checksum of an address (one per signature check):")
    print(f"    a loop over the digits (before)          {best_us(lambda: per_digit(address), 20_000):6.2f} us")
    print(f"    datacoop.events.types.to_checksum (now)  {best_us(lambda: to_checksum(address), 20_000):6.2f} us")
    print(f"    eth_utils.to_checksum_address            "
          f"{best_us(lambda: to_checksum_address(address), 20_000):6.2f} us")
    print("one grant's signature check:")
    print(f"    digest + recover (the baseline's unit)   {best_us(lambda: members._signer(grant), 1_000):6.1f} us")
    print(f"    of which coincurve's C call (GIL freed)  "
          f"{best_us(lambda: coincurve.PublicKey.from_signature_and_message(rs, digest, hasher=None), 1_000):6.1f} us")
    started = time.perf_counter()
    for g in flat:
        members._signer(g)
    alone = len(flat) / (time.perf_counter() - started)
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(lambda part: [members._signer(g) for g in part], [flat[::2], flat[1::2]]))
        threads = len(flat) / (time.perf_counter() - started)
    print(f"    {len(flat):,} checks in one thread / in two threads   {alone:,.0f} / {threads:,.0f} a second")
    conn.close()
    folder.cleanup()


async def _rest() -> None:
    """The members benchmark's grants three ways in one run, best of five each: the whole path, the path
    with the signature check replaced by a lookup of the signer (what the rest costs), and that with the
    member rows' DuckDB write skipped too (evolve and the cache kept: what a free projection write would
    leave); beside them the check alone, in the same process."""
    from benchmarks import members
    from infra.local import start_broker
    from services.consent import projection

    def without_write(self: projection.MembersProjection, tx: Any, deliveries: list[Any]) -> None:
        states: dict[str, Any] = {}
        for d in deliveries:
            subject = d.envelope.subject
            states[subject] = projection.evolve(states.get(subject) or self.get(subject), d.event)
        rows = list(states.values())
        self.store.on_commit(lambda: self._remember(rows, known=True))

    broker = start_broker()
    checks, apply = members._signer, projection.MembersProjection.apply
    try:
        registrations, signed = members._signed_grants()
        count = sum(len(mine) for mine in signed)
        signers = {g["signature"]: checks(g) for mine in signed for g in mine}

        def looked_up(grant: dict[str, Any]) -> str:
            return signers[grant["signature"]]

        best: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n, (label, signer, write) in enumerate([
                    ("the whole path (the benchmark's grants)", checks, apply),
                    ("the path without the signature check", looked_up, apply),
                    ("  and without the member rows' DuckDB write", looked_up, without_write)]):
                members._signer = signer
                projection.MembersProjection.apply = write  # type: ignore[method-assign]
                times = []
                for run in range(5):
                    seconds = await members._grants_once(broker.bootstrap, Path(tmp), 10 * n + run,  # own topics
                                                         registrations, signed)
                    times.append(seconds * 1e6 / count)
                best[label] = min(times)
                print(f"{label:<45} {min(times):6.1f} us a grant (best of 5; runs "
                      f"{', '.join(f'{t:.0f}' for t in times)})")
            members._signer, projection.MembersProjection.apply = checks, apply  # type: ignore[method-assign]
            alone = min(members._verify_once(signed) for _ in range(5)) * 1e6 / count
            print(f"{'the signature check alone (verify-only)':<45} {alone:6.1f} us a grant (best of 5)")
        whole, rest, no_write = best.values()
        print(f"the check inside the path (whole - rest)      {whole - rest:6.1f} us a grant")
        print(f"ratio: whole path {alone / whole:.3f}; if the check cost inside what it costs alone, "
              f"{alone / (alone + rest):.3f}, and with no member-row write too, {alone / (alone + no_write):.3f}")
    finally:
        members._signer, projection.MembersProjection.apply = checks, apply  # type: ignore[method-assign]
        broker.stop()


def main(argv: list[str]) -> int:
    runs = {"consume": _consume, "grants": _grants, "micro": _micro, "rest": _rest}
    if len(argv) != 1 or argv[0] not in runs:
        print(f"usage: python -m benchmarks._phases {{{'|'.join(runs)}}}", file=sys.stderr)
        return 2
    asyncio.run(runs[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
