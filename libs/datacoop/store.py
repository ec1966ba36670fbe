"""A service's DuckDB database: its projection tables plus the tracking tables that make effects exact.

Tracking tables (prefix `_dc_`):
- `_dc_offsets`: per consumer, topic and partition, the next offset to read. Written in the same
  transaction as the projection rows it produced, so a crash never splits the two.
- `_dc_applied`: the ids of events already applied; a duplicate (a re-sent reaction, a replayed batch,
  an event the command path applied before the consumer read it back) is dropped.
- `_dc_subjects`: per topic and subject, the last `seq` and where it landed; the writer's next seq.

The projection is a cache of the log: delete the file and the service rebuilds it from the topics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

_TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS _dc_offsets (
    consumer VARCHAR NOT NULL, topic VARCHAR NOT NULL, partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL, PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS _dc_applied (event_id VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS _dc_subjects (
    topic VARCHAR NOT NULL, subject VARCHAR NOT NULL, seq BIGINT NOT NULL,
    partition INTEGER NOT NULL, "offset" BIGINT NOT NULL, PRIMARY KEY (topic, subject));
"""

TopicPartition = tuple[str, int]


class ProjectionStore:
    """One DuckDB connection owned by one service process.

    DuckDB calls are synchronous; `lock` serialises transactions between the consumer runner and the
    command path, which share this connection on one event loop. Hold it across a whole transaction
    and never across an await that waits on the broker.
    """

    def __init__(self, path: str | Path = ":memory:", schema_sql: str = "") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = duckdb.connect(self.path)
        self.lock = asyncio.Lock()
        self._after_commit: list[Callable[[], None]] | None = None
        self.conn.execute(_TRACKING_DDL)
        if schema_sql:
            self.conn.execute(schema_sql)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: projection rows, applied ids, offsets and seqs commit together.

        Callbacks registered with `on_commit` inside the block run after COMMIT and are dropped on
        ROLLBACK: in-memory caches of the projection change only when the database did.
        """
        self.conn.execute("BEGIN TRANSACTION")
        self._after_commit = []
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._after_commit = None
            raise
        self.conn.execute("COMMIT")
        callbacks, self._after_commit = self._after_commit, None
        for callback in callbacks:
            callback()

    def on_commit(self, callback: Callable[[], None]) -> None:
        if self._after_commit is None:
            raise RuntimeError("on_commit is only valid inside store.transaction()")
        self._after_commit.append(callback)

    # -- reading the tracking state --------------------------------------------------------
    def offsets(self, consumer: str) -> dict[TopicPartition, int]:
        rows = self.conn.execute(
            "SELECT topic, partition, next_offset FROM _dc_offsets WHERE consumer = ?", [consumer]
        ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def already_applied(self, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        rows = self.conn.execute(
            "SELECT event_id FROM _dc_applied WHERE event_id IN (SELECT unnest(?::VARCHAR[]))", [event_ids]
        ).fetchall()
        return {r[0] for r in rows}

    def last_seq(self, topic: str, subject: str) -> int:
        row = self.conn.execute(
            "SELECT seq FROM _dc_subjects WHERE topic = ? AND subject = ?", [topic, subject]
        ).fetchone()
        return int(row[0]) if row else 0

    # -- writing the tracking state (inside a transaction) ----------------------------------
    @staticmethod
    def mark_applied(tx: duckdb.DuckDBPyConnection, event_ids: list[str]) -> None:
        if event_ids:
            tx.execute("INSERT INTO _dc_applied SELECT unnest(?::VARCHAR[])", [event_ids])

    @staticmethod
    def save_offsets(tx: duckdb.DuckDBPyConnection, consumer: str, offsets: dict[TopicPartition, int]) -> None:
        if offsets:
            tx.executemany(
                "INSERT OR REPLACE INTO _dc_offsets VALUES (?, ?, ?, ?)",
                [[consumer, t, p, o] for (t, p), o in offsets.items()],
            )

    @staticmethod
    def save_subjects(tx: duckdb.DuckDBPyConnection, rows: Iterable[tuple[str, str, int, int, int]]) -> None:
        """rows: (topic, subject, seq, partition, offset); a seq never moves backwards."""
        latest: dict[tuple[str, str], tuple[str, str, int, int, int]] = {}
        for row in rows:
            key = (row[0], row[1])
            if key not in latest or row[2] > latest[key][2]:
                latest[key] = row
        if latest:
            cols = list(zip(*latest.values(), strict=True))
            tx.execute(
                """INSERT INTO _dc_subjects
                   SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::BIGINT[]),
                          unnest(?::INTEGER[]), unnest(?::BIGINT[])
                   ON CONFLICT (topic, subject) DO UPDATE SET
                     seq = greatest(_dc_subjects.seq, excluded.seq),
                     partition = CASE WHEN excluded.seq > _dc_subjects.seq THEN excluded.partition
                                      ELSE _dc_subjects.partition END,
                     "offset" = CASE WHEN excluded.seq > _dc_subjects.seq THEN excluded."offset"
                                     ELSE _dc_subjects."offset" END""",
                [list(c) for c in cols],
            )
