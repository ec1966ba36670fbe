"""Envelope encryption: records open only with the member's key and their own (member, record id)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.vault.crypto import (
    Kek,
    KeyUnwrapFailed,
    RecordUnreadable,
    new_data_key,
    new_kek_b64,
    open_one,
    parse_kek,
    seal_many,
    upload_tag,
)
from services.vault.keystore import KeyShredded, KeyStore

ALICE, BOB = "0x" + "aa" * 20, "0x" + "bb" * 20


def test_sealed_record_opens_with_its_key_member_and_id_only() -> None:
    key = new_data_key()
    [(rid, nonce, ct)] = seal_many(key, ALICE, [("r-1", b'{"steps":187654}')])
    assert b"187654" not in ct.encode()
    assert open_one(AESGCM(key), ALICE, rid, nonce, ct) == b'{"steps":187654}'
    for member, record_id, k in [(BOB, rid, key), (ALICE, "r-2", key), (ALICE, rid, new_data_key())]:
        with pytest.raises(RecordUnreadable):
            open_one(AESGCM(k), member, record_id, nonce, ct)


def test_nonces_are_never_reused_within_a_batch() -> None:
    sealed = seal_many(new_data_key(), ALICE, [(f"r-{i}", b"same") for i in range(1000)])
    assert len({n for _, n, _ in sealed}) == 1000 and len({c for _, _, c in sealed}) == 1000


def test_a_wrapped_key_opens_only_under_its_kek_and_member() -> None:
    kek = Kek(parse_kek(new_kek_b64()))
    key = new_data_key()
    wrapped = kek.wrap(ALICE, key)
    assert key not in wrapped and kek.unwrap(ALICE, wrapped) == key
    with pytest.raises(KeyUnwrapFailed):
        kek.unwrap(BOB, wrapped)
    with pytest.raises(KeyUnwrapFailed):
        Kek(parse_kek(new_kek_b64())).unwrap(ALICE, wrapped)


def test_bad_kek_settings_are_refused_with_how_to_make_one() -> None:
    with pytest.raises(ValueError, match="openssl rand"):
        parse_kek("c2hvcnQ=")
    with pytest.raises(ValueError, match="base64"):
        parse_kek("not base64 !!")


def test_upload_tag_depends_on_member_content_and_tag_key() -> None:
    tag_key, other = new_data_key(), new_data_key()
    h = b"\x01" * 32
    assert upload_tag(tag_key, ALICE, h) == upload_tag(tag_key, ALICE.upper().replace("0X", "0x"), h)
    assert len({upload_tag(tag_key, ALICE, h), upload_tag(tag_key, BOB, h), upload_tag(tag_key, ALICE, b"\x02" * 32),
                upload_tag(other, ALICE, h)}) == 4


def test_key_store_creates_once_and_shredding_is_forever(tmp_path: object) -> None:
    kek = Kek(parse_kek(new_kek_b64()))
    path = f"{tmp_path}/keys.duckdb"
    store = KeyStore(path, kek)
    key = store.get_or_create(ALICE)
    assert store.get_or_create(ALICE) == key and store.get(BOB) is None
    store.close()
    reopened = KeyStore(path, kek)
    assert reopened.get(ALICE) == key, "keys survive a restart"
    reopened.shred(ALICE, datetime.now(UTC))
    reopened.shred(ALICE, datetime.now(UTC))
    with pytest.raises(KeyShredded):
        reopened.get(ALICE)
    with pytest.raises(KeyShredded):
        reopened.get_or_create(ALICE)
    raw = reopened.conn.execute("SELECT count(*) FROM data_keys").fetchone()
    assert raw == (0,)
    reopened.close()


def test_compaction_leaves_no_shredded_key_in_the_file(tmp_path: object) -> None:
    kek = Kek(parse_kek(new_kek_b64()))
    path = f"{tmp_path}/keys.duckdb"
    store = KeyStore(path, kek)
    members = [f"0x{i:040x}" for i in range(200)]
    keys = {m: store.get_or_create(m) for m in members}
    victim = members[7]
    wrapped = bytes(store.conn.execute("SELECT wrapped FROM data_keys WHERE member = ?", [victim]).fetchone()[0])
    store.close()
    store = KeyStore(path, kek)
    store.shred(victim, datetime.now(UTC))
    assert wrapped in Path(path).read_bytes(), "a DELETE alone leaves the bytes (why compact exists)"
    assert store.holding([victim, members[8]]) == [members[8]]
    store.compact()
    assert wrapped not in Path(path).read_bytes()
    assert store.get(members[8]) == keys[members[8]], "live keys survive the compaction"
    with pytest.raises(KeyShredded):
        store.get(victim)
    store.close()
    reopened = KeyStore(path, kek)
    assert reopened.count() == 199 and reopened.is_shredded(victim)
    reopened.close()
