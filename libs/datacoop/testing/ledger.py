"""A ledger projection: every AmountRecorded event is a row, plus running totals per subject.

Small enough to reason about, strict enough to catch a lost or doubled event: the totals and the row
count of a clean pass must equal those of any crashed-and-resumed pass.
"""

from __future__ import annotations

import sys

import duckdb
import pyarrow as pa
from pydantic import Field

from datacoop.bus.consumer import Delivery
from datacoop.events.envelope import Envelope
from datacoop.events.registry import Event, EventRegistry, event

LEDGER_REGISTRY = EventRegistry()

LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS ledger (event_id VARCHAR, subject VARCHAR, seq BIGINT, amount_units BIGINT,
                                   partition INTEGER, "offset" BIGINT);
CREATE TABLE IF NOT EXISTS totals (subject VARCHAR PRIMARY KEY, total_units BIGINT, events BIGINT);
"""


@event("datacoop.test.amount_recorded", 1, topic="datacoop.test", registry=LEDGER_REGISTRY)
class AmountRecorded(Event):
    amount_units: int
    note: str = Field("", max_length=4096)


def make_envelope(subject: str, seq: int, amount_units: int, note: str = "") -> Envelope:
    return Envelope(source="datacoop/test", type=AmountRecorded.type_name(), subject=subject, seq=seq,
                    data={"amount_units": amount_units, "note": note})


class LedgerProjection:
    """Applies a batch with two set-based statements over one Arrow table (no per-row round trips)."""

    def __init__(self, fail_on_amount: int | None = None, progress: bool = False) -> None:
        self.fail_on_amount = fail_on_amount
        self.progress = progress
        self.applied = 0

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        amounts = []
        for d in deliveries:
            assert isinstance(d.event, AmountRecorded)
            if self.fail_on_amount is not None and d.event.amount_units == self.fail_on_amount:
                raise ValueError(f"refusing amount {d.event.amount_units} (a deliberate projection bug)")
            amounts.append(d.event.amount_units)
        _arrow_ledger = pa.table({  # DuckDB scans it by name
            "event_id": pa.array([d.envelope.id for d in deliveries], pa.string()),
            "subject": pa.array([d.envelope.subject for d in deliveries], pa.string()),
            "seq": pa.array([d.envelope.seq for d in deliveries], pa.int64()),
            "amount_units": pa.array(amounts, pa.int64()),
            "partition": pa.array([d.partition for d in deliveries], pa.int32()),
            "offset": pa.array([d.offset for d in deliveries], pa.int64()),
        })
        tx.execute('INSERT INTO ledger SELECT event_id, subject, seq, amount_units, partition, "offset" '
                   "FROM _arrow_ledger")
        tx.execute(
            """INSERT INTO totals SELECT subject, sum(amount_units), count(*) FROM _arrow_ledger GROUP BY subject
               ON CONFLICT (subject) DO UPDATE SET total_units = totals.total_units + excluded.total_units,
                                                  events = totals.events + excluded.events""")
        self.applied += len(deliveries)
        if self.progress:
            print(f"applied {self.applied}", flush=True)


def snapshot(conn: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """What must be equal between two passes over the same log."""
    return {
        "rows": conn.execute("SELECT count(*), count(DISTINCT event_id) FROM ledger").fetchone(),
        "ledger": conn.execute("SELECT event_id, subject, seq, amount_units FROM ledger ORDER BY event_id").fetchall(),
        "totals": conn.execute("SELECT * FROM totals ORDER BY subject").fetchall(),
    }


if __name__ == "__main__":  # pragma: no cover - used by the crash test as a child process
    import asyncio

    from datacoop.bus import ConsumerRunner, Publisher
    from datacoop.store import ProjectionStore

    async def _main(bootstrap: str, topic: str, db_path: str, name: str) -> None:
        store = ProjectionStore(db_path, LEDGER_SQL)
        async with Publisher(bootstrap) as pub:
            runner = ConsumerRunner(bootstrap=bootstrap, store=store, projection=LedgerProjection(progress=True),
                                    topics=[topic], consumer_name=name, dlq_publisher=pub,
                                    registry=LEDGER_REGISTRY, max_records=500)
            await runner.start()
            while True:
                await runner.poll_once()
                if runner.caught_up.is_set():
                    print("caught-up", flush=True)
                    break
            await runner.stop()
        store.close()

    asyncio.run(_main(*sys.argv[1:5]))
