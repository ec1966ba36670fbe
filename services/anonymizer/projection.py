"""How member, record and dataset events land in the anonymizer's DuckDB, and the queries it needs.

Eligibility is tracked from the members and records topics: consents per member (purpose,
categories, state, expiry), erased members, and an index of record ids per member and category
(ids only; ciphertext stays with the vault). Dataset events give definitions, versions with their
contributors, and builds. A cache of the log: delete the file and it is rebuilt from the topics.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    DatasetDefined,
    DatasetVersionPublished,
    DatasetVersionSuperseded,
    VersionBuildFinished,
    VersionBuildProgressed,
    VersionBuildStarted,
)
from datacoop.events.members import ConsentExpired, ConsentGranted, ConsentRevoked, ErasureRequested
from datacoop.events.records import KeysShredded, RecordsContributed
from services.anonymizer.domain import DefinitionState

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS consents (
    member VARCHAR NOT NULL, consent_id VARCHAR NOT NULL, purpose VARCHAR NOT NULL, categories VARCHAR[] NOT NULL,
    status VARCHAR NOT NULL, expires_at TIMESTAMPTZ, PRIMARY KEY (member, consent_id));
CREATE TABLE IF NOT EXISTS erased (member VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS records (record_id VARCHAR PRIMARY KEY, member VARCHAR NOT NULL, category VARCHAR NOT NULL);
-- an upload's records count once all its chunk events are here, as the vault serves them (all or nothing)
CREATE TABLE IF NOT EXISTS upload_chunks (upload_id VARCHAR NOT NULL, chunk INTEGER NOT NULL, chunks INTEGER NOT NULL,
                                          PRIMARY KEY (upload_id, chunk));
CREATE TABLE IF NOT EXISTS pending_records (record_id VARCHAR PRIMARY KEY, member VARCHAR NOT NULL,
                                            category VARCHAR NOT NULL, upload_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS definitions (
    dataset_id VARCHAR PRIMARY KEY, definition_version INTEGER NOT NULL, purpose VARCHAR NOT NULL,
    categories VARCHAR[] NOT NULL, definition JSON NOT NULL, source VARCHAR NOT NULL, defined_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, published JSON NOT NULL,
    superseded BOOLEAN NOT NULL DEFAULT false, superseded_by INTEGER, superseded_reason VARCHAR,
    superseded_at TIMESTAMPTZ, PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS version_contributors (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, member VARCHAR NOT NULL, records INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, version, member));
CREATE TABLE IF NOT EXISTS builds (
    build_id VARCHAR PRIMARY KEY, dataset_id VARCHAR NOT NULL, trigger VARCHAR NOT NULL,
    definition_version INTEGER NOT NULL, inputs_sha256 VARCHAR NOT NULL, members INTEGER NOT NULL,
    records INTEGER NOT NULL, stage VARCHAR NOT NULL, done BIGINT NOT NULL, total BIGINT NOT NULL,
    outcome VARCHAR, version INTEGER, detail VARCHAR, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ);
"""

_ELIGIBLE_SQL = """
SELECT DISTINCT c.member FROM consents c
WHERE c.status = 'active' AND c.purpose = ? AND (c.expires_at IS NULL OR c.expires_at > ?)
  AND list_has_all(c.categories, ?::VARCHAR[])
  AND c.member NOT IN (SELECT member FROM erased)
"""


def _record_ids(ev: RecordsContributed) -> list[str]:
    return [r["record_id"] if isinstance(r, dict) else r.record_id for r in ev.records]


class AnonymizerProjection:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        chunks: list[RecordsContributed] = []
        for d in deliveries:
            ev = d.event
            if isinstance(ev, RecordsContributed):
                chunks.append(ev)
                continue
            if chunks:  # keep log order: records before what follows them
                self._insert_records(tx, chunks)
                chunks = []
            self._apply_one(tx, d)
        if chunks:
            self._insert_records(tx, chunks)

    @staticmethod
    def _insert_records(tx: duckdb.DuckDBPyConnection, chunks: list[RecordsContributed]) -> None:
        """Records of uploads all of whose chunk events are here go to `records`; the others wait in
        `pending_records` (the vault never serves an upload a failed publish left half in the log)."""
        tx.execute("""INSERT OR IGNORE INTO upload_chunks SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]),
                      unnest(?::INTEGER[])""",
                   [[ev.upload_id for ev in chunks], [ev.chunk for ev in chunks], [ev.chunks for ev in chunks]])
        uploads = list(dict.fromkeys(ev.upload_id for ev in chunks))
        complete = {r[0] for r in tx.execute(
            """SELECT upload_id FROM upload_chunks WHERE upload_id IN (SELECT unnest(?::VARCHAR[]))
               GROUP BY upload_id HAVING count(*) = any_value(chunks)""", [uploads]).fetchall()}
        ids, members, categories, upload_ids = [], [], [], []
        for ev in chunks:
            got = _record_ids(ev)
            ids += got
            members += [ev.member] * len(got)
            categories += [ev.category] * len(got)
            upload_ids += [ev.upload_id] * len(got)
        incoming = pa.table({"record_id": pa.array(ids, pa.string()), "member": pa.array(members, pa.string()),
                             "category": pa.array(categories, pa.string()),
                             "upload_id": pa.array(upload_ids, pa.string())})
        tx.register("_incoming_records", incoming)
        try:
            for table, which in (("records", "IN"), ("pending_records", "NOT IN")):
                columns = "record_id, member, category" + (", upload_id" if table == "pending_records" else "")
                tx.execute(f"""INSERT OR IGNORE INTO {table} SELECT {columns} FROM _incoming_records
                               WHERE member NOT IN (SELECT member FROM erased)
                                 AND upload_id {which} (SELECT unnest(?::VARCHAR[]))""", [sorted(complete)])
        finally:
            tx.unregister("_incoming_records")
        if complete:  # chunks of these that came in earlier batches
            done = [sorted(complete)]
            tx.execute("""INSERT OR IGNORE INTO records SELECT record_id, member, category FROM pending_records
                          WHERE upload_id IN (SELECT unnest(?::VARCHAR[]))""", done)
            tx.execute("DELETE FROM pending_records WHERE upload_id IN (SELECT unnest(?::VARCHAR[]))", done)

    @staticmethod
    def _apply_one(tx: duckdb.DuckDBPyConnection, d: Delivery) -> None:
        ev = d.event
        if isinstance(ev, ConsentGranted):
            tx.execute("INSERT OR REPLACE INTO consents VALUES (?, ?, ?, ?, 'active', ?)",
                       [ev.member, ev.consent_id, ev.purpose, list(ev.categories), ev.expires_at])
        elif isinstance(ev, ConsentRevoked | ConsentExpired):
            status = "revoked" if isinstance(ev, ConsentRevoked) else "expired"
            tx.execute("UPDATE consents SET status = ? WHERE member = ? AND consent_id = ? AND status = 'active'",
                       [status, ev.member, ev.consent_id])
        elif isinstance(ev, ErasureRequested | KeysShredded):
            tx.execute("INSERT OR IGNORE INTO erased VALUES (?)", [ev.member])
            tx.execute("UPDATE consents SET status = 'revoked' WHERE member = ? AND status = 'active'", [ev.member])
            tx.execute("DELETE FROM records WHERE member = ?", [ev.member])
            tx.execute("DELETE FROM pending_records WHERE member = ?", [ev.member])
        elif isinstance(ev, DatasetDefined):
            tx.execute("""INSERT OR REPLACE INTO definitions SELECT ?, ?, ?, ?, ?, ?, ?
                          WHERE ? >= coalesce((SELECT definition_version FROM definitions WHERE dataset_id = ?), 0)""",
                       [ev.dataset_id, ev.definition_version, ev.purpose, ev.categories, json.dumps(ev.definition),
                        ev.source, ev.defined_at, ev.definition_version, ev.dataset_id])
        elif isinstance(ev, DatasetVersionPublished):
            tx.execute("INSERT OR IGNORE INTO versions (dataset_id, version, published) VALUES (?, ?, ?)",
                       [ev.dataset_id, ev.version, ev.model_dump_json()])
            if ev.contributor_weights:
                tx.execute("""INSERT OR IGNORE INTO version_contributors SELECT ?, ?, unnest(?::VARCHAR[]),
                              unnest(?::INTEGER[])""",
                           [ev.dataset_id, ev.version, list(ev.contributor_weights),
                            list(ev.contributor_weights.values())])
        elif isinstance(ev, DatasetVersionSuperseded):
            tx.execute("""UPDATE versions SET superseded = true, superseded_by = ?, superseded_reason = ?,
                          superseded_at = ? WHERE dataset_id = ? AND version = ?""",
                       [ev.superseded_by, ev.reason, ev.superseded_at, ev.dataset_id, ev.version])
        elif isinstance(ev, VersionBuildStarted):
            tx.execute("""INSERT OR IGNORE INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, 'selecting', 0, ?, NULL, NULL,
                          NULL, ?, NULL)""",
                       [ev.build_id, ev.dataset_id, ev.trigger, ev.definition_version, ev.inputs_sha256, ev.members,
                        ev.records, ev.records, ev.started_at])
        elif isinstance(ev, VersionBuildProgressed):
            tx.execute("UPDATE builds SET stage = ?, done = ?, total = ? WHERE build_id = ? AND outcome IS NULL",
                       [ev.stage, ev.done, ev.total, ev.build_id])
        elif isinstance(ev, VersionBuildFinished):
            tx.execute("UPDATE builds SET outcome = ?, version = ?, detail = ?, finished_at = ? WHERE build_id = ?",
                       [ev.outcome, ev.version, ev.detail, ev.finished_at, ev.build_id])

    # -- definitions ---------------------------------------------------------------------------
    def definition(self, dataset_id: str) -> DefinitionState | None:
        row = self.conn.execute("SELECT definition_version, definition FROM definitions WHERE dataset_id = ?",
                                [dataset_id]).fetchone()
        return DefinitionState(dataset_id, int(row[0]), json.loads(row[1])) if row else None

    def definitions(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("""SELECT dataset_id, definition_version, purpose, categories, source, defined_at,
                                    definition FROM definitions ORDER BY dataset_id""").fetchall()
        return [{"dataset_id": r[0], "definition_version": r[1], "purpose": r[2], "categories": list(r[3]),
                 "source": r[4], "defined_at": r[5], "definition": json.loads(r[6])} for r in rows]

    # -- eligibility ---------------------------------------------------------------------------
    def eligible_members(self, purpose: str, categories: list[str], now: datetime) -> set[str]:
        return {r[0] for r in self.conn.execute(_ELIGIBLE_SQL, [purpose, now, categories]).fetchall()}

    def inputs(self, purpose: str, categories: list[str], now: datetime) -> tuple[list[str], int, str]:
        """(eligible members that have records, their records in `categories`, md5 of those record ids)."""
        row = self.conn.execute(
            f"""SELECT list(DISTINCT r.member ORDER BY r.member), count(*),
                       md5(coalesce(string_agg(r.record_id, ',' ORDER BY r.record_id), ''))
                FROM records r WHERE r.category IN (SELECT unnest(?::VARCHAR[]))
                  AND r.member IN ({_ELIGIBLE_SQL})""", [categories, purpose, now, categories]).fetchone()
        assert row is not None
        return list(row[0] or []), int(row[1]), str(row[2])

    # -- versions ------------------------------------------------------------------------------
    def live_contributors(self, dataset_id: str) -> dict[int, list[str]]:
        rows = self.conn.execute(
            """SELECT v.version, list(c.member) FILTER (WHERE c.member IS NOT NULL) FROM versions v
               LEFT JOIN version_contributors c USING (dataset_id, version)
               WHERE v.dataset_id = ? AND NOT v.superseded GROUP BY v.version""", [dataset_id]).fetchall()
        return {int(v): list(m or []) for v, m in rows}

    def latest_version(self, dataset_id: str) -> int | None:
        row = self.conn.execute("SELECT max(version) FROM versions WHERE dataset_id = ?", [dataset_id]).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def versions(self, dataset_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("""SELECT published, superseded, superseded_by, superseded_reason, superseded_at
                                    FROM versions WHERE dataset_id = ? ORDER BY version""", [dataset_id]).fetchall()
        return [{**json.loads(r[0]), "superseded": bool(r[1]), "superseded_by": r[2], "superseded_reason": r[3],
                 "superseded_at": r[4]} for r in rows]

    def version(self, dataset_id: str, version: int) -> dict[str, Any] | None:
        found = [v for v in self.versions(dataset_id) if v["version"] == version]
        return found[0] if found else None

    def newest_offered(self, dataset_id: str) -> dict[str, Any] | None:
        live = [v for v in self.versions(dataset_id) if not v["superseded"]]
        return live[-1] if live else None

    # -- builds --------------------------------------------------------------------------------
    _BUILD_COLUMNS = ("build_id", "dataset_id", "trigger", "definition_version", "inputs_sha256", "members",
                      "records", "stage", "done", "total", "outcome", "version", "detail", "started_at",
                      "finished_at")

    def builds(self, dataset_id: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute(f"""SELECT {', '.join(self._BUILD_COLUMNS)} FROM builds WHERE dataset_id = ?
                                     ORDER BY started_at DESC LIMIT ?""", [dataset_id, limit]).fetchall()
        return [dict(zip(self._BUILD_COLUMNS, r, strict=True)) for r in rows]

    def build(self, build_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(f"SELECT {', '.join(self._BUILD_COLUMNS)} FROM builds WHERE build_id = ?",
                                [build_id]).fetchone()
        return dict(zip(self._BUILD_COLUMNS, row, strict=True)) if row else None

    def newest_live_inputs(self, dataset_id: str) -> tuple[int, set[str]] | None:
        """(version, inputs_sha256 of its builds) of the newest version on offer: the inputs the build that
        published it read, and those of every later build whose output was identical (ended `unchanged`)."""
        row = self.conn.execute(
            """SELECT v.version, list(DISTINCT b.inputs_sha256) FROM versions v
               JOIN builds b ON b.dataset_id = v.dataset_id AND b.version = v.version
                 AND b.outcome IN ('published', 'unchanged')
               WHERE v.dataset_id = ? AND NOT v.superseded GROUP BY v.version ORDER BY v.version DESC LIMIT 1""",
            [dataset_id]).fetchone()
        return (int(row[0]), {str(f) for f in row[1]}) if row else None

    def last_finished_inputs(self, dataset_id: str) -> str | None:
        """The input fingerprint of the last finished build (published or failed)."""
        row = self.conn.execute("""SELECT inputs_sha256 FROM builds WHERE dataset_id = ? AND outcome IS NOT NULL
                                   ORDER BY finished_at DESC LIMIT 1""", [dataset_id]).fetchone()
        return str(row[0]) if row else None
