"""A service's DuckDB database: its projection tables plus the tracking tables that make effects exact.

Tracking tables (prefix `_dc_`):
- `_dc_offsets`: per consumer, topic and partition, the next offset to read. Written in the same
  transaction as the projection rows it produced, so a crash never splits the two (by the consumer,
  or by its process's writer when it passes the consumer over the events it has just applied).
- `_dc_applied`: the ids of events already applied; a duplicate (a re-sent reaction, a replayed batch,
  an event the command path applied before the consumer read it back) is dropped. Looking a batch of
  ids up in that table costs a scan of all of it (DuckDB joins by hash, not through an index), which
  grows with the log; so the store keeps the 64-bit hashes (DuckDB's `hash()`) of every applied id in
  memory, 8 bytes an event, loaded when the store opens, and asks the table only about ids whose hash it has seen.
- `_dc_subjects`: per topic and subject, the last `seq` and where it landed; the writer's next seq.

The projection is a cache of the log: delete the file and the service rebuilds it from the topics. It
does so on its own when the projection's schema changed (`_dc_meta` holds a fingerprint of the DDL the
file was built with): a file built by another schema is set aside as `<file>.stale` and a fresh one is
read from the log, instead of the new code failing on columns the old file lacks. A projection whose
`apply` changes meaning without a new column changes a comment in its SQL (`-- v2`) to the same effect.

Batches of ids go to DuckDB as Arrow arrays (converted in C, scanned by DuckDB without a copy), not as
Python lists bound to a LIST parameter, which DuckDB converts value by value. DuckDB finds such an
Arrow table by its Python variable name unless a table or view of that name exists, so those names
start with `_dc_arrow_`: the `_dc_` prefix is reserved for this module, no projection may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

_TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS _dc_offsets (
    consumer VARCHAR NOT NULL, topic VARCHAR NOT NULL, partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL, PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS _dc_applied (event_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS _dc_subjects (
    topic VARCHAR NOT NULL, subject VARCHAR NOT NULL, seq BIGINT NOT NULL,
    partition INTEGER NOT NULL, "offset" BIGINT NOT NULL, PRIMARY KEY (topic, subject));
"""

_META_DDL = "CREATE TABLE IF NOT EXISTS _dc_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)"

log = logging.getLogger("datacoop.store")

TopicPartition = tuple[str, int]
OWN_COMMITTED_MAX = 200_000
_RECENT_MERGE_AT = 100_000


class _AppliedHashes:
    """The hashes of every applied event id: a sorted array plus a set of those added since."""

    def __init__(self, loaded: np.ndarray) -> None:
        self.sorted = np.sort(loaded.astype(np.uint64, copy=False))
        self.recent: set[int] = set()

    def hits(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash, whether it may be applied (True) or certainly is not (False)."""
        hit = np.zeros(len(hashes), dtype=bool)
        if len(self.sorted):
            at = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
            hit = self.sorted[at] == hashes
        if self.recent:
            hit |= np.fromiter((h in self.recent for h in hashes.tolist()), dtype=bool, count=len(hashes))
        return hit

    def add(self, hashes: np.ndarray) -> None:
        self.recent.update(hashes.tolist())
        if len(self.recent) >= _RECENT_MERGE_AT:
            merged = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
            self.sorted = np.union1d(self.sorted, merged)
            self.recent = set()


def _set_aside_if_built_by_another_schema(path: Path, fingerprint: str) -> None:
    """Move `path` (and its WAL) to `<path>.stale` when its projection was built with other DDL than
    `fingerprint`'s, or before files recorded theirs: the caller then rebuilds it from the log."""
    if not path.exists():
        return
    with opened(str(path), "database", rebuildable=True) as conn:
        has_meta = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = '_dc_meta'"
                                ).fetchone() == (1,)
        row = conn.execute("SELECT value FROM _dc_meta WHERE key = 'schema_sha256'").fetchone() if has_meta else None
        has_tables = conn.execute("SELECT count(*) FROM information_schema.tables").fetchone() != (0,)
    built_with = row[0] if row is not None else None
    if built_with == fingerprint or (built_with is None and not has_tables):
        return
    stale = path.with_name(path.name + ".stale")
    for suffix in ("", ".wal"):
        source, target = path.with_name(path.name + suffix), stale.with_name(stale.name + suffix)
        if source.exists():
            source.replace(target)
        else:
            target.unlink(missing_ok=True)  # an older set-aside file's WAL must not be replayed into this one
    log.warning("the projection in %s was built by another version of its schema; set aside as %s, it is rebuilt "
                "from the log (delete the old file once the service is ready)", path, stale)


class AfterCommitFailed(RuntimeError):
    """The transaction committed; a callback after COMMIT (an in-memory cache's update) raised. Its cause is
    the callback's exception. The database holds the batch: applying it again would change nothing."""


class StoreUnusable(RuntimeError):
    """A service's database file cannot be opened; the message says why and what to do (`serve` prints it and
    exits 2, not a traceback)."""


def opened(path: str, what: str, *, rebuildable: bool) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect(path)` (its folder made first), or StoreUnusable naming the file and the fix: another process
    holds it, it is not a DuckDB database, or its folder cannot be made or written. `rebuildable`: whether
    deleting it loses nothing (a projection, rebuilt from the log), which the message then offers."""
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(path)
    except OSError as exc:  # the folder: a file where it should be, no permission, a read-only disk
        raise StoreUnusable(f"cannot make or use the folder of its {what} {path} ({exc.strerror or exc}); set "
                            "DATACOOP_DATA_DIR to a folder this process can write") from exc
    except (duckdb.IOException, duckdb.PermissionException) as exc:
        said = str(exc)
        if "lock" in said.lower():
            why = ("another process holds it (another instance of this service on the same DATACOOP_DATA_DIR?): "
                   "stop that one, or give this one a DATACOOP_DATA_DIR of its own")
        elif "not a valid DuckDB database" in said or "database file" in said.lower():
            why = ("it is not a DuckDB database (damaged, or another file put there): "
                   + ("move it away (or delete it): the service rebuilds it from the event log" if rebuildable else
                      "restore it from a backup; do not delete it, nothing else holds what it held"))
        else:
            why = f"{said.splitlines()[0]}; check the file and its folder (DATACOOP_DATA_DIR)"
        raise StoreUnusable(f"cannot open its {what} {path}: {why}") from exc


@contextmanager
def unusable_as(path: str, what: str, *, rebuildable: bool) -> Iterator[None]:
    """Any DuckDB error inside (opening a file and reading or writing it at a service's start) as StoreUnusable
    naming the file: a damaged block, a folder it cannot write. At the start it is the file's fault, no event's."""
    try:
        yield
    except StoreUnusable:
        raise
    except duckdb.Error as exc:
        said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "corrupt" in said.lower() or "checksum" in said.lower():
            fix = ("move it away (or delete it): the service rebuilds it from the event log" if rebuildable else
                   "restore it from a backup; do not delete it, nothing else holds what it held")
            why = f"it is damaged ({said}): {fix}"
        else:
            why = f"{said}; check the file and that its folder can be written (DATACOOP_DATA_DIR)"
        raise StoreUnusable(f"cannot use its {what} {path}: {why}") from exc


class CommitFailed(RuntimeError):
    """COMMIT itself failed (the disk, the file's log): the database's fault, never the events' (the batch is read
    again whole, not taken apart and dead-lettered). The transaction was rolled back."""


class ProjectionStore:
    """One DuckDB connection owned by one service process.

    DuckDB calls are synchronous; `lock` serialises transactions between the consumer runner and the
    command path, which share this connection on one event loop. Hold it across a whole transaction
    and never across an await that waits on the broker.
    """

    def __init__(self, path: str | Path = ":memory:", schema_sql: str = "") -> None:
        self.path = str(path)
        fingerprint = hashlib.sha256(f"{_TRACKING_DDL}\n{schema_sql}".encode()).hexdigest()
        with unusable_as(self.path, "database", rebuildable=True):
            if self.path != ":memory:":
                _set_aside_if_built_by_another_schema(Path(self.path), fingerprint)
            self.conn = opened(self.path, "database", rebuildable=True)
            self.conn.execute(_META_DDL)
            self.conn.execute("INSERT OR REPLACE INTO _dc_meta VALUES ('schema_sha256', ?)", [fingerprint])
            # a write that must reach the file's log now: a folder it can read but not write fails here, at the
            # start, not at the first event (where the event would be taken for the fault)
            self.conn.execute("INSERT OR REPLACE INTO _dc_meta VALUES ('opened_at', ?)", [str(time.time_ns())])
            self.conn.execute(_TRACKING_DDL)
            if schema_sql:
                self.conn.execute(schema_sql)
            loaded = self.conn.execute("SELECT hash(event_id) AS h FROM _dc_applied").fetchnumpy()["h"]
        self.lock = asyncio.Lock()
        self._after_commit: list[Callable[[], None]] | None = None
        # Ids of events this process's writer applied and committed, not yet seen by its own consumer:
        # when the consumer reads them back it drops them by their `ce_id` header without decoding or
        # asking the database. Bounded; once cleared, the `_dc_applied` lookup does the same job.
        self.own_committed: dict[str, None] = {}  # insertion-ordered: the oldest go first when full
        self._applied = _AppliedHashes(np.asarray(loaded, dtype=np.uint64))
        self._hashes(["warm-up"])  # DuckDB's first Arrow scan in a process costs ~150 ms: pay it here

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
        try:
            self.conn.execute("COMMIT")
        except BaseException as exc:  # a COMMIT that fails (I/O, the file's log) leaves nothing of it applied
            self._after_commit = None
            with contextlib.suppress(duckdb.Error):
                self.conn.execute("ROLLBACK")  # where the failed COMMIT left the transaction open
            if isinstance(exc, duckdb.Error):
                raise CommitFailed(f"the database {self.path} could not commit: {str(exc).splitlines()[0]}; check "
                                   "its disk and folder (DATACOOP_DATA_DIR)") from exc
            raise
        callbacks, self._after_commit = self._after_commit, None
        failure: BaseException | None = None
        for callback in callbacks:  # every one runs: the applied-id index's first (see mark_applied)
            try:
                callback()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise AfterCommitFailed(f"committed, but a callback after COMMIT failed: {type(failure).__name__}: "
                                    f"{failure}") from failure

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
        maybe = self._applied.hits(self._hashes(event_ids))
        if not maybe.any():
            return set()
        candidates = [event_ids[i] for i in np.flatnonzero(maybe)]
        rows = self.conn.execute(
            "SELECT event_id FROM _dc_applied WHERE event_id IN (SELECT unnest(?::VARCHAR[]))", [candidates]
        ).fetchall()
        return {r[0] for r in rows}

    def _hashes(self, event_ids: list[str]) -> np.ndarray:
        _dc_arrow_ids = pa.table({"event_id": pa.array(event_ids, pa.string())})  # DuckDB scans it by name
        hashes = self.conn.execute("SELECT hash(event_id) AS h FROM _dc_arrow_ids").fetchnumpy()["h"]
        return np.asarray(hashes, dtype=np.uint64)

    def remember_own(self, event_ids: Iterable[str]) -> None:
        """Ids the writer has just committed (call after COMMIT); see `own_committed`. Bounded: ids
        the consumer never reads back (another instance's partitions in group mode) age out."""
        own = self.own_committed
        own.update(dict.fromkeys(event_ids))
        if len(own) > OWN_COMMITTED_MAX:
            for event_id in list(itertools.islice(own, len(own) - OWN_COMMITTED_MAX)):
                del own[event_id]

    def last_seq(self, topic: str, subject: str) -> int:
        row = self.conn.execute(
            "SELECT seq FROM _dc_subjects WHERE topic = ? AND subject = ?", [topic, subject]
        ).fetchone()
        return int(row[0]) if row else 0

    # -- writing the tracking state (inside a transaction) ----------------------------------
    def mark_applied(self, tx: duckdb.DuckDBPyConnection, event_ids: list[str]) -> None:
        if self._after_commit is None:
            raise RuntimeError("mark_applied is only valid inside store.transaction()")
        if not event_ids:
            return
        _dc_arrow_ids = pa.table({"event_id": pa.array(event_ids, pa.string())})  # DuckDB scans it by name
        inserted = tx.execute("INSERT INTO _dc_applied SELECT event_id FROM _dc_arrow_ids "
                              "RETURNING hash(event_id) AS h").fetchnumpy()["h"]
        hashes, applied = np.asarray(inserted, dtype=np.uint64), self._applied
        # first of the callbacks: the index must know these ids even if a projection's cache update fails
        self._after_commit.insert(0, lambda: applied.add(hashes))

    @staticmethod
    def save_offsets(tx: duckdb.DuckDBPyConnection, consumer: str, offsets: dict[TopicPartition, int]) -> None:
        if offsets:
            tx.execute(
                """INSERT OR REPLACE INTO _dc_offsets
                   SELECT ?, unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::BIGINT[])""",
                [consumer, [t for t, _ in offsets], [p for _, p in offsets], list(offsets.values())],
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
            topics, subjects, seqs, partitions, offsets = zip(*latest.values(), strict=True)
            _dc_arrow_subjects = pa.table({  # DuckDB scans it by name
                "topic": pa.array(topics, pa.string()), "subject": pa.array(subjects, pa.string()),
                "seq": pa.array(seqs, pa.int64()), "partition": pa.array(partitions, pa.int32()),
                "offset": pa.array(offsets, pa.int64())})
            tx.execute(
                """INSERT INTO _dc_subjects SELECT topic, subject, seq, partition, "offset" FROM _dc_arrow_subjects
                   ON CONFLICT (topic, subject) DO UPDATE
                     SET seq = excluded.seq, partition = excluded.partition, "offset" = excluded."offset"
                     WHERE excluded.seq > _dc_subjects.seq""")
