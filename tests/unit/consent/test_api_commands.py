"""The consent API's commands in-process: the service's own app with a writer that applies what it appends at
once (no broker) and a clock the test moves. Expiries the signed unix seconds cannot hold, categories kept in
the order signed (so a receipt's evidence verifies against the receipt), revoking what expired before the
sweeper marked it, a wrong signer's wording, and a grant or revoke retried after its answer was lost."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from services.consent import eip712
from services.consent.receipts import evidence_signer, grant_message
from tests.unit.consent.harness import DOMAIN, START, Harness, api

__all__ = ["api"]  # the fixture

def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = resp.json()
    return problem


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:30-00:01", "9999-12-31T23:59:59-01:00"])
def test_an_expiry_past_year_9999_in_utc_is_refused_naming_the_latest_allowed(api: Harness, expires_at: str) -> None:
    member = api.register()
    seconds = int(datetime.fromisoformat(expires_at).timestamp())
    problem = _problem(api.grant(member, api.grant_body(member, ["health"], expires_at, seconds)), 422)
    assert "expires_at" in problem["detail"] and "9999-12-31T23:59:59Z" in problem["detail"], problem
    assert api.next_nonce(member) == 1, "nothing recorded"


@pytest.mark.parametrize("expires_at", ["1960-01-01T00:00:00Z", -100])
def test_an_expiry_before_1970_is_in_the_past_not_an_encoder_error(api: Harness, expires_at: Any) -> None:
    member = api.register()
    problem = _problem(api.grant(member, api.grant_body(member, ["health"], expires_signed=0,
                                                        expires_at=expires_at)), 422)
    assert problem["detail"].startswith("expires_at ") and "is in the past" in problem["detail"], problem
    assert "uint256" not in problem["detail"]


def test_duplicate_categories_are_refused_naming_the_duplicate(api: Harness) -> None:
    member = api.register()
    problem = _problem(api.grant(member, api.grant_body(member, ["health", "fitness", "health"])), 422)
    assert "'health' more than once" in problem["detail"], problem
    assert api.next_nonce(member) == 1


def test_a_receipts_evidence_verifies_offline_against_the_receipts_own_fields(api: Harness) -> None:
    """The categories stay in the order the member signed (not sorted): the receipt's GrantConsent, rebuilt from
    its purpose, categories, expiry, evidence nonce, subject and record id, recovers to the member."""
    member = api.register()
    expiry = START + timedelta(days=30)
    body = api.grant_body(member, ["health", "demographics"], expiry.isoformat(), int(expiry.timestamp()))
    granted = api.grant(member, body)
    assert granted.status_code == 201, granted.text
    assert granted.json()["categories"] == ["health", "demographics"]
    receipt = api.http.get(f"/members/{member.address}/consents/{body['consent_id']}/receipt",
                           headers=eip712.read_auth(member, DOMAIN)).json()
    assert [c["category"] for c in receipt["data_categories"]] == ["health", "demographics"]
    message = grant_message(receipt)
    assert message["expiresAt"] == int(expiry.timestamp()) and message["nonce"] == body["nonce"]
    recovered = eip712.recover(eip712.digest(DOMAIN, "GrantConsent", message), receipt["evidence"]["signature"])
    assert recovered == member.address
    assert evidence_signer(receipt) == member.address, "the receipt names its domain: no service needed"
    assert receipt["evidence"]["domain"] == DOMAIN.as_dict()


def test_revoking_a_consent_that_expired_before_the_sweeper_marked_it_is_a_conflict(api: Harness) -> None:
    member = api.register()
    expiry = START + timedelta(seconds=3)
    body = api.grant_body(member, ["health"], expiry.isoformat(), int(expiry.timestamp()))
    assert api.grant(member, body).status_code == 201
    api.clock.now = expiry + timedelta(seconds=1)  # the sweeper has not run
    problem = _problem(api.revoke(member, body["consent_id"]), 409)
    assert problem["detail"] == (f"consent {body['consent_id']} expired at {expiry.isoformat()}; nothing to revoke")
    [consent] = api.http.get(f"/members/{member.address}/consents", headers=eip712.read_auth(member, DOMAIN)).json()
    assert consent["state"] == "expired" and [h["state"] for h in consent["history"]] == ["active"]


def test_a_signature_over_other_fields_is_told_as_such_not_as_another_signer(api: Harness) -> None:
    member = api.register()
    body = {**api.grant_body(member, ["health"]), "categories": ["fitness"]}  # signed over ["health"]
    problem = _problem(api.grant(member, body), 401)
    assert problem["type"].endswith("/wrong-signer")
    detail = problem["detail"]
    assert "recovers to 0x" in detail and f"not the member {member.address}" in detail, detail
    assert "other fields or another EIP-712 domain" in detail and "GET /eip712" in detail
    assert "signature is by" not in detail


def test_a_grant_retried_after_a_lost_ack_is_answered_already_recorded(api: Harness) -> None:
    member = api.register()
    body = api.grant_body(member, ["health"])
    api.writer.lose_ack = True
    lost = _problem(api.grant(member, body), 503)
    assert lost["type"].endswith("/event-log-unavailable")
    retried = _problem(api.grant(member, body), 409)
    assert retried["type"].endswith("/already-recorded"), retried
    assert f"already recorded as consent {body['consent_id']} (this exact signed grant" in retried["detail"]
    assert retried["consent_id"] == body["consent_id"]
    consents = api.http.get(f"/members/{member.address}/consents", headers=eip712.read_auth(member, DOMAIN)).json()
    assert [c["consent_id"] for c in consents] == [body["consent_id"]], "recorded once"
    # another grant signed with that used nonce is still a replay, not "already recorded"
    other = {**api.grant_body(member, ["fitness"]), "nonce": body["nonce"]}
    other["signature"] = eip712.sign(member, DOMAIN, "GrantConsent", {
        "member": member.address, "consentId": other["consent_id"], "purpose": other["purpose"],
        "categories": other["categories"], "expiresAt": 0, "nonce": body["nonce"]})
    replay = _problem(api.grant(member, other), 409)
    assert replay["type"].endswith("/conflict") and "already used" in replay["detail"]


def test_a_revoke_retried_after_a_lost_ack_is_answered_already_recorded(api: Harness) -> None:
    member = api.register()
    grant = api.grant_body(member, ["health"])
    assert api.grant(member, grant).status_code == 201
    body = api.revoke_body(member, grant["consent_id"])
    api.writer.lose_ack = True
    assert _problem(api.revoke(member, grant["consent_id"], body), 503)
    retried = _problem(api.revoke(member, grant["consent_id"], body), 409)
    assert retried["type"].endswith("/already-recorded") and "this exact signed revoke" in retried["detail"]
