"""How member and record events land in the vault's DuckDB projection, and the queries the API needs.

A cache of the log: delete the file and the vault rebuilds it from the members and records topics.
Ciphertexts are kept here so the decrypt API needs no broker round-trip; they are useless without the
key store. On KeysShredded a member's ciphertext rows are dropped (they can never be opened again),
and a replay that meets RecordsContributed of an already shredded member stores nothing.

An upload is all or nothing: its records are read (decrypted, listed, counted, matched as a repeat)
only once every one of its chunk events is here. Until then they wait in `pending_records` (a batch
boundary of a replay can split an upload; the writer applies a whole upload at once). A publish that
failed part-way leaves the chunks that landed in the log: they wait there for good, never served, and
the member's retry of the same file is a new upload.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from datacoop.bus.consumer import Delivery
from datacoop.events.members import ErasureRequested, MemberRegistered
from datacoop.events.records import KeysShredded, RecordsContributed
from services.vault.domain import VaultMember, evolve

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS members (
    member VARCHAR PRIMARY KEY, registered BOOLEAN NOT NULL, erased BOOLEAN NOT NULL,
    erasure_event_id VARCHAR, shredded BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id VARCHAR NOT NULL, chunk INTEGER NOT NULL, chunks INTEGER NOT NULL, member VARCHAR NOT NULL,
    category VARCHAR NOT NULL, upload_tag VARCHAR NOT NULL, schema_version INTEGER NOT NULL,
    records INTEGER NOT NULL, contributed_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (upload_id, chunk));
CREATE TABLE IF NOT EXISTS records (
    record_id VARCHAR NOT NULL, member VARCHAR NOT NULL, category VARCHAR NOT NULL,
    upload_id VARCHAR NOT NULL, schema_version INTEGER NOT NULL, nonce VARCHAR NOT NULL,
    ciphertext VARCHAR NOT NULL);
-- records of an upload not all of whose chunk events are here yet; moved to records once they are
CREATE TABLE IF NOT EXISTS pending_records (
    record_id VARCHAR NOT NULL, member VARCHAR NOT NULL, category VARCHAR NOT NULL,
    upload_id VARCHAR NOT NULL, schema_version INTEGER NOT NULL, nonce VARCHAR NOT NULL,
    ciphertext VARCHAR NOT NULL);
"""

_MEMBER_EVENTS = (MemberRegistered, ErasureRequested, KeysShredded)
# uploads all of whose chunk events are projected (a chunk's row is unique per (upload_id, chunk))
_WHOLE = "count(*) = any_value(chunks)"  # grouped by upload: every chunk's row is here
_COMPLETE = f"SELECT upload_id FROM uploads GROUP BY upload_id HAVING {_WHOLE}"
_RECORD_COLUMNS = "record_id, member, category, upload_id, schema_version, nonce, ciphertext"


class VaultProjection:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        touched = list(dict.fromkeys(d.envelope.subject for d in deliveries if isinstance(d.event, _MEMBER_EVENTS)))
        contributors = {d.event.member for d in deliveries if isinstance(d.event, RecordsContributed)}
        states = self._load(tx, [*touched, *(contributors - set(touched))])  # one query, not one a chunk
        shredded_now: list[str] = []
        chunks: list[RecordsContributed] = []
        for d in deliveries:
            ev = d.event
            if isinstance(ev, RecordsContributed):
                state = states.get(ev.member)
                if state is not None and state.shredded:
                    continue
                chunks.append(ev)
            elif isinstance(ev, _MEMBER_EVENTS):
                subject = d.envelope.subject
                states[subject] = evolve(states.get(subject) or VaultMember(subject), ev, d.envelope.id)
                if isinstance(ev, KeysShredded):
                    shredded_now.append(subject)
        if touched:
            rows = [states[a] for a in touched]
            tx.execute(
                """INSERT OR REPLACE INTO members SELECT unnest(?::VARCHAR[]), unnest(?::BOOLEAN[]),
                   unnest(?::BOOLEAN[]), unnest(?::VARCHAR[]), unnest(?::BOOLEAN[])""",
                [[m.address for m in rows], [m.registered for m in rows], [m.erased for m in rows],
                 [m.erasure_event_id for m in rows], [m.shredded for m in rows]])
        if chunks:
            self._insert_chunks(tx, chunks)
        if shredded_now:
            for table in ("records", "pending_records"):
                tx.execute(f"DELETE FROM {table} WHERE member IN (SELECT unnest(?::VARCHAR[]))", [shredded_now])

    @staticmethod
    def _insert_chunks(tx: duckdb.DuckDBPyConnection, chunks: list[RecordsContributed]) -> None:
        """One Arrow table per batch: thousands of ciphertexts cost one INSERT, not one per chunk."""
        # one statement for the batch's chunks: executemany runs one INSERT per chunk (~20 an upload)
        tx.execute("""INSERT OR IGNORE INTO uploads SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]),
                      unnest(?::INTEGER[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),
                      unnest(?::INTEGER[]), unnest(?::INTEGER[]), unnest(?::TIMESTAMPTZ[])""",
                   [[ev.upload_id for ev in chunks], [ev.chunk for ev in chunks], [ev.chunks for ev in chunks],
                    [ev.member for ev in chunks], [ev.category for ev in chunks], [ev.upload_tag for ev in chunks],
                    [ev.schema_version for ev in chunks], [len(ev.records) for ev in chunks],
                    [ev.contributed_at for ev in chunks]])
        by_upload: dict[str, list[RecordsContributed]] = {}
        for ev in chunks:
            by_upload.setdefault(ev.upload_id, []).append(ev)
        complete = {r[0] for r in tx.execute(
            f"""SELECT upload_id FROM uploads WHERE upload_id IN (SELECT unnest(?::VARCHAR[]))
               GROUP BY upload_id HAVING {_WHOLE}""", [list(by_upload)]).fetchall()}
        for upload_id, upload in by_upload.items():
            first = upload[0]
            incoming = pa.table({field: pa.array([r[field] for ev in upload for r in ev.records], pa.string())
                                 for field in ("record_id", "nonce", "ciphertext")})
            tx.register("_incoming_records", incoming)
            try:
                tx.execute(f"""INSERT INTO {'records' if upload_id in complete else 'pending_records'}
                               SELECT record_id, ?, ?, ?, ?, nonce, ciphertext FROM _incoming_records""",
                           [first.member, first.category, upload_id, first.schema_version])
            finally:
                tx.unregister("_incoming_records")
            if upload_id in complete and len(upload) < first.chunks:  # its earlier chunks came in earlier batches
                tx.execute(f"INSERT INTO records SELECT {_RECORD_COLUMNS} FROM pending_records WHERE upload_id = ?",
                           [upload_id])
                tx.execute("DELETE FROM pending_records WHERE upload_id = ?", [upload_id])

    @staticmethod
    def _load(conn: duckdb.DuckDBPyConnection, addresses: list[str]) -> dict[str, VaultMember]:
        if not addresses:
            return {}
        rows = conn.execute("""SELECT member, registered, erased, erasure_event_id, shredded FROM members
                               WHERE member IN (SELECT unnest(?::VARCHAR[]))""", [addresses]).fetchall()
        return {r[0]: VaultMember(r[0], bool(r[1]), bool(r[2]), r[3], bool(r[4])) for r in rows}

    # -- queries --------------------------------------------------------------------------------
    def get(self, address: str) -> VaultMember:
        return self._load(self.conn, [address]).get(address) or VaultMember(address)

    def members(self, addresses: list[str]) -> dict[str, VaultMember]:
        found = self._load(self.conn, addresses)
        return {a: found.get(a) or VaultMember(a) for a in addresses}

    def tag_seen(self, member: str, upload_tag: str) -> str | None:
        row = self.conn.execute(f"""SELECT upload_id FROM uploads WHERE member = ? AND upload_tag = ?
                                   GROUP BY upload_id HAVING {_WHOLE} LIMIT 1""",
                                [member, upload_tag]).fetchone()
        return str(row[0]) if row else None

    def shredded_members(self) -> list[str]:
        rows = self.conn.execute("SELECT member FROM members WHERE shredded").fetchall()
        return [r[0] for r in rows]

    def erased_unshredded(self, limit: int = 1000) -> list[str]:
        rows = self.conn.execute("SELECT member FROM members WHERE erased AND NOT shredded LIMIT ?",
                                 [limit]).fetchall()
        return [r[0] for r in rows]

    def select(self, *, category: str | None, members: list[str] | None, record_ids: list[str] | None,
               after: str, limit: int) -> list[tuple[Any, ...]]:
        """(record_id, member, category, upload_id, schema_version, nonce, ciphertext) in record_id order."""
        where, params = ["record_id > ?"], list[Any]([after])
        if category:
            where.append("category = ?")
            params.append(category)
        if members is not None:
            where.append("member IN (SELECT unnest(?::VARCHAR[]))")
            params.append(members)
        if record_ids is not None:
            where.append("record_id IN (SELECT unnest(?::VARCHAR[]))")
            params.append(record_ids)
        params.append(limit)
        return self.conn.execute(
            f"""SELECT record_id, member, category, upload_id, schema_version, nonce, ciphertext FROM records
                WHERE {' AND '.join(where)} ORDER BY record_id LIMIT ?""", params).fetchall()

    def summary(self, member: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"""SELECT upload_id, category, schema_version, sum(records), min(contributed_at) FROM uploads
               WHERE member = ? GROUP BY ALL HAVING {_WHOLE} ORDER BY 5""", [member]).fetchall()
        return [{"upload_id": r[0], "category": r[1], "schema_version": r[2], "records": int(r[3]),
                 "contributed_at": r[4]} for r in rows]

    def counts(self) -> dict[str, int]:
        row = self.conn.execute(f"""SELECT (SELECT count(*) FROM records),
                                           (SELECT count(*) FROM members WHERE shredded),
                                           (SELECT count(*) FROM ({_COMPLETE})),
                                           (SELECT count(DISTINCT upload_id) FROM uploads)""").fetchone()
        assert row is not None
        return {"records": int(row[0]), "members_shredded": int(row[1]), "uploads": int(row[2]),
                "uploads_incomplete": int(row[3]) - int(row[2])}
