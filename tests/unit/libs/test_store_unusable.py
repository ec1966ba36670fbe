"""A database file a service cannot open ends its start in one line that names the file and the fix, exit 2: it
used to be a DuckDB or OS traceback. A projection offers to be rebuilt; the vault's key store never does."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from datacoop.kit.app import serve
from datacoop.store import ProjectionStore, StoreUnusable
from services.consent.service import build_app
from services.consent.settings import ConsentSettings
from services.vault.crypto import Kek, new_data_key
from services.vault.keystore import KeyStore


def _start(tmp: Path, capsys: pytest.CaptureFixture[str]) -> str:
    settings = ConsentSettings(bootstrap="127.0.0.1:1", data_dir=tmp, dev_secrets=True, log_json=False)
    with pytest.raises(SystemExit) as exited:
        serve("consent", settings, build_app)
    said = capsys.readouterr().err
    assert exited.value.code == 2 and len(said.strip().splitlines()) == 1 and "Traceback" not in said, said
    assert said.startswith("datacoop consent: cannot start: "), said
    return said


def test_a_data_dir_that_is_a_file_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    said = _start(afile, capsys)
    assert f"{afile}" in said and "set DATACOOP_DATA_DIR to a folder this process can write" in said, said


def test_a_damaged_projection_offers_the_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "consent.duckdb").write_bytes(b"\x00garbage" * 1000)
    said = _start(tmp_path, capsys)
    assert "consent.duckdb: it is not a DuckDB database" in said and "rebuilds it from the event log" in said, said


def test_a_database_held_by_another_process_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "held.duckdb"
    hold = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreUnusable, match="another process holds it .*DATACOOP_DATA_DIR of its own"):
            ProjectionStore(path)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # once released, it opens
        try:
            ProjectionStore(path).close()
            break
        except StoreUnusable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_damaged_key_store_is_never_offered_for_deletion(tmp_path: Path) -> None:
    path = tmp_path / "vault-keys.duckdb"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StoreUnusable) as refused:
        KeyStore(path, Kek(new_data_key()))
    said = str(refused.value)
    assert "key store" in said and "restore it from a backup; do not delete it" in said and "rebuild" not in said


def test_a_damaged_block_is_named_as_damage_with_the_fix(tmp_path: Path) -> None:
    """A file whose checksum fails (a torn write, a bad disk) ended the start in DuckDB's traceback, exit 1."""
    path = tmp_path / "consent.duckdb"
    store = ProjectionStore(path, "CREATE TABLE IF NOT EXISTS t (a VARCHAR);")
    with store.transaction() as tx:
        tx.execute("INSERT INTO t SELECT repeat('x', 100) FROM range(20000)")
    store.conn.execute("CHECKPOINT")
    store.close()
    data = bytearray(path.read_bytes())
    for at in range(12288, min(len(data), 12288 + 200_000), 4096):  # scribble over blocks past the headers
        data[at:at + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(StoreUnusable) as refused:
        ProjectionStore(path, "CREATE TABLE IF NOT EXISTS t (a VARCHAR);")
    said = str(refused.value)
    assert said.startswith(f"cannot use its database {path}: it is damaged (Corrupt database file"), said
    assert said.endswith("move it away (or delete it): the service rebuilds it from the event log"), said


def test_a_commit_the_disk_refuses_is_a_commit_failure_not_the_events(tmp_path: Path) -> None:
    """The file's log cannot be written (here a folder where it must go): COMMIT fails as CommitFailed, which the
    consumer runner retries whole and the API answers 503, never a dead letter or a 500 "bug"."""
    from datacoop.store import CommitFailed

    path = tmp_path / "x.duckdb"
    store = ProjectionStore(path, "CREATE TABLE IF NOT EXISTS t (a INT);")
    store.conn.execute("CHECKPOINT")  # no log file now: the next commit makes one
    (tmp_path / "x.duckdb.wal").mkdir()
    with pytest.raises(CommitFailed, match="could not commit: .*x.duckdb.wal.*check its disk and folder"), \
            store.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    (tmp_path / "x.duckdb.wal").rmdir()
    with store.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
    assert store.conn.execute("SELECT list(a) FROM t").fetchone() == ([2],)
    store.close()


def test_after_a_failed_rotation_a_damaged_key_store_is_said_not_raised(tmp_path: Path) -> None:
    """The key store's refusal became StoreUnusable, which rotate-kek's check of which KEK opens it let out."""
    from datacoop.cli.vault import _which_kek_opens

    path = tmp_path / "vault-keys.duckdb"
    path.write_bytes(b"\x00garbage" * 1000)
    said = _which_kek_opens(path, Kek(new_data_key()), Kek(new_data_key()), tmp_path / "new.kek")
    assert said.startswith("the store can't be opened now to tell which KEK it takes (cannot"), said
