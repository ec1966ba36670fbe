"""The vault's projection applied in batches: what a batch of several members' uploads and erasures writes,
the same whether the events come in one batch or one at a time (a replay sees both shapes)."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope
from datacoop.events.members import ErasureRequested, MemberRegistered
from datacoop.events.records import KeysShredded, RecordsContributed, SealedRecord
from datacoop.events.registry import Event
from services.vault.projection import SCHEMA_SQL, VaultProjection

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ALICE, BOB = "0x" + "aa" * 20, "0x" + "bb" * 20
SIG = "0x" + "11" * 65


def _chunks(member: str, upload: str, sizes: list[int]) -> list[RecordsContributed]:
    return [RecordsContributed(member=member, category="health", upload_id=upload, upload_tag="ab" * 32,
                               schema_version=1, chunk=i, chunks=len(sizes), contributed_at=NOW,
                               records=[SealedRecord(record_id=f"{upload}-{i}-{j}", nonce="AAAAAAAAAAAAAAAA",
                                                     ciphertext="AAAA") for j in range(n)])
            for i, n in enumerate(sizes)]


def _deliveries(events: list[Event], first_offset: int) -> list[Delivery]:
    out = []
    for offset, ev in enumerate(events, start=first_offset):
        subject = ev.member  # type: ignore[attr-defined]
        env = Envelope(id=f"e-{offset}", source="datacoop/test", type=ev.type_name(), subject=subject, seq=offset + 1,
                       data=ev.model_dump(mode="json"))
        out.append(Delivery("records", 0, offset, env, ev))
    return out


def _log() -> list[Event]:
    registered = [MemberRegistered(member=m, registered_at=NOW, nonce=0, signature=SIG) for m in (ALICE, BOB)]
    return [*registered,
            *_chunks(ALICE, "ua1", [3, 2]),
            *_chunks(BOB, "ub1", [4]),
            ErasureRequested(member=BOB, requested_at=NOW, nonce=1, signature=SIG),
            KeysShredded(member=BOB, shredded_at=NOW, cause_event_id="e-1"),
            *_chunks(BOB, "ub2", [2, 2]),  # a replay meets these after the shredding: nothing is stored
            *_chunks(ALICE, "ua2", [1])]


def _state(conn: duckdb.DuckDBPyConnection) -> dict[str, object]:
    return {
        "records": conn.execute("SELECT member, upload_id, count(*) FROM records GROUP BY ALL ORDER BY ALL").fetchall(),
        "uploads": conn.execute("SELECT upload_id, chunk, chunks, member, records FROM uploads ORDER BY 1, 2")
                       .fetchall(),
        "members": conn.execute("SELECT * FROM members ORDER BY member").fetchall(),
    }


def _apply(batches: list[list[Event]]) -> dict[str, object]:
    conn = duckdb.connect(":memory:")
    conn.execute(SCHEMA_SQL)
    projection = VaultProjection(conn)
    offset = 0
    for batch in batches:
        conn.execute("BEGIN TRANSACTION")
        projection.apply(conn, _deliveries(batch, offset))
        conn.execute("COMMIT")
        offset += len(batch)
    return _state(conn)


def test_a_batch_writes_every_chunk_and_skips_records_of_a_member_shredded_earlier_in_it() -> None:
    state = _apply([_log()])
    assert state["records"] == [(ALICE, "ua1", 5), (ALICE, "ua2", 1)]  # Bob's first upload went with his key
    assert state["uploads"] == [("ua1", 0, 2, ALICE, 3), ("ua1", 1, 2, ALICE, 2), ("ua2", 0, 1, ALICE, 1),
                                ("ub1", 0, 1, BOB, 4)]
    assert [(m[0], m[4]) for m in state["members"]] == [(ALICE, False), (BOB, True)]  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_batches_of_any_size_give_the_state_of_one_batch(size: int) -> None:
    log = _log()
    assert _apply([log[i:i + size] for i in range(0, len(log), size)]) == _apply([log])


def test_a_chunk_read_twice_adds_no_upload_row() -> None:
    again = _chunks(ALICE, "ua1", [3, 2])
    once = _apply([_log()])
    twice = _apply([_log(), again[:1]])
    assert twice["uploads"] == once["uploads"]


def test_an_upload_is_served_only_once_all_its_chunks_are_here() -> None:
    """A publish that failed part-way leaves some chunks in the log: they are projected but never read,
    listed, counted or taken for the member's earlier upload of the same file."""
    conn = duckdb.connect(":memory:")
    conn.execute(SCHEMA_SQL)
    projection = VaultProjection(conn)
    chunks = _chunks(ALICE, "ua1", [3, 3, 2])
    registered = MemberRegistered(member=ALICE, registered_at=NOW, nonce=0, signature=SIG)

    def apply(events: list[Event], offset: int) -> None:
        conn.execute("BEGIN TRANSACTION")
        projection.apply(conn, _deliveries(events, offset))
        conn.execute("COMMIT")

    def served() -> tuple[object, ...]:
        rows = projection.select(category=None, members=None, record_ids=None, after="", limit=100)
        return (len(rows), [u["records"] for u in projection.summary(ALICE)], projection.tag_seen(ALICE, "ab" * 32),
                projection.counts()["records"], projection.counts()["uploads_incomplete"])

    apply([registered, *chunks[:2]], 0)
    assert served() == (0, [], None, 0, 1)
    apply(chunks[2:], 3)
    assert served() == (8, [8], "ua1", 8, 0)
