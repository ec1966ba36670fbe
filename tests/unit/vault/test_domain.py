"""The vault's rules as tables: given the member's state, when a command, then events or a refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from datacoop.events.members import ErasureRequested, MemberRegistered
from datacoop.events.records import KeysShredded, RecordsContributed, SealedRecord
from services.vault import domain
from services.vault.domain import ContributeRecords, ShredKeys, VaultMember, VaultRefused

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ALICE = "0x" + "aa" * 20
MALLORY = "0x" + "bb" * 20
SIG = "0x" + "11" * 65
TAG = "ab" * 32


def _records(n: int) -> tuple[SealedRecord, ...]:
    return tuple(SealedRecord(record_id=f"u1-{i:06d}", nonce="AAAAAAAAAAAAAAAA", ciphertext="AAAA") for i in range(n))


def _contribute(n: int = 3, signer: str = ALICE, issued_at: datetime = NOW) -> ContributeRecords:
    return ContributeRecords(ALICE, signer, "health", issued_at, "u1", TAG, 1, _records(n))


def _given(*events: object) -> VaultMember:
    state = VaultMember(ALICE)
    for i, ev in enumerate(events):
        state = domain.evolve(state, ev, f"ev-{i}")  # type: ignore[arg-type]
    return state


REGISTERED = MemberRegistered(member=ALICE, registered_at=NOW, nonce=0, signature=SIG)
ERASED = ErasureRequested(member=ALICE, requested_at=NOW, nonce=1, signature=SIG)


def test_a_registered_member_contributes_in_chunks_of_at_most_500() -> None:
    events = domain.decide(_contribute(1201), _given(REGISTERED), now=NOW)
    assert [len(e.records) for e in events if isinstance(e, RecordsContributed)] == [500, 500, 201]
    assert {(e.chunk, e.chunks) for e in events if isinstance(e, RecordsContributed)} == {(0, 3), (1, 3), (2, 3)}
    assert all(e.upload_id == "u1" and e.member == ALICE for e in events if isinstance(e, RecordsContributed))


@pytest.mark.parametrize(("given", "cmd", "tag_seen", "kind"), [
    ((REGISTERED,), _contribute(signer=MALLORY), False, "unauthorized"),
    ((REGISTERED,), _contribute(issued_at=NOW - timedelta(minutes=6)), False, "stale"),
    ((REGISTERED,), _contribute(issued_at=NOW + timedelta(minutes=6)), False, "stale"),
    ((), _contribute(), False, "not_found"),
    ((REGISTERED, ERASED), _contribute(), False, "gone"),
    ((REGISTERED,), _contribute(), True, "conflict"),
])
def test_refused_contributions_say_why(given: tuple[object, ...], cmd: ContributeRecords, tag_seen: bool,
                                       kind: str) -> None:
    with pytest.raises(VaultRefused) as refused:
        domain.decide(cmd, _given(*given), now=NOW, tag_seen=tag_seen)
    assert refused.value.kind == kind


def test_erasure_makes_one_keys_shredded_naming_its_cause_and_then_nothing() -> None:
    erased = _given(REGISTERED, ERASED)
    assert not erased.readable
    [event] = domain.decide(ShredKeys(ALICE), erased, now=NOW)
    assert isinstance(event, KeysShredded) and event.cause_event_id == "ev-1"
    shredded = domain.evolve(erased, event)
    assert shredded.shredded and domain.decide(ShredKeys(ALICE), shredded, now=NOW) == []


def test_no_shredding_without_an_erasure_request() -> None:
    assert domain.decide(ShredKeys(ALICE), _given(REGISTERED), now=NOW) == []


def test_a_rebuild_that_sees_keys_shredded_alone_still_knows_the_member_is_gone() -> None:
    state = _given(REGISTERED, KeysShredded(member=ALICE, shredded_at=NOW, cause_event_id="cause"))
    assert state.shredded and state.erased and not state.readable
