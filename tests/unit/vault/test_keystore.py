"""The key store under its KEK: a wrong KEK is refused when the store opens, and a rotation re-wraps every
key under a new KEK so that the old one opens nothing of the store's new file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from services.vault.crypto import Kek, KeyUnwrapFailed, legacy_tag_key, new_kek_b64, parse_kek, upload_tag
from services.vault.keystore import KekMismatch, KeyShredded, KeyStore

MEMBERS = [f"0x{i:040x}" for i in range(1, 301)]
DIGEST = b"\x07" * 32


def _kek() -> Kek:
    return Kek(parse_kek(new_kek_b64()))


def _wrapped(store: KeyStore, member: str) -> bytes:
    return bytes(store.conn.execute("SELECT wrapped FROM data_keys WHERE member = ?", [member]).fetchone()[0])


def _holds(path: Path, blob: bytes) -> bool:
    return any(blob in p.read_bytes() for p in path.parent.glob(f"{path.name}*"))


def test_a_store_opens_only_with_its_kek(tmp_path: Path) -> None:
    path, kek = tmp_path / "keys.duckdb", _kek()
    store = KeyStore(path, kek)
    store.get_or_create(MEMBERS[0])
    store.close()
    with pytest.raises(KekMismatch, match="does not open the key store"):
        KeyStore(path, _kek())
    empty = tmp_path / "empty.duckdb"  # no data key yet: the check value alone tells
    KeyStore(empty, kek).close()
    with pytest.raises(KekMismatch):
        KeyStore(empty, _kek())
    assert KeyStore(path, kek).get(MEMBERS[0]) is not None


def test_rotation_rewraps_every_key_and_the_old_kek_opens_nothing_after(tmp_path: Path) -> None:
    path, old, new = tmp_path / "keys.duckdb", _kek(), _kek()
    store = KeyStore(path, old)
    keys = {m: store.get_or_create(m) for m in MEMBERS}
    tag = store.upload_tag(MEMBERS[3], DIGEST)
    store.shred(MEMBERS[5], datetime.now(UTC))
    before = {m: _wrapped(store, m) for m in MEMBERS[:50] if m != MEMBERS[5]}
    seen: list[tuple[int, int]] = []

    assert store.rotate(new, progress=lambda done, total: seen.append((done, total))) == len(MEMBERS) - 1
    assert seen[-1] == (len(MEMBERS) - 1, len(MEMBERS) - 1)
    assert store.get(MEMBERS[0]) == keys[MEMBERS[0]], "the open store goes on with the new KEK"
    store.close()
    assert not any(_holds(path, w) for w in before.values()), "no key wrapped under the old KEK is left"
    with pytest.raises(KekMismatch):
        KeyStore(path, old)

    reopened = KeyStore(path, new)
    live = [m for m in MEMBERS if m != MEMBERS[5]]
    assert {m: reopened.get(m) for m in live} == {m: keys[m] for m in live}
    with pytest.raises(KeyShredded):
        reopened.get(MEMBERS[5])
    assert reopened.upload_tag(MEMBERS[3], DIGEST) == tag, "an upload seen before is still recognised"
    assert not list(tmp_path.glob("*.rewrite*")), "no working copy left behind"
    reopened.close()


def test_a_key_that_does_not_open_stops_the_rotation_before_anything_changes(tmp_path: Path) -> None:
    path, old = tmp_path / "keys.duckdb", _kek()
    store = KeyStore(path, old)
    for m in MEMBERS[:10]:
        store.get_or_create(m)
    store.conn.execute("UPDATE data_keys SET wrapped = ? WHERE member = ?", [b"\x00" * 60, MEMBERS[4]])
    store._cache.clear()
    with pytest.raises(KeyUnwrapFailed, match=MEMBERS[4]):
        store.rotate(_kek())
    assert store.kek is old and store.get(MEMBERS[0]) is not None
    store.close()
    assert KeyStore(path, old).count() == 10


def test_the_new_kek_must_differ(tmp_path: Path) -> None:
    kek = _kek()
    store = KeyStore(tmp_path / "keys.duckdb", kek)
    with pytest.raises(ValueError, match="current one"):
        store.rotate(Kek(kek.key))
    store.close()


def test_a_store_made_before_the_kek_check_is_checked_and_keeps_its_upload_tags(tmp_path: Path) -> None:
    """Key stores made by earlier versions hold no secrets: the first open checks the KEK against a data
    key, and the tag key stays the one derived from the KEK then, so earlier uploads are still seen."""
    path, kek = tmp_path / "keys.duckdb", _kek()
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE data_keys (member VARCHAR PRIMARY KEY, wrapped BLOB NOT NULL, "
                 "created_at TIMESTAMPTZ NOT NULL)")
    conn.execute("CREATE TABLE shredded (member VARCHAR PRIMARY KEY, shredded_at TIMESTAMPTZ NOT NULL)")
    conn.execute("INSERT INTO data_keys VALUES (?, ?, ?)", [MEMBERS[0], kek.wrap(MEMBERS[0], b"k" * 32),
                                                           datetime.now(UTC)])
    conn.close()
    with pytest.raises(KekMismatch):
        KeyStore(path, _kek())
    store = KeyStore(path, kek)
    assert store.get(MEMBERS[0]) == b"k" * 32
    assert store.upload_tag(MEMBERS[0], DIGEST) == upload_tag(legacy_tag_key(kek), MEMBERS[0], DIGEST)
    store.rotate(_kek())
    assert store.upload_tag(MEMBERS[0], DIGEST) == upload_tag(legacy_tag_key(kek), MEMBERS[0], DIGEST)
    store.close()


def test_a_rotation_that_fails_says_which_kek_the_store_opens_with(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from datacoop.cli import app

    kek_b64 = new_kek_b64()
    store = KeyStore(tmp_path / "vault-keys.duckdb", Kek(parse_kek(kek_b64)))
    key = store.get_or_create(MEMBERS[0])
    store.close()

    def disk_full(self: KeyStore, copy: object) -> None:
        raise duckdb.IOException("No space left on device")

    monkeypatch.setattr(KeyStore, "_rewrite", disk_full)
    result = CliRunner().invoke(app, ["vault", "rotate-kek", "--new-kek-file", str(tmp_path / "new-kek")],
                                env={"DATACOOP_VAULT_KEK": kek_b64, "DATACOOP_DATA_DIR": str(tmp_path),
                                     "COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    assert "nothing was put in place: the store still opens with the current KEK" in result.output
    assert KeyStore(tmp_path / "vault-keys.duckdb", Kek(parse_kek(kek_b64))).get(MEMBERS[0]) == key


async def test_a_key_deleted_by_a_shredder_pass_that_then_fails_is_compacted_out_of_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is deleted before its KeysShredded is appended; when the append fails (the broker is away), the
    deleted key's bytes must not stay in the key store's free blocks until some later pass succeeds."""
    from types import SimpleNamespace

    from services.vault.domain import VaultMember
    from services.vault.service import VaultService
    from services.vault.settings import VaultSettings

    service = VaultService(VaultSettings(data_dir=tmp_path, vault_kek=new_kek_b64(), dev_secrets=True,
                                         log_json=False))
    victim, kept = MEMBERS[0], MEMBERS[1]
    for member in MEMBERS:
        service.keys.get_or_create(member)
    wrapped = _wrapped(service.keys, victim)

    async def broker_away(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the broker is away")

    monkeypatch.setattr(VaultService, "ready", property(lambda self: True))
    service.writer = SimpleNamespace(execute=broker_away)  # type: ignore[assignment]
    service._restored_checked = True  # the start's own compaction is done
    monkeypatch.setattr(service.projection, "erased_unshredded", lambda limit=1000: [victim])
    monkeypatch.setattr(service.projection, "get", lambda member: VaultMember(
        member, registered=True, erased=True, erasure_event_id="e-1"))
    monkeypatch.setattr(service.projection, "shredded_members", lambda: [])
    with pytest.raises(ConnectionError):
        await service.shred_once()
    path = tmp_path / "vault-keys.duckdb"
    assert service.keys.holding([victim, kept]) == [kept]
    assert not _holds(path, wrapped), "the deleted key is still in the file"
    service.keys.close()
    service.store.close()
