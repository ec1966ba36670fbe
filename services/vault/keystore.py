"""The key store: each member's data key, wrapped by the KEK, in its own DuckDB file.

Not a projection: keys are never in the log, so this file is not rebuilt from the topics and must be
backed up on its own. Deleting a member's row is crypto-shredding: every ciphertext of theirs, in
the log or anywhere else, becomes unreadable. Keys never leave this module unwrapped except to the
vault's own seal/open calls.
"""

from __future__ import annotations

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

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM data_keys").fetchone()
        return int(row[0]) if row else 0
