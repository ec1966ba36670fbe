"""A consent swept days after its expiry (the service was down, or behind): the signed receipt's state history
must say it expired at its expiry, the same moment the receipt's `expiry` field gives."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from services.consent import eip712
from tests.unit.consent.harness import DOMAIN, START, Harness, api  # noqa: F401 (the fixture)


def test_a_late_sweeps_receipt_says_the_consent_expired_at_its_expiry(api: Harness) -> None:  # noqa: F811
    member = api.register()
    expiry = START + timedelta(days=1)
    body = api.grant_body(member, ["health"], expires_at=expiry.isoformat(), expires_signed=int(expiry.timestamp()))
    assert api.grant(member, body).status_code == 201
    api.clock.now = START + timedelta(days=3)  # two days past the expiry before the sweeper runs
    assert asyncio.run(api.runtime.sweep_once()) == 1

    receipt = api.http.get(f"/members/{member.address}/consents/{body['consent_id']}/receipt",
                           headers=eip712.read_auth(member, DOMAIN)).json()
    ended = [h for h in receipt["state_history"] if h["state"] == "expired"]
    assert receipt["state"] == "expired" and len(ended) == 1, receipt
    assert datetime.fromisoformat(ended[0]["at"]) == expiry, receipt["state_history"]
    assert ended[0]["at"] == receipt["expiry"], receipt


def test_a_receipt_before_the_sweep_has_the_same_expiry_entry_as_after_it(api: Harness) -> None:  # noqa: F811
    """Past its expiry, with the sweeper's event not read yet, the receipt said `expired` with a history that
    never showed the consent expire; after the sweep the history gained the entry: two signed documents that
    disagree. Now the entry is there before the sweep too, the same one the sweep records."""
    member = api.register()
    expiry = START + timedelta(hours=1)
    body = api.grant_body(member, ["health"], expires_at=expiry.isoformat(), expires_signed=int(expiry.timestamp()))
    assert api.grant(member, body).status_code == 201
    api.clock.now = START + timedelta(hours=2)
    url = f"/members/{member.address}/consents/{body['consent_id']}/receipt"
    before = api.http.get(url, headers=eip712.read_auth(member, DOMAIN)).json()
    assert asyncio.run(api.runtime.sweep_once()) == 1
    after = api.http.get(url, headers=eip712.read_auth(member, DOMAIN)).json()
    assert before["state"] == after["state"] == "expired"
    assert before["state_history"] == after["state_history"], (before["state_history"], after["state_history"])
    assert before["state_history"][-1] == {"state": "expired", "at": expiry.isoformat(), "reason": "expiry reached"}
