"""A member's reads while the service is still catching up with the event log (after a start): a member or
consent its projection has not met yet may be in the part of the log not read yet, so the answer is 503
`not-ready` (retry), never 404 "register first". The apps are the services' own, built and not started: their
consumers have read nothing, so they are not ready until a test says they caught up.

The vault's member read is here too: it is the same read (consent's ReadMemberData header) of a member the
vault learns of from consent's events."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI
from fastapi.testclient import TestClient

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope
from datacoop.events.members import MemberRegistered
from datacoop.kit import ServiceRuntime
from services.consent import eip712
from services.consent.service import build_app as build_consent
from services.consent.settings import ConsentSettings
from services.vault.service import build_app as build_vault
from services.vault.settings import VaultSettings

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DOMAIN = eip712.Domain()
NOT_READY = "https://datacoop.example/problems/not-ready"


def _runtime(app: FastAPI) -> ServiceRuntime[Any]:
    runtime: ServiceRuntime[Any] = app.state.runtime
    return runtime


def _caught_up(app: FastAPI) -> None:
    """What the runtime does once its consumer reached the log's end (ServiceRuntime._warm_when_caught_up,
    less its garbage-collector settings, which would outlive the test)."""
    runtime = _runtime(app)
    for writer in runtime.writers:
        writer.warm()
    warm = getattr(runtime.projection, "warm", None)
    if callable(warm):
        warm()
    runtime._warmed = True


def _registered(app: FastAPI, member: LocalAccount) -> None:
    """The member's MemberRegistered, applied as the consumer applies what it reads."""
    event = MemberRegistered(member=member.address, registered_at=NOW, nonce=0, signature="0x" + "11" * 65)
    envelope = Envelope(id=f"e-{member.address}", source="datacoop/consent", type=event.type_name(),
                        subject=member.address, seq=1, data=event.model_dump(mode="json"))
    runtime = _runtime(app)
    with runtime.store.transaction() as tx:
        runtime.projection.apply(tx, [Delivery("members", 0, 0, envelope, event)])


def _get(app: FastAPI, path: str, member: LocalAccount) -> Any:
    return TestClient(app).get(path, headers=eip712.read_auth(member, DOMAIN))


@pytest.fixture
def consent(tmp_path: Path) -> Iterator[FastAPI]:
    app = build_consent(ConsentSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path,
                                        dev_secrets=True, log_json=False))
    yield app
    _runtime(app).store.close()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[FastAPI]:
    app = build_vault(VaultSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path,
                                    vault_kek=base64.b64encode(b"k" * 32).decode(), vault_service_token="t" * 32,
                                    dev_secrets=True, log_json=False))
    yield app
    _runtime(app).keys.close()
    _runtime(app).store.close()


@pytest.mark.parametrize("route", ["/members/{member}", "/members/{member}/consents",
                                   "/members/{member}/consents/c-1/receipt"])
def test_an_unknown_member_is_told_to_retry_while_consent_catches_up_and_to_register_after(
        consent: FastAPI, route: str) -> None:
    member = Account.create()
    path = route.format(member=member.address)
    catching_up = _get(consent, path, member)
    assert catching_up.status_code == 503, catching_up.text
    assert catching_up.headers["content-type"] == "application/problem+json"
    problem = catching_up.json()
    assert problem["type"] == NOT_READY
    assert "catching up with the event log" in problem["detail"] and "retry" in problem["detail"]
    assert TestClient(consent).get(path).status_code == 401  # unsigned: refused before anything is said
    _caught_up(consent)
    caught_up = _get(consent, path, member)
    assert caught_up.status_code == 404 and "register first" in caught_up.json()["detail"], caught_up.text


def test_a_member_already_read_is_not_answered_from_a_partial_log_while_consent_catches_up(
        consent: FastAPI) -> None:
    """The part of the log not read yet may hold a revoke or the erasure: no state, list or receipt before."""
    member = Account.create()
    _registered(consent, member)
    for route in ("", "/consents", "/consents/c-1/receipt"):
        catching_up = _get(consent, f"/members/{member.address}{route}", member)
        assert catching_up.status_code == 503 and catching_up.json()["type"] == NOT_READY, catching_up.text
        assert "catching up with the event log" in catching_up.json()["detail"]
    _caught_up(consent)
    state = _get(consent, f"/members/{member.address}", member)
    assert state.status_code == 200 and state.json()["registered"] is True, state.text
    assert _get(consent, f"/members/{member.address}/consents", member).json() == []
    receipt = _get(consent, f"/members/{member.address}/consents/c-1/receipt", member)
    assert receipt.status_code == 404 and "has no consent c-1" in receipt.json()["detail"], receipt.text


def test_the_vault_tells_any_member_to_retry_while_it_catches_up(vault: FastAPI) -> None:
    member, known = Account.create(), Account.create()
    path = f"/members/{member.address}/records"
    catching_up = _get(vault, path, member)
    assert catching_up.status_code == 503 and catching_up.json()["type"] == NOT_READY, catching_up.text
    assert "catching up with the event log" in catching_up.json()["detail"]
    _registered(vault, known)  # read, but the rest of the log may hold uploads or the erasure
    partial = _get(vault, f"/members/{known.address}/records", known)
    assert partial.status_code == 503 and partial.json()["type"] == NOT_READY, partial.text
    assert partial.headers["Retry-After"] == "2"
    _caught_up(vault)
    summary = _get(vault, f"/members/{known.address}/records", known)
    assert summary.status_code == 200 and summary.json()["uploads"] == [], summary.text
    caught_up = _get(vault, path, member)
    assert caught_up.status_code == 404 and "not registered with the vault" in caught_up.json()["detail"]


def test_the_marketplace_does_not_answer_a_members_sales_while_it_catches_up(tmp_path: Path) -> None:
    """A list of the orders read so far would look complete: 503 until the marketplace has caught up."""
    from services.marketplace.service import build_app as build_marketplace
    from services.marketplace.settings import MarketplaceSettings

    app = build_marketplace(MarketplaceSettings(bootstrap="127.0.0.1:1", data_dir=tmp_path, dev_secrets=True,
                                                log_json=False))
    try:
        member = Account.create()
        path = f"/members/{member.address}/orders"
        assert _get(app, path, member).json()["type"] == NOT_READY
        _caught_up(app)
        answer = _get(app, path, member)
        assert answer.status_code == 200 and answer.json() == [], answer.text
    finally:
        _runtime(app).store.close()
