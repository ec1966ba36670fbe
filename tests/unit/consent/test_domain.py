"""Consent rules as given-events / when-command / then-events tables: pure, no broker."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest

from datacoop.events.members import (
    ConsentExpired,
    ConsentGranted,
    ConsentRevoked,
    ErasureRequested,
    MemberRegistered,
)
from datacoop.events.registry import Event
from services.consent import domain
from services.consent.catalog import load_catalog

ALICE = "0x" + "a1" * 20
MALLORY = "0x" + "b2" * 20
SIG = "0x" + "00" * 65
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()


def given(*events: Event) -> domain.Member:
    return reduce(domain.evolve, events, domain.Member(ALICE))


REGISTERED = MemberRegistered(member=ALICE, registered_at=NOW, nonce=0, signature=SIG)


def granted(cid: str = "c1", nonce: int = 1, expires: datetime | None = None) -> ConsentGranted:
    return ConsentGranted(member=ALICE, consent_id=cid, purpose="health-research", categories=["health"],
                          granted_at=NOW, expires_at=expires, catalog_version=1, nonce=nonce, signature=SIG)


def grant(cid: str = "c2", nonce: int = 1, purpose: str = "health-research", categories: tuple[str, ...] = ("health",),
          signer: str = ALICE, expires: datetime | None = None) -> domain.GrantConsent:
    return domain.GrantConsent(ALICE, signer, nonce, SIG, cid, purpose, categories, expires)


def then(cmd: domain.Command, state: domain.Member, now: datetime = NOW) -> list[Event]:
    return domain.decide(cmd, state, CATALOG, now)


def refused(cmd: domain.Command, state: domain.Member) -> domain.ConsentRefused:
    with pytest.raises(domain.ConsentRefused) as info:
        then(cmd, state)
    return info.value


def test_registration_emits_member_registered_with_nonce_zero() -> None:
    events = then(domain.RegisterMember(ALICE, ALICE, 0, SIG), given())
    assert events == [MemberRegistered(member=ALICE, registered_at=NOW, nonce=0, signature=SIG)]


def test_second_registration_is_a_conflict() -> None:
    assert refused(domain.RegisterMember(ALICE, ALICE, 1, SIG), given(REGISTERED)).kind == "conflict"


def test_grant_by_registered_member_with_next_nonce_is_accepted_and_categories_normalised() -> None:
    [event] = then(grant(categories=("health", "fitness", "health")), given(REGISTERED))
    assert isinstance(event, ConsentGranted)
    assert event.categories == ["fitness", "health"] and event.catalog_version == CATALOG.version


@pytest.mark.parametrize(("cmd", "kind", "words"), [
    (grant(nonce=2, signer=MALLORY), "unauthorized", MALLORY),
    (grant(nonce=1), "conflict", "already used"),
    (grant(nonce=5), "conflict", "next nonce is 2"),
    (grant(nonce=2, purpose="mind-reading"), "unprocessable", "health-research"),
    (grant(nonce=2, categories=("dreams",)), "unprocessable", "demographics"),
    (grant(nonce=2, expires=NOW - timedelta(seconds=1)), "unprocessable", "in the past"),
    (grant(cid="c1", nonce=2), "conflict", "already exists"),
])
def test_bad_grants_are_refused_with_what_to_do(cmd: domain.GrantConsent, kind: str, words: str) -> None:
    err = refused(cmd, given(REGISTERED, granted("c1", 1)))
    assert err.kind == kind and words in err.message


def test_unregistered_member_cannot_grant() -> None:
    assert refused(grant(), given()).kind == "not_found"


def test_revoking_an_active_consent_then_again_is_a_conflict() -> None:
    state = given(REGISTERED, granted("c1", 1))
    [event] = then(domain.RevokeConsent(ALICE, ALICE, 2, SIG, "c1"), state)
    assert isinstance(event, ConsentRevoked)
    state = domain.evolve(state, event)
    assert state.consents["c1"].status == "revoked"
    err = refused(domain.RevokeConsent(ALICE, ALICE, 3, SIG, "c1"), state)
    assert err.kind == "conflict" and "revoked" in err.message


def test_revoking_an_unknown_consent_is_not_found() -> None:
    assert refused(domain.RevokeConsent(ALICE, ALICE, 1, SIG, "nope"), given(REGISTERED)).kind == "not_found"


def test_expiry_sweep_expires_only_due_active_consents_once() -> None:
    state = given(REGISTERED, granted("soon", 1, NOW + timedelta(minutes=1)),
                  granted("later", 2, NOW + timedelta(days=1)), granted("never", 3))
    later = NOW + timedelta(minutes=2)
    events = then(domain.ExpireDue(ALICE, later), state, later)
    assert events == [ConsentExpired(member=ALICE, consent_id="soon", expired_at=later)]
    state = domain.evolve(state, events[0])
    assert then(domain.ExpireDue(ALICE, later), state, later) == []
    assert domain.effective_status(state.consents["later"], NOW + timedelta(days=2)) == "expired"


def test_erasure_revokes_active_consents_and_refuses_everything_after() -> None:
    state = given(REGISTERED, granted("c1", 1))
    [event] = then(domain.RequestErasure(ALICE, ALICE, 2, SIG), state)
    assert isinstance(event, ErasureRequested)
    state = domain.evolve(state, event)
    assert state.consents["c1"].status == "revoked"
    assert state.consents["c1"].history[-1].reason == "erasure requested"
    assert refused(grant(nonce=3), state).kind == "gone"
    again = refused(domain.RegisterMember(ALICE, ALICE, 3, SIG), state)  # not "already registered": forgotten
    assert again.kind == "gone" and "register a new wallet" in str(again)


def test_history_records_every_state_change_in_order() -> None:
    state = given(REGISTERED, granted("c1", 1), ConsentRevoked(member=ALICE, consent_id="c1", revoked_at=NOW,
                                                               nonce=2, signature=SIG))
    assert [h.state for h in state.consents["c1"].history] == ["active", "revoked"]
    assert state.next_nonce == 3


def test_a_grant_changes_only_the_nonce_and_the_consents_of_the_member() -> None:
    before = dataclasses.replace(given(REGISTERED, granted("c1")), erased_at=NOW + timedelta(days=1))
    after = domain.evolve(before, granted("c2", nonce=2))
    assert dataclasses.replace(after, last_nonce=before.last_nonce, consents=before.consents) == before
    assert after.last_nonce == 2 and list(after.consents) == ["c1", "c2"]
    assert after.consents["c1"] is before.consents["c1"]


def test_overlapping_consents_are_those_in_effect_for_the_same_purpose_and_a_shared_category() -> None:
    later = NOW + timedelta(days=1)
    state = given(REGISTERED, granted("c1", 1), granted("c2", 2), granted("c3", 3, expires=later),
                  granted("c4", 4).model_copy(update={"purpose": "public-statistics"}),
                  granted("c5", 5).model_copy(update={"categories": ["fitness"]}), granted("c6", 6),
                  ConsentRevoked(member=ALICE, consent_id="c6", revoked_at=NOW, nonce=7, signature=SIG))
    assert [c.consent_id for c in domain.overlapping(state, "c1", NOW)] == ["c2", "c3"]
    assert [c.consent_id for c in domain.overlapping(state, "c1", later)] == ["c2"], "c3 has expired by then"
    assert domain.overlapping(state, "c4", NOW) == [] and domain.overlapping(state, "nope", NOW) == []
