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
