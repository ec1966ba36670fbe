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


def test_grant_by_registered_member_with_next_nonce_keeps_the_categories_in_the_order_signed() -> None:
    """EIP-712 hashes a string[] in order: the event keeps the list signed, so its signature verifies against it."""
    [event] = then(grant(categories=("health", "fitness")), given(REGISTERED))
    assert isinstance(event, ConsentGranted)
    assert event.categories == ["health", "fitness"] and event.catalog_version == CATALOG.version


@pytest.mark.parametrize(("cmd", "kind", "words"), [
    (grant(nonce=2, signer=MALLORY), "unauthorized", MALLORY),
    (grant(nonce=1), "conflict", "already used"),
    (grant(nonce=5), "conflict", "next nonce is 2"),
    (grant(nonce=2, purpose="mind-reading"), "unprocessable", "health-research"),
    (grant(nonce=2, categories=("dreams",)), "unprocessable", "demographics"),
    (grant(nonce=2, expires=NOW - timedelta(seconds=1)), "unprocessable", "in the past"),
    (grant(nonce=2, categories=("health", "fitness", "health")), "unprocessable", "'health' more than once"),
    (grant(cid="c1", nonce=2, categories=("fitness",)), "conflict", "already exists"),
    (grant(cid="c1", nonce=2), "conflict", "already recorded as consent c1 (health-research on health"),
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


def test_revoking_a_consent_expired_but_not_yet_swept_is_a_conflict_naming_the_expiry() -> None:
    expiry = NOW + timedelta(minutes=1)
    state = given(REGISTERED, granted("c1", 1, expiry))
    with pytest.raises(domain.ConsentRefused) as info:
        then(domain.RevokeConsent(ALICE, ALICE, 2, SIG, "c1"), state, expiry + timedelta(seconds=1))
    assert info.value.kind == "conflict"
    assert info.value.message == f"consent c1 expired at {expiry.isoformat()}; nothing to revoke"


def test_a_retried_signed_grant_or_revoke_is_already_recorded_and_another_with_its_nonce_a_replay() -> None:
    grant_sig, revoke_sig = "0x" + "12" * 65, "0x" + "34" * 65
    state = given(REGISTERED, granted("c1", 1).model_copy(update={"signature": grant_sig}))
    retry = domain.GrantConsent(ALICE, ALICE, 1, grant_sig, "c1", "health-research", ("health",))
    err = refused(retry, state)
    assert isinstance(err, domain.AlreadyRecorded) and err.slug == "already-recorded" and err.status == 409
    assert "already recorded as consent c1 (this exact signed grant" in err.message
    replay = refused(domain.GrantConsent(ALICE, ALICE, 1, SIG, "c9", "health-research", ("health",)), state)
    assert not isinstance(replay, domain.AlreadyRecorded) and "already used" in replay.message
    state = domain.evolve(state, ConsentRevoked(member=ALICE, consent_id="c1", revoked_at=NOW, nonce=2,
                                                signature=revoke_sig))
    err = refused(domain.RevokeConsent(ALICE, ALICE, 2, revoke_sig, "c1"), state)
    assert isinstance(err, domain.AlreadyRecorded) and "this exact signed revoke" in err.message
    again = refused(domain.GrantConsent(ALICE, ALICE, 3, SIG, "c1", "health-research", ("health",)), state)
    assert not isinstance(again, domain.AlreadyRecorded), "the same grant re-signed, but c1 was revoked since"
    assert "already exists (health-research on health, granted" in again.message and "now revoked" in again.message


def test_a_wrong_signer_is_told_the_signature_may_cover_other_fields_or_another_domain() -> None:
    err = refused(grant(nonce=2, signer=MALLORY), given(REGISTERED))
    assert err.slug == "wrong-signer" and err.status == 401
    assert f"recovers to {MALLORY}, which is not the member {ALICE}" in err.message
    assert "other fields or another EIP-712 domain" in err.message and "GET /eip712" in err.message


def test_revoking_an_unknown_consent_is_not_found() -> None:
    assert refused(domain.RevokeConsent(ALICE, ALICE, 1, SIG, "nope"), given(REGISTERED)).kind == "not_found"


def test_expiry_sweep_expires_only_due_active_consents_once() -> None:
    state = given(REGISTERED, granted("soon", 1, NOW + timedelta(minutes=1)),
                  granted("later", 2, NOW + timedelta(days=1)), granted("never", 3))
    later = NOW + timedelta(minutes=2)
    events = then(domain.ExpireDue(ALICE, later), state, later)
    assert events == [ConsentExpired(member=ALICE, consent_id="soon", expired_at=NOW + timedelta(minutes=1))]
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


def test_erasure_leaves_a_consent_that_had_already_expired_expired_not_revoked() -> None:
    """Expired before the erasure, though the sweeper had not marked it yet: its history says it expired at its
    expiry, not that the erasure revoked it (the revoke of such a consent is refused for the same reason)."""
    expiry = NOW + timedelta(hours=1)
    state = given(REGISTERED, granted("soon", 1, expires=expiry), granted("open", 2))
    erased = ErasureRequested(member=ALICE, requested_at=NOW + timedelta(hours=2), nonce=3, signature=SIG)
    state = domain.evolve(state, erased)
    assert [(h.state, h.at, h.reason) for h in state.consents["soon"].history][-1] == ("expired", expiry,
                                                                                       "expiry reached")
    assert state.consents["open"].status == "revoked"
    assert then(domain.ExpireDue(ALICE, NOW + timedelta(hours=3)), state, NOW + timedelta(hours=3)) == []


def test_a_late_sweep_records_the_expiry_at_the_consents_expiry_not_when_it_ran() -> None:
    """The sweeper may run days late (the service was down): the expiry, and the history a signed receipt
    shows, is when the consent ended, as the erasure path records it."""
    expiry = NOW + timedelta(days=1)
    state = given(REGISTERED, granted("c1", 1, expires=expiry))
    late = NOW + timedelta(days=3)
    events = then(domain.ExpireDue(ALICE, late), state, late)
    assert events == [ConsentExpired(member=ALICE, consent_id="c1", expired_at=expiry)]
    assert state_history(domain.evolve(state, events[0]), "c1")[-1] == ("expired", expiry, "expiry reached")


def test_an_expiry_is_replayed_at_the_time_its_event_says() -> None:
    """The log is the record: an expiry logged by an earlier sweep at the time it ran replays at that time."""
    logged = NOW + timedelta(days=3)
    state = given(REGISTERED, granted("c1", 1, expires=NOW + timedelta(days=1)),
                  ConsentExpired(member=ALICE, consent_id="c1", expired_at=logged))
    assert state_history(state, "c1")[-1] == ("expired", logged, "expiry reached")


def state_history(state: domain.Member, consent_id: str) -> list[tuple[str, datetime, str]]:
    return [(h.state, h.at, h.reason) for h in state.consents[consent_id].history]


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
