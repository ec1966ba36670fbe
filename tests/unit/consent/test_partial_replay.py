"""A consent service rebuilding its projection from the log (its database deleted, or restarted behind the log)
must not sign a receipt, or show a member's consents, from the part of the log read so far: a consent revoked
in the part not read yet would be attested `active` under the cooperative's key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from datacoop.bus.consumer import Delivery
from datacoop.keys import public_key_b64
from services.consent import eip712
from services.consent.receipts import verify_receipt
from services.consent.service import build_app
from services.consent.settings import ConsentSettings
from tests.unit.consent.harness import DOMAIN, Clock, Harness

NOT_READY = "https://datacoop.example/problems/not-ready"


def _app(data_dir: Path, clock: Clock) -> FastAPI:
    return build_app(ConsentSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=data_dir,
                                     dev_secrets=True, log_json=False), clock=clock)


def _apply(app: FastAPI, deliveries: Sequence[Delivery]) -> None:
    """What the consumer does with a batch it read."""
    runtime = app.state.runtime
    with runtime.store.transaction() as tx:
        runtime.projection.apply(tx, list(deliveries))


def test_no_receipt_is_signed_from_a_partial_replay_of_the_log(tmp_path: Path) -> None:
    clock = Clock()
    live = Harness(_app(tmp_path / "live", clock), clock)
    log: list[Delivery] = []  # what the live service appended: the members topic
    append = live.writer.execute

    async def recorded(subject: str, decide: Any, **kw: Any) -> list[Delivery]:
        deliveries = await append(subject, decide, **kw)
        log.extend(deliveries)
        return deliveries

    live.writer.execute = recorded  # type: ignore[method-assign]
    member = live.register()
    grant = live.grant_body(member, ["health"])
    assert live.grant(member, grant).status_code == 201
    assert live.revoke(member, grant["consent_id"]).status_code == 200
    assert [type(d.event).__name__ for d in log] == ["MemberRegistered", "ConsentGranted", "ConsentRevoked"]

    rebuilt = _app(tmp_path / "rebuilt", clock)  # the same service, its database deleted
    try:
        rebuilt.state.runtime.receipt_key = live.runtime.receipt_key
        _apply(rebuilt, log[:2])  # the consumer's first batch: registered and granted, the revoke not yet
        assert not rebuilt.state.runtime.ready
        http = TestClient(rebuilt)
        path = f"/members/{member.address}/consents/{grant['consent_id']}/receipt"
        for route in (path, f"/members/{member.address}", f"/members/{member.address}/consents"):
            partial = http.get(route, headers=eip712.read_auth(member, DOMAIN))
            assert partial.status_code == 503, f"{route} answered from a partial replay: {partial.text}"
            assert partial.json()["type"] == NOT_READY
            assert "catching up with the event log" in partial.json()["detail"], partial.text

        _apply(rebuilt, log[2:])
        rebuilt.state.runtime._warmed = True  # caught up: what its runtime says once the consumer reached the end
        receipt = http.get(path, headers=eip712.read_auth(member, DOMAIN))
        assert receipt.status_code == 200, receipt.text
        assert receipt.json()["state"] == "revoked", receipt.text
        verify_receipt(receipt.json(), public_key_b64(live.runtime.receipt_key))
    finally:
        rebuilt.state.runtime.store.close()
        live.runtime.store.close()
