"""How member events land in DuckDB, and the queries the API and the sweeper need.

One row per member holding the member's state as JSON (evolved by domain.evolve, the single
definition of what each event means) plus the columns queries filter on. The state is written with
orjson (dataclasses and UTC datetimes natively, under a third of pydantic's time: every command
rewrites its member's row; `python -m benchmarks._phases micro`) and read back through pydantic, which checks it.
The column is VARCHAR, not DuckDB's JSON type, which would parse every state again on write (the
upsert ~2.3 µs a row instead of ~3.6 in `_phases micro`; a database made with the JSON type still works,
with the slower write, until it is rebuilt).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import orjson
import pyarrow as pa
from pydantic import TypeAdapter

from datacoop.bus.consumer import Delivery
from datacoop.store import ProjectionStore
from services.consent.domain import Member, evolve

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS members (
    member VARCHAR PRIMARY KEY,
    state VARCHAR NOT NULL,  -- JSON text; VARCHAR, as DuckDB's JSON type parses every value written
    registered BOOLEAN NOT NULL,
    erased BOOLEAN NOT NULL,
    next_expiry TIMESTAMPTZ
);
"""

_MEMBER = TypeAdapter(Member)


def _next_expiry(member: Member) -> datetime | None:
    due = [c.expires_at for c in member.consents.values() if c.status == "active" and c.expires_at]
    return min(due) if due else None


class MembersProjection:
    """Member states in DuckDB, with a read-through cache that changes only when a transaction commits
    (commands read the member's state on every call; DuckDB's cost is per statement)."""

    CACHE_LIMIT = 200_000

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store
        self.conn = store.conn
        self._cache: dict[str, Member] = {}
        self._known: set[str] | None = None  # every member in the table, once warmed

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        addresses = list(dict.fromkeys(d.envelope.subject for d in deliveries))
        states = {a: self._cache[a] for a in addresses if a in self._cache}
        states.update(self._load(tx, [a for a in addresses if a not in states]))
        for d in deliveries:
            subject = d.envelope.subject
            states[subject] = evolve(states.get(subject) or Member(subject), d.event)
        rows = [states[a] for a in addresses]
        self.store.on_commit(lambda: self._remember(rows, known=True))
        _arrow_members = pa.table({  # DuckDB scans it by name
            "member": pa.array([m.address for m in rows], pa.string()),
            "state": pa.array([orjson.dumps(m) for m in rows], pa.string()),
            "registered": pa.array([m.registered for m in rows], pa.bool_()),
            "erased": pa.array([m.erased_at is not None for m in rows], pa.bool_()),
            "next_expiry": pa.array([_next_expiry(m) for m in rows], pa.timestamp("us", tz="UTC")),
        })
        # an update in place where the member exists (INSERT OR REPLACE deletes and re-inserts the row)
        tx.execute("""INSERT INTO members SELECT member, state, registered, erased, next_expiry FROM _arrow_members
                      ON CONFLICT (member) DO UPDATE SET state = excluded.state, registered = excluded.registered,
                        erased = excluded.erased, next_expiry = excluded.next_expiry""")

    @staticmethod
    def _load(conn: duckdb.DuckDBPyConnection, addresses: list[str]) -> dict[str, Member]:
        if not addresses:
            return {}
        rows = conn.execute("SELECT member, state FROM members WHERE member IN (SELECT unnest(?::VARCHAR[]))",
                            [addresses]).fetchall()
        return {m: _MEMBER.validate_json(s) for m, s in rows}

    def warm(self) -> None:
        """Learn which members exist, so asking for an unknown one needs no database read."""
        self._known = {r[0] for r in self.conn.execute("SELECT member FROM members").fetchall()}

    def _remember(self, members: list[Member], known: bool = False) -> None:
        if len(self._cache) + len(members) > self.CACHE_LIMIT:
            self._cache.clear()
        for m in members:
            self._cache[m.address] = m
            if known and self._known is not None:
                self._known.add(m.address)

    def get(self, address: str) -> Member:
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        if self._known is not None and address not in self._known:
            return Member(address)
        member = self._load(self.conn, [address]).get(address)
        if member is None:
            return Member(address)
        self._remember([member])
        return member

    def due_for_expiry(self, now: datetime, limit: int = 1000) -> list[str]:
        rows = self.conn.execute("SELECT member FROM members WHERE next_expiry <= ? ORDER BY next_expiry LIMIT ?",
                                 [now, limit]).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        row = self.conn.execute("SELECT count(*) FILTER (registered), count(*) FILTER (erased) FROM members").fetchone()
        assert row is not None
        return {"members": int(row[0]), "erased": int(row[1])}
