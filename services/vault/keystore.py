"""The key store: each member's data key, wrapped by the KEK, in its own DuckDB file.

Not a projection: keys are never in the log, so this file is not rebuilt from the topics and must be
backed up on its own. Deleting a member's row is crypto-shredding: every ciphertext of theirs, in
the log or anywhere else, becomes unreadable. Keys never leave this module unwrapped except to the
vault's own seal/open calls.

A DELETE (even checkpointed) leaves the deleted row's bytes in the database file's free blocks, where
the wrapped key could be read back and unwrapped with the KEK; so after shredding the vault calls
`compact()`, which copies the live rows into a fresh file and puts it in place of the old one. A copy
restored from a backup brings back keys shredded since: the vault shreds them again on its first
shredder pass once it has caught up (`holding`, below); until then the decrypt API already refuses those
members, whom its projection knows as shredded.

Rotating the KEK (`rotate`, run by `datacoop vault rotate-kek` while the vault is stopped) re-wraps
every data key and the store's own secrets under a new KEK into a fresh file, put in place atomically.
Once the old KEK is destroyed, neither the old file's remnants nor backups made before can be opened.
The store also holds a check value wrapped under its KEK, so a vault started with another KEK (the old
one after a rotation, or a mistyped one) refuses to start instead of failing on each member's key.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from datacoop.store import opened, unusable_as
from services.vault.crypto import KEY_BYTES, Kek, KeyUnwrapFailed, legacy_tag_key, new_data_key, upload_tag

_DDL = """
CREATE TABLE IF NOT EXISTS data_keys (member VARCHAR PRIMARY KEY, wrapped BLOB NOT NULL,
                                      created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS shredded (member VARCHAR PRIMARY KEY, shredded_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name VARCHAR PRIMARY KEY, wrapped BLOB NOT NULL);
"""
log = logging.getLogger("datacoop.vault")
_KEK_CHECK = b"datacoop vault key store"  # wrapped under the KEK: opens only with the right one


class KekMismatch(ValueError):
    """The KEK given does not open this key store (it was made, or rotated, under another)."""


class KeyShredded(LookupError):
    """The member's key was destroyed (erasure); their records can never be read again."""


class KeyStore:
    def __init__(self, path: str | Path, kek: Kek) -> None:
        self.path = str(path)
        with unusable_as(self.path, "key store", rebuildable=False):
            self.conn = opened(self.path, "key store", rebuildable=False)
            self.conn.execute(_DDL)
        self.kek = kek
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}
        try:
            self._tag_key = self._open_secrets()
        except BaseException:
            self.conn.close()
            raise

    def _open_secrets(self) -> bytes:
        """Check the KEK against the store and return the upload-tag key. A store made before the store held
        its secrets is checked against a data key and given them, its tag key derived as it was then."""
        stored = dict(self.conn.execute("SELECT name, wrapped FROM secrets").fetchall())
        if "kek_check" in stored:
            try:
                self.kek.open_secret("kek_check", bytes(stored["kek_check"]))
                return self.kek.open_secret("upload_tag_key", bytes(stored["upload_tag_key"]))
            except KeyUnwrapFailed:
                raise self._mismatch() from None
        row = self.conn.execute("SELECT member, wrapped FROM data_keys LIMIT 1").fetchone()
        if row is not None:
            try:
                self.kek.unwrap(row[0], bytes(row[1]))
            except KeyUnwrapFailed:
                raise self._mismatch() from None
        used = row is not None or self.conn.execute("SELECT 1 FROM shredded LIMIT 1").fetchone() is not None
        if used and row is None:  # an earlier version's store that holds no key to check this KEK against
            log.warning("the key store %s holds no data key to check the KEK against; from now on it opens with "
                        "this KEK alone: if DATACOOP_VAULT_KEK is not the one it was made with, stop the vault and "
                        "restore the store from before this start", self.path)
        tag_key = legacy_tag_key(self.kek) if used else os.urandom(KEY_BYTES)
        self.conn.execute("INSERT INTO secrets VALUES ('kek_check', ?), ('upload_tag_key', ?)",
                          [self.kek.seal_secret("kek_check", _KEK_CHECK),
                           self.kek.seal_secret("upload_tag_key", tag_key)])
        return tag_key

    def _mismatch(self) -> KekMismatch:
        return KekMismatch(f"the KEK given does not open the key store {self.path}: it was made or rotated under "
                           "another one; give the KEK it was last rotated to (`datacoop vault rotate-kek` prints "
                           "where it wrote it), or restore the store that goes with this KEK")

    def upload_tag(self, member: str, content_hash: bytes) -> str:
        """HMAC of (member, content hash) under the store's upload-tag key: the same upload, the same tag."""
        return upload_tag(self._tag_key, member, content_hash)

    def close(self) -> None:
        self.conn.close()

    def is_shredded(self, member: str) -> bool:
        return self.conn.execute("SELECT 1 FROM shredded WHERE member = ?", [member]).fetchone() is not None

    def get(self, member: str) -> bytes | None:
        """The member's data key, or None when they have none yet; KeyShredded once destroyed."""
        if member in self._cache:
            return self._cache[member]
        with self._lock:
            row = self.conn.execute("SELECT wrapped FROM data_keys WHERE member = ?", [member]).fetchone()
            if row is None:
                if self.is_shredded(member):
                    raise KeyShredded(f"the data key of {member} was shredded; their records are gone")
                return None
            key = self.kek.unwrap(member, bytes(row[0]))
            self._cache[member] = key
            return key

    def get_or_create(self, member: str) -> bytes:
        """Made (and stored, wrapped) on the member's first contribution, before anything is published."""
        key = self.get(member)
        if key is not None:
            return key
        with self._lock:
            key = new_data_key()
            self.conn.execute("INSERT INTO data_keys VALUES (?, ?, ?)",
                              [member, self.kek.wrap(member, key), datetime.now(UTC)])
            self._cache[member] = key
            return key

    def shred(self, member: str, at: datetime) -> None:
        """Destroy the key (idempotent) and remember that it was destroyed, so none is made again."""
        with self._lock:
            self._cache.pop(member, None)
            self.conn.execute("BEGIN TRANSACTION")
            self.conn.execute("DELETE FROM data_keys WHERE member = ?", [member])
            self.conn.execute("INSERT OR IGNORE INTO shredded VALUES (?, ?)", [member, at])
            self.conn.execute("COMMIT")
            self.conn.execute("CHECKPOINT")

    def holding(self, members: list[str]) -> list[str]:
        """Which of `members` have a data key here."""
        if not members:
            return []
        rows = self.conn.execute("SELECT member FROM data_keys WHERE member IN (SELECT unnest(?::VARCHAR[]))",
                                 [members]).fetchall()
        return [r[0] for r in rows]

    def compact(self) -> None:
        """Rewrite the store into a fresh file holding only the live rows and replace the old file with it
        (atomically: a crash leaves the old file or the new one, never neither), so that no deleted
        (shredded) key survives in the file's free blocks. Blocks the store while it copies (time grows
        with the number of keys)."""
        def copy(conn: duckdb.DuckDBPyConnection) -> None:
            for table in ("data_keys", "shredded", "secrets"):
                conn.execute(f"INSERT INTO _fresh.{table} SELECT * FROM {table}")

        with self._lock:
            self._rewrite(copy)

    def rotate(self, new_kek: Kek, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-wrap every data key and the store's secrets under `new_kek` into a fresh file that replaces
        this one (atomically, as `compact`); returns how many data keys. From then on the store opens only
        with `new_kek`. A key that does not open under the current KEK stops it before anything is written.
        `progress(done, total)` is called as keys are re-wrapped."""
        if new_kek.key == self.kek.key:
            raise ValueError("the new KEK is the current one; generate a new one (`openssl rand -base64 32`)")
        with self._lock:
            rows = self.conn.execute("SELECT member, wrapped, created_at FROM data_keys ORDER BY member").fetchall()
            members, wrapped, created = [], [], []
            for done, (member, old, at) in enumerate(rows, start=1):
                members.append(member)
                wrapped.append(new_kek.wrap(member, self.kek.unwrap(member, bytes(old))))
                created.append(at)
                if progress is not None and (done % 1000 == 0 or done == len(rows)):
                    progress(done, len(rows))
            secrets = [new_kek.seal_secret("kek_check", _KEK_CHECK),
                       new_kek.seal_secret("upload_tag_key", self._tag_key)]
            rewrapped = pa.table({"member": pa.array(members, pa.string()), "wrapped": pa.array(wrapped, pa.binary()),
                                  "created_at": pa.array(created, pa.timestamp("us", tz="UTC"))})

            def copy(conn: duckdb.DuckDBPyConnection) -> None:
                conn.register("_rewrapped", rewrapped)
                conn.execute("INSERT INTO _fresh.data_keys SELECT member, wrapped, created_at FROM _rewrapped")
                conn.unregister("_rewrapped")
                conn.execute("INSERT INTO _fresh.shredded SELECT * FROM shredded")
                conn.execute("INSERT INTO _fresh.secrets VALUES ('kek_check', ?), ('upload_tag_key', ?)", secrets)

            self._rewrite(copy)
            self.kek = new_kek
            return len(rows)

    def _rewrite(self, copy: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Build a fresh file (`copy` fills its tables, attached as `_fresh`), make it durable, and put it in
        place of the store's file. Call holding the lock."""
        if self.path == ":memory:":
            return
        fresh = f"{self.path}.rewrite"
        for leftover in (fresh, f"{fresh}.wal", f"{self.path}.compact", f"{self.path}.compact.wal"):
            if os.path.exists(leftover):  # a crash's half-written copy; the store itself is whole
                os.remove(leftover)
        # the store's log folded into its file first: once the fresh file is in place, no old log may be
        # replayed onto it (a crash between the replace and the log's removal below finds it empty)
        self.conn.execute("CHECKPOINT")
        current = self.conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        quoted = fresh.replace("'", "''")
        self.conn.execute(f"ATTACH '{quoted}' AS _fresh")
        try:
            self.conn.execute("USE _fresh")
            self.conn.execute(_DDL)
            self.conn.execute(f'USE "{current}"')
            self.conn.execute("BEGIN TRANSACTION")
            try:
                copy(self.conn)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            self.conn.execute("CHECKPOINT _fresh")
        except BaseException:
            self.conn.execute(f'USE "{current}"')
            self.conn.execute("DETACH _fresh")
            for partial in (fresh, f"{fresh}.wal"):
                if os.path.exists(partial):
                    os.remove(partial)
            raise
        self.conn.execute(f'USE "{current}"')
        self.conn.execute("DETACH _fresh")
        _fsync(fresh)
        self.conn.close()
        os.replace(fresh, self.path)
        _fsync(str(Path(self.path).parent))
        if os.path.exists(f"{self.path}.wal"):  # the old file's log, already checkpointed into it
            os.remove(f"{self.path}.wal")
        self.conn = opened(self.path, "key store", rebuildable=False)

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM data_keys").fetchone()
        return int(row[0]) if row else 0


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
