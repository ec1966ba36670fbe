"""The vault's API in process (its own app, built and not started: no broker): what a member is told when the
vault has not read their registration yet, a category in the wrong case, a signature over other data."""

from __future__ import annotations

import base64
import hashlib
import json
import time
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
from services.consent import eip712
from services.vault.service import VaultService
from services.vault.service import build_app as build_vault
from services.vault.settings import VaultSettings

DOMAIN = eip712.Domain()
NOT_READY = "https://datacoop.example/problems/not-ready"
ROW = json.dumps({"day": "2026-03-01", "steps": -1}) + "\n"  # refused as a row: the upload got past authorize


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[FastAPI]:
    app = build_vault(VaultSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path,
                                    vault_kek=base64.b64encode(b"k" * 32).decode(), vault_service_token="t" * 32,
                                    dev_secrets=True, log_json=False))
    _svc(app)._warmed = True  # caught up with the log, as its runtime says once its consumer reached the end
    yield app
    _svc(app).keys.close()
    _svc(app).store.close()


def _svc(app: FastAPI) -> VaultService:
    svc: VaultService = app.state.runtime
    return svc


def _register(app: FastAPI, member: LocalAccount) -> None:
    event = MemberRegistered(member=member.address, registered_at=datetime.now(UTC), nonce=0,
                             signature="0x" + "11" * 65)
    envelope = Envelope(id=f"e-{member.address}", source="datacoop/consent", type=event.type_name(),
                        subject=member.address, seq=1, data=event.model_dump(mode="json"))
    svc = _svc(app)
    with svc.store.transaction() as tx:
        svc.projection.apply(tx, [Delivery("members", 0, 0, envelope, event)])


def _body(signer: LocalAccount, member: str, category: str = "fitness", content: str = ROW,
          domain: eip712.Domain = DOMAIN, signed_content: str | None = None) -> dict[str, Any]:
    issued = int(time.time())
    digest = "0x" + hashlib.sha256((signed_content or content).encode()).hexdigest()
    message = {"member": member, "category": category, "contentHash": digest, "issuedAt": issued}
    return {"category": category, "format": "jsonl", "content": content, "issued_at": issued,
            "signature": eip712.sign(signer, domain, "ContributeRecords", message)}


def _contribute(app: FastAPI, member: LocalAccount, **kw: Any) -> Any:
    return TestClient(app).post(f"/members/{member.address}/records", json=_body(member, member.address, **kw))


def _summary(app: FastAPI, member: LocalAccount) -> Any:
    return TestClient(app).get(f"/members/{member.address}/records", headers=eip712.read_auth(member, DOMAIN))


# -- 1: just registered -----------------------------------------------------------------------------------

def test_a_member_registered_while_the_vault_waits_for_the_log_is_answered(vault: FastAPI,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The registration lands in the vault's projection a moment after the consent service answered: the vault
    waits for its reader to pass the members log's end before saying "not registered"."""
    member = Account.create()
    reader_at_end = iter([False, False, True])

    def log_passed(asked_ms: int, first_fetch: dict[int, int]) -> bool:
        passed = next(reader_at_end)
        if passed:
            _register(vault, member)  # what the reader applied meanwhile
        return passed

    monkeypatch.setattr(_svc(vault), "_members_log_passed", log_passed)
    answer = _contribute(vault, member, content=ROW)
    assert answer.status_code == 422 and answer.json()["type"].endswith("/invalid-records"), answer.text


@pytest.mark.parametrize("ask", [_contribute, _summary])
def test_a_member_the_vault_may_not_have_read_yet_is_told_to_retry_not_to_register(
        vault: FastAPI, monkeypatch: pytest.MonkeyPatch, ask: Any) -> None:
    member = Account.create()
    svc = _svc(vault)
    svc.registration_wait_s = 0.1
    monkeypatch.setattr(svc, "_members_log_passed", lambda asked_ms, first_fetch: False)  # reader still behind
    answer = ask(vault, member)
    assert answer.status_code == 503 and answer.json()["type"] == NOT_READY, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "2"
    detail = answer.json()["detail"]
    assert "has not (yet) seen a registration" in detail and "registered moments ago, retry in a few seconds" in detail
    assert "datacoop member register" not in detail


@pytest.mark.parametrize("ask", [_contribute, _summary])
def test_a_member_the_vault_has_read_past_is_not_registered_and_told_both_ways(vault: FastAPI, ask: Any) -> None:
    answer = ask(vault, Account.create())  # no reader to wait for: the app is not started
    assert answer.status_code == 404, answer.text
    detail = answer.json()["detail"]
    assert "not registered with the vault" in detail and "datacoop member register" in detail
    assert "If you registered moments ago, retry in a few seconds" in detail


class _Consumer:
    """The runner's Kafka consumer as `ConsumerRunner.read_past` reads it: assignment, high-water marks, fetch times."""

    def __init__(self, topic: str, highwater: int, fetched_ms: int) -> None:
        from aiokafka import TopicPartition

        self.tp = TopicPartition(topic, 0)
        self.other = TopicPartition("t.datacoop.records", 0)
        self.high, self.fetched_ms = highwater, fetched_ms

    def assignment(self) -> set[Any]:
        return {self.tp, self.other}

    def highwater(self, tp: Any) -> int:
        return self.high if tp == self.tp else 10**9  # the other topic never counts

    def last_poll_timestamp(self, tp: Any) -> int:
        return self.fetched_ms


def test_the_members_log_is_passed_only_after_a_fetch_sent_since_the_request(vault: FastAPI,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _svc(vault)
    consumer = _Consumer("t.datacoop.members", highwater=5, fetched_ms=1000)
    monkeypatch.setattr(svc.runner, "_consumer", consumer)
    monkeypatch.setitem(svc.runner._positions, consumer.tp, 5)
    first: dict[int, int] = {}
    assert not svc._members_log_passed(1500, first)  # the last fetch was answered before the request
    consumer.fetched_ms = 1600
    assert not svc._members_log_passed(1500, first)  # answered after it, but maybe sent before
    consumer.fetched_ms, consumer.high = 1800, 6
    assert not svc._members_log_passed(1500, first)  # sent after it: one more event to read
    svc.runner._positions[consumer.tp] = 6
    assert svc._members_log_passed(1500, first)


# -- 9: a category in the wrong case ----------------------------------------------------------------------

def test_a_category_in_the_wrong_case_is_answered_with_the_categories(vault: FastAPI) -> None:
    member = Account.create()
    _register(vault, member)
    answer = _contribute(vault, member, category="Fitness")
    assert answer.status_code == 422 and answer.json()["type"].endswith("/unknown-category"), answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("unknown category 'Fitness'") and "'fitness'" in detail, detail
    assert "categories: demographics, finance, fitness, health, location" in detail and "pattern" not in detail
    decrypt = TestClient(vault).post("/internal/decrypt", json={"category": "Fitness"},
                                     headers={"Authorization": "Bearer " + "t" * 32})
    assert decrypt.status_code == 422 and "unknown category 'Fitness'" in decrypt.json()["detail"], decrypt.text


def test_a_decrypt_request_bounds_each_record_id(vault: FastAPI) -> None:
    """A record id is an upload's UUID and a row number: 10,000 ids of a megabyte each were taken whole."""
    client = TestClient(vault)
    auth = {"Authorization": "Bearer " + "t" * 32}
    for body in ({"record_ids": ["r" * 129]}, {"after": "r" * 129}):
        answer = client.post("/internal/decrypt", json=body, headers=auth)
        assert answer.status_code == 422 and "at most 128 characters" in answer.json()["detail"], answer.text


# -- 10: a signature over other data ----------------------------------------------------------------------

@pytest.mark.parametrize("change", ["content", "domain"])
def test_a_signature_over_other_data_is_not_blamed_on_another_wallet(vault: FastAPI, change: str) -> None:
    member = Account.create()
    _register(vault, member)
    body = (_body(member, member.address, signed_content=ROW + "\n") if change == "content"
            else _body(member, member.address, domain=eip712.Domain(chain_id=1)))
    answer = TestClient(vault).post(f"/members/{member.address}/records", json=body)
    assert answer.status_code == 401 and answer.json()["type"].endswith("/wrong-signer"), answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("the signature recovers to 0x") and f"which is not member {member.address}" in detail
    assert "another wallet signed it, or it was signed over other content" in detail
    assert "EIP-712 domain" in detail
