"""The consent service as a process on the real broker, driven through its API as a wallet would."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from services.consent import eip712
from services.consent.client import ApiError, MemberWallet
from services.consent.receipts import ReceiptInvalid, verify_receipt
from tests.e2e.conftest import ServiceProcess


@pytest.fixture
def consent(launch: Callable[..., ServiceProcess], service_env: dict[str, str]) -> ServiceProcess:
    return launch("consent", {**service_env, "DATACOOP_SWEEP_INTERVAL_S": "0.2"})


def _wallet(svc: ServiceProcess) -> MemberWallet:
    return MemberWallet(Account.create().key.hex(), svc.url)


def test_signed_grant_is_accepted_and_replay_other_key_and_tampering_are_refused(consent: ServiceProcess) -> None:
    alice = _wallet(consent)
    assert alice.register()["next_nonce"] == 1
    body = alice.grant_body("health-research", ["health", "fitness"])
    granted = httpx.post(f"{consent.url}/members/{alice.address}/consents", json=body)
    assert granted.status_code == 201, granted.text
    assert granted.json()["state"] == "active"

    retry = httpx.post(f"{consent.url}/members/{alice.address}/consents", json=body)  # e.g. after a 503
    assert retry.status_code == 409 and retry.json()["type"].endswith("/already-recorded"), retry.text
    assert f"already recorded as consent {body['consent_id']}" in retry.json()["detail"]

    replay = httpx.post(f"{consent.url}/members/{alice.address}/consents",
                        json=alice.grant_body("ai-training", ["health"], nonce=body["nonce"]))
    assert replay.status_code == 409
    assert "already used" in replay.json()["detail"]

    mallory = _wallet(consent)
    forged = mallory.grant_body("ai-training", ["health"], nonce=2, on_behalf_of=alice.address)
    forged_for_alice = httpx.post(f"{consent.url}/members/{alice.address}/consents", json=forged)
    assert forged_for_alice.status_code == 401
    assert mallory.address in forged_for_alice.json()["detail"]
    assert forged_for_alice.json()["type"].endswith("/wrong-signer")

    honest = alice.grant_body("public-statistics", ["demographics"], nonce=2)
    tampered = {**honest, "purpose": "commercial-analytics"}
    resp = httpx.post(f"{consent.url}/members/{alice.address}/consents", json=tampered)
    assert resp.status_code == 401, "a changed field must not verify as the member's signature"
    assert [c["purpose"] for c in alice.consents()] == ["health-research"]


def test_errors_name_what_is_wrong(consent: ServiceProcess) -> None:
    bob = _wallet(consent)
    with pytest.raises(ApiError) as unknown_member:
        bob.grant("health-research", ["health"])
    assert unknown_member.value.status == 404
    assert "`datacoop member register` (POST /members)" in str(unknown_member.value), "the command and the route"
    bob.register()
    with pytest.raises(ApiError) as bad_purpose:
        bob.grant("mind-reading", ["health"])
    assert bad_purpose.value.status == 422 and "health-research" in str(bad_purpose.value)
    with pytest.raises(ApiError) as bad_category:
        bob.grant("health-research", ["dreams"])
    assert bad_category.value.status == 422 and "fitness" in str(bad_category.value)
    for purpose, categories, listed in [("AI-Training", ["fitness"], "valid purposes: ai-training, "),
                                        ("ai-training", ["Fitness"], "valid categories: demographics, ")]:
        with pytest.raises(ApiError) as misspelt:  # worded by the catalog, not refused by a pattern
            bob.grant(purpose, categories)
        assert misspelt.value.status == 422 and listed in str(misspelt.value), misspelt.value
    granted = bob.grant("health-research", ["health"])
    bob.revoke(granted["consent_id"])
    with pytest.raises(ApiError) as twice:
        bob.revoke(granted["consent_id"])
    assert twice.value.status == 409 and "revoked" in str(twice.value)
    garbage = httpx.post(f"{consent.url}/members/{bob.address}/erasure", json={"nonce": 9, "signature": "0x12"})
    assert garbage.status_code == 422 and garbage.headers["content-type"].startswith("application/problem+json")


def test_receipt_verifies_offline_and_detects_tampering(consent: ServiceProcess, tmp_path: Path) -> None:
    carol = _wallet(consent)
    carol.register()
    granted = carol.grant("mobility-research", ["location"], expires_at=datetime.now(UTC) + timedelta(days=30))
    receipt = carol.receipt(granted["consent_id"])
    key = httpx.get(f"{consent.url}/receipt-key").json()["public_key"]
    verify_receipt(receipt, key)
    assert receipt["data_subject"]["id"] == carol.address
    assert receipt["purposes"][0]["purpose"] == "mobility-research"
    assert receipt["state_history"][0]["state"] == "active"
    with pytest.raises(ReceiptInvalid):
        verify_receipt({**receipt, "data_categories": []}, key)
    with pytest.raises(ReceiptInvalid, match="not an Ed25519 public key"):  # not "signed by a different key"
        verify_receipt(receipt, "AAAA")


def test_consent_with_short_expiry_turns_expired(consent: ServiceProcess) -> None:
    dave = _wallet(consent)
    dave.register()
    granted = dave.grant("public-statistics", ["demographics"], expires_at=datetime.now(UTC) + timedelta(seconds=2))
    assert granted["state"] == "active"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        history = dave.consents()[0]["history"]
        if [h["state"] for h in history] == ["active", "expired"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no expired event: {dave.consents()}")


def test_state_is_rebuilt_from_the_log_after_the_database_is_deleted(
        launch: Callable[..., ServiceProcess], service_env: dict[str, str], consent: ServiceProcess) -> None:
    erin = _wallet(consent)
    erin.register()
    kept = erin.grant("health-research", ["health"])
    dropped = erin.grant("ai-training", ["fitness"])
    erin.revoke(dropped["consent_id"])
    before = erin.state()
    consent.stop()
    data_dir = Path(service_env["DATACOOP_DATA_DIR"])
    for db in data_dir.glob("consent.duckdb*"):
        db.unlink()
    again = launch("consent", {**service_env, "DATACOOP_SWEEP_INTERVAL_S": "0.2"})
    after = httpx.get(f"{again.url}/members/{erin.address}", headers=erin.read_headers()).json()
    assert after == before
    assert {c["consent_id"]: c["state"] for c in after["consents"]} == {kept["consent_id"]: "active",
                                                                         dropped["consent_id"]: "revoked"}
    shutil.rmtree(data_dir, ignore_errors=True)


def test_erasure_revokes_every_consent_and_refuses_further_changes(consent: ServiceProcess) -> None:
    frank = _wallet(consent)
    frank.register()
    frank.grant("health-research", ["health"])
    erased = frank.erase()
    assert erased["erased"] is True
    assert {c["state"] for c in erased["consents"]} == {"revoked"}
    with pytest.raises(ApiError) as gone:
        frank.grant("health-research", ["health"])
    assert gone.value.status == 410


def test_a_members_data_is_read_by_that_member_alone(consent: ServiceProcess) -> None:
    """State, consents and receipts say which purposes (health research…) a wallet agreed to: they are
    served only with a fresh ReadMemberData signature by the member's own wallet."""
    hana, ivo = _wallet(consent), _wallet(consent)
    hana.register()
    granted = hana.grant("health-research", ["health"])
    paths = [f"/members/{hana.address}", f"/members/{hana.address}/consents",
             f"/members/{hana.address}/consents/{granted['consent_id']}/receipt"]
    stale = eip712.read_auth(hana.account, hana.domain, issued_at=int(time.time()) - 3600)
    for path in paths:
        assert httpx.get(f"{consent.url}{path}", headers=hana.read_headers()).status_code == 200
        anonymous = httpx.get(f"{consent.url}{path}")
        assert anonymous.status_code == 401 and "X-Member-Auth" in anonymous.json()["detail"]
        assert "health" not in anonymous.text
        other = httpx.get(f"{consent.url}{path}", headers=ivo.read_headers())  # another wallet's own signature
        assert other.status_code == 401 and f"not by member {hana.address}" in other.json()["detail"]
        old = httpx.get(f"{consent.url}{path}", headers=stale)
        assert old.status_code == 401 and "sign a fresh one" in old.json()["detail"]
    assert hana.consents()[0]["purpose"] == "health-research"  # the client signs its reads


def test_a_revoke_says_which_other_consents_still_cover_the_same_use(consent: ServiceProcess) -> None:
    wallet = MemberWallet(Account.create().key.hex(), consent.url)
    wallet.register()
    first = wallet.grant("health-research", ["health", "fitness"])
    assert first["overlaps"] == []
    second = wallet.grant("health-research", ["fitness"])
    assert second["categories"] == ["fitness"]
    assert second["overlaps"] == [{"consent_id": first["consent_id"], "purpose": "health-research",
                                   "categories": ["health", "fitness"]}]  # in the order signed
    other = wallet.grant("public-statistics", ["fitness"])
    assert other["overlaps"] == []
    revoked = wallet.revoke(first["consent_id"])
    assert revoked["state"] == "revoked"
    assert revoked["still_covered_by"] == [{"consent_id": second["consent_id"], "purpose": "health-research",
                                            "categories": ["fitness"]}]
    assert wallet.revoke(second["consent_id"])["still_covered_by"] == []
