"""The store's applied-id index: exact answers from an in-memory hash index backed by `_dc_applied`."""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import pytest

from datacoop import store as store_module
from datacoop.store import AfterCommitFailed, ProjectionStore


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def _mark(store: ProjectionStore, ids: list[str]) -> None:
    with store.transaction() as tx:
        store.mark_applied(tx, ids)


def test_applied_ids_are_found_exactly_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = ProjectionStore(path)
    applied, fresh = _ids(500), _ids(500)
    _mark(store, applied)
    probe = applied[::3] + fresh[::3]
    assert store.already_applied(probe) == set(applied[::3])
    store.close()
    reopened = ProjectionStore(path)  # the index is rebuilt from the table
    assert reopened.already_applied(probe) == set(applied[::3])
    assert reopened.already_applied(fresh) == set()
    reopened.close()


def test_a_rolled_back_mark_is_not_remembered() -> None:
    store = ProjectionStore()
    ids = _ids(10)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        store.mark_applied(tx, ids)
        raise RuntimeError("the projection failed")
    assert store.already_applied(ids) == set()
    assert not store._applied.hits(store._hashes(ids)).any(), "the index learned ids that were rolled back"
    assert store.conn.execute("SELECT count(*) FROM _dc_applied").fetchone() == (0,)


def test_a_commit_that_fails_applies_nothing_and_leaves_no_transaction_open() -> None:
    """A failed COMMIT left the callbacks armed (an on_commit outside any transaction was then taken) and the
    transaction open (the next BEGIN failed)."""
    store = ProjectionStore()
    real = store.conn

    class FailingCommit:
        def execute(self, sql: str, *args: object) -> object:
            if sql == "COMMIT":
                raise duckdb.IOException("disk full")
            return real.execute(sql, *args)

    called: list[bool] = []
    store.conn = FailingCommit()  # type: ignore[assignment]
    with pytest.raises(store_module.CommitFailed, match="could not commit: disk full"), \
            store.transaction() as tx:
        store.save_offsets(tx, "c", {("t", 0): 5})
        store.on_commit(lambda: called.append(True))
    store.conn = real
    assert called == [] and store.offsets("c") == {}
    with pytest.raises(RuntimeError, match="only valid inside"):
        store.on_commit(lambda: None)
    ids = _ids(3)
    _mark(store, ids)  # a new transaction begins
    assert store.already_applied(ids) == set(ids)


def test_the_index_learns_committed_ids_even_when_a_cache_callback_fails() -> None:
    """A projection's after-commit callback that raises must not leave committed ids out of the index
    (the caller then re-applies event by event, and only the index stands between it and a double)."""
    store = ProjectionStore()
    ids = _ids(5)
    ran = []

    def broken_cache() -> None:
        raise ValueError("cache update failed")

    with pytest.raises(AfterCommitFailed, match="cache update failed") as raised, store.transaction() as tx:
        store.on_commit(broken_cache)
        store.mark_applied(tx, ids)
        store.on_commit(lambda: ran.append("later callback"))
    assert isinstance(raised.value.__cause__, ValueError)
    assert store.already_applied(ids) == set(ids)
    assert ran == ["later callback"], "every callback runs even when one fails"


def test_own_committed_ids_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "OWN_COMMITTED_MAX", 10)
    store = ProjectionStore()
    first, second = _ids(8), _ids(8)
    store.remember_own(first)
    store.remember_own(second)
    assert list(store.own_committed) == first[-2:] + second


def test_ids_added_since_the_load_are_merged_into_the_sorted_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_RECENT_MERGE_AT", 100)
    store = ProjectionStore()
    batches = [_ids(60) for _ in range(5)]  # merges after the 2nd and the 4th batch
    for batch in batches:
        _mark(store, batch)
    everything = [i for b in batches for i in b]
    assert store.already_applied(everything + _ids(200)) == set(everything)


def test_a_hash_hit_is_confirmed_against_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64-bit hash collision must not drop a new event: hits are checked against the stored ids."""
    store = ProjectionStore()
    applied = _ids(3)
    _mark(store, applied)
    stranger = _ids(1)
    real_hashes = store._hashes
    # every id hashes to the same value: each is a hit, and only the table can tell them apart
    monkeypatch.setattr(store, "_hashes", lambda ids: real_hashes([applied[0]] * len(ids)))
    assert store.already_applied(stranger + applied) == set(applied)


def test_a_projection_built_by_another_schema_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    """The same DDL reopens the same file; changed DDL (a new column, or a `-- v2` comment) sets the file aside
    as `.stale` and starts an empty one, which the runner then fills from offset 0 of the log."""
    path = tmp_path / "svc.duckdb"
    v1 = "CREATE TABLE IF NOT EXISTS members (member VARCHAR PRIMARY KEY);"
    store = ProjectionStore(path, v1)
    with store.transaction() as tx:
        tx.execute("INSERT INTO members VALUES ('0xa')")
        store.save_offsets(tx, "svc", {("t", 0): 7})
    store.close()
    store = ProjectionStore(path, v1)
    assert store.offsets("svc") == {("t", 0): 7}
    store.close()
    v2 = "CREATE TABLE IF NOT EXISTS members (member VARCHAR PRIMARY KEY, joined TIMESTAMPTZ);"
    store = ProjectionStore(path, v2)
    assert store.offsets("svc") == {} and store.conn.execute("SELECT count(*) FROM members").fetchone() == (0,)
    with store.transaction() as tx:
        tx.execute("INSERT INTO members VALUES ('0xb', NULL)")
    store.close()
    old = duckdb.connect(str(tmp_path / "svc.duckdb.stale"))
    assert old.execute("SELECT member FROM members").fetchall() == [("0xa",)]
    old.close()
    store = ProjectionStore(path, v2 + "\n-- v2: apply counts departures")  # the same tables, another meaning
    assert store.conn.execute("SELECT count(*) FROM members").fetchone() == (0,)
    store.close()
    old = duckdb.connect(str(tmp_path / "svc.duckdb.stale"))
    assert old.execute("SELECT member FROM members").fetchall() == [("0xb",)]
    old.close()


def test_a_file_from_before_schema_fingerprints_is_rebuilt_once(tmp_path: Path) -> None:
    path = tmp_path / "svc.duckdb"
    legacy = duckdb.connect(str(path))
    legacy.execute("CREATE TABLE members (member VARCHAR)")
    legacy.close()
    schema = "CREATE TABLE IF NOT EXISTS members (member VARCHAR, joined TIMESTAMPTZ);"
    ProjectionStore(path, schema).close()
    assert (tmp_path / "svc.duckdb.stale").exists()
    (tmp_path / "svc.duckdb.stale").unlink()
    store = ProjectionStore(path, schema)
    store.close()
    assert not (tmp_path / "svc.duckdb.stale").exists(), "a file with its fingerprint is kept"
