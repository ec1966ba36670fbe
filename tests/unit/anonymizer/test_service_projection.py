"""The anonymizer's projection: consents, erasures and record ids from the log decide who is eligible."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

from datacoop.bus.consumer import Delivery
from datacoop.events.envelope import Envelope
from datacoop.events.members import ConsentExpired, ConsentGranted, ConsentRevoked, ErasureRequested
from datacoop.events.records import RecordsContributed
from datacoop.events.registry import Event
from datacoop.store import ProjectionStore
from services.anonymizer.projection import SCHEMA_SQL, AnonymizerProjection

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SIG = "0x" + "11" * 65
A, B = "0x" + "a" * 40, "0x" + "b" * 40
_offsets = count()


def _delivery(ev: Event, subject: str) -> Delivery:
    env = Envelope(source="test", type=ev.type_name(), subject=subject, seq=1, data=ev.model_dump(mode="json"))
    return Delivery("t", 0, next(_offsets), env, ev)


def _grant(member: str, consent_id: str = "c1", purpose: str = "public-statistics",
           expires_at: datetime | None = None) -> Delivery:
    return _delivery(ConsentGranted(member=member, consent_id=consent_id, purpose=purpose, categories=["demographics"],
                                    granted_at=NOW, expires_at=expires_at, catalog_version=1, nonce=1,
                                    signature=SIG), member)


def _records(member: str, ids: list[str]) -> Delivery:
    recs = [{"record_id": i, "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA"} for i in ids]
    return _delivery(RecordsContributed(member=member, category="demographics", upload_id=f"u-{ids[0]}",
                                        upload_tag="0" * 64, schema_version=1, chunk=0, chunks=1, records=recs,
                                        contributed_at=NOW), member)


def _projection(*deliveries: Delivery) -> AnonymizerProjection:
    store = ProjectionStore(":memory:", SCHEMA_SQL)
    projection = AnonymizerProjection(store.conn)
    with store.transaction() as tx:
        projection.apply(tx, list(deliveries))
    return projection


def _inputs(p: AnonymizerProjection, now: datetime = NOW) -> tuple[list[str], int, str]:
    return p.inputs("public-statistics", ["demographics"], now)


def test_members_with_an_active_consent_and_records_are_the_inputs() -> None:
    p = _projection(_grant(A), _grant(B, purpose="ai-training"), _records(A, ["a1", "a2"]), _records(B, ["b1"]))
    members, records, _ = _inputs(p)
    assert (members, records) == ([A], 2)
    assert p.eligible_members("public-statistics", ["demographics"], NOW) == {A}


def test_revocation_expiry_and_erasure_remove_a_member() -> None:
    base = [_grant(A), _grant(B, expires_at=NOW + timedelta(hours=1)), _records(A, ["a1"]), _records(B, ["b1"])]
    before = _inputs(_projection(*base))
    assert before[:2] == ([A, B], 2)
    assert _inputs(_projection(*base), NOW + timedelta(hours=2))[:2] == ([A], 1)  # expired by time alone
    revoked = _projection(*base, _delivery(ConsentRevoked(member=A, consent_id="c1", revoked_at=NOW, nonce=2,
                                                          signature=SIG), A))
    assert _inputs(revoked)[:2] == ([B], 1)
    assert _inputs(revoked)[2] != before[2]
    expired = _projection(*base, _delivery(ConsentExpired(member=B, consent_id="c1", expired_at=NOW), B))
    assert _inputs(expired)[:2] == ([A], 1)
    erased = _projection(*base, _delivery(ErasureRequested(member=A, requested_at=NOW, nonce=2, signature=SIG), A),
                         _records(A, ["a9"]), _grant(A, consent_id="c2"))
    assert _inputs(erased)[:2] == ([B], 1)
    assert erased.conn.execute("SELECT count(*) FROM records WHERE member = ?", [A]).fetchone() == (0,)


def _chunk(member: str, upload: str, chunk: int, chunks: int, ids: list[str]) -> Delivery:
    recs = [{"record_id": i, "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA"} for i in ids]
    return _delivery(RecordsContributed(member=member, category="demographics", upload_id=upload,
                                        upload_tag="0" * 64, schema_version=1, chunk=chunk, chunks=chunks,
                                        records=recs, contributed_at=NOW), member)


def test_an_uploads_records_count_once_all_its_chunks_are_here_as_the_vault_serves_them() -> None:
    store = ProjectionStore(":memory:", SCHEMA_SQL)
    p = AnonymizerProjection(store.conn)

    def apply(*deliveries: Delivery) -> tuple[list[str], int]:
        with store.transaction() as tx:
            p.apply(tx, list(deliveries))
        return _inputs(p)[:2]

    assert apply(_grant(A), _grant(B), _chunk(A, "ua", 0, 2, ["a1", "a2"]), _chunk(B, "ub", 0, 3, ["b1"])) == ([], 0)
    assert apply(_chunk(A, "ua", 1, 2, ["a3"]), _chunk(B, "ub", 1, 3, ["b2"])) == ([A], 3)
    assert apply(_delivery(ErasureRequested(member=B, requested_at=NOW, nonce=2, signature=SIG), B)) == ([A], 3)
    assert store.conn.execute("SELECT count(*) FROM pending_records").fetchone() == (0,), "B's half upload is gone"
    in_one = _projection(_grant(A), _chunk(A, "ua", 0, 2, ["a1", "a2"]), _chunk(A, "ua", 1, 2, ["a3"]))
    assert _inputs(in_one) == _inputs(p)
