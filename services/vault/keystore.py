"""The key store: each member's data key, wrapped by the KEK, in its own DuckDB file.

Not a projection: keys are never in the log, so this file is not rebuilt from the topics and must be
backed up on its own. Deleting a member's row is crypto-shredding: every ciphertext of theirs, in
the log or anywhere else, becomes unreadable. Keys never leave this module unwrapped except to the
vault's own seal/open calls.

A DELETE (even checkpointed) leaves the deleted row's bytes in the database file's free blocks, where
the wrapped key could be read back and unwrapped with the KEK; so after shredding the vault calls
`compact()`, which copies the live rows into a fresh file and puts it in place of the old one. A copy
restored from a backup brings back keys shredded since: the vault shreds them again when it starts
(`holding`, below), before it answers a decrypt request.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from services.vault.crypto import Kek, new_data_key

_DDL = """
CREATE TABLE IF NOT EXISTS data_keys (member VARCHAR PRIMARY KEY, wrapped BLOB NOT NULL,
                                      created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS shredded (member VARCHAR PRIMARY KEY, shredded_at TIMESTAMPTZ NOT NULL);
"""


class KeyShredded(LookupError):
    """The member's key was destroyed (erasure); their records can never be read again."""


class KeyStore:
    def __init__(self, path: str | Path, kek: Kek) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = duckdb.connect(self.path)
        self.conn.execute(_DDL)
        self.kek = kek
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}

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
        if self.path == ":memory:":
            return
        fresh = f"{self.path}.compact"
        with self._lock:
            for leftover in (fresh, f"{fresh}.wal"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            current = self.conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            quoted = fresh.replace("'", "''")
            self.conn.execute(f"ATTACH '{quoted}' AS _fresh")
            try:
                self.conn.execute("USE _fresh")
                self.conn.execute(_DDL)
                self.conn.execute(f'USE "{current}"')
                self.conn.execute("INSERT INTO _fresh.data_keys SELECT * FROM data_keys")
                self.conn.execute("INSERT INTO _fresh.shredded SELECT * FROM shredded")
            finally:
                self.conn.execute(f'USE "{current}"')
                self.conn.execute("DETACH _fresh")
            self.conn.close()
            os.replace(fresh, self.path)
            if os.path.exists(f"{self.path}.wal"):  # the old file's log, already checkpointed into it
                os.remove(f"{self.path}.wal")
            self.conn = duckdb.connect(self.path)

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM data_keys").fetchone()
        return int(row[0]) if row else 0
