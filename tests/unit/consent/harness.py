"""The consent service's own app in-process, without a broker: a writer that applies what it appends at once
(and can lose an ack), a clock the test moves, and signed member actions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI
from fastapi.testclient import TestClient

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope
from datacoop.events.registry import Event
from datacoop.kit import ServiceRuntime
from services.consent import eip712
from services.consent.service import build_app
from services.consent.settings import ConsentSettings

START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DOMAIN = eip712.Domain()
_offsets = count()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class AppliedAtOnce:
    """The writer's contract without Kafka: decide, then apply the events to the projection at once. With
    `lose_ack` set, the next command's events land but the caller hears the broker's timeout (a lost ack)."""

    def __init__(self, runtime: ServiceRuntime[Any]) -> None:
        self.runtime = runtime
        self.lose_ack = False

    async def execute(self, subject: str, decide: Callable[[], Sequence[Event]], **_: Any) -> list[Delivery]:
        events = list(decide())
        deliveries = [Delivery("members", 0, next(_offsets), Envelope(
            source="datacoop/consent", type=ev.type_name(), subject=subject, seq=1, data=ev.model_dump(mode="json")),
            ev) for ev in events]
        if deliveries:
            with self.runtime.store.transaction() as tx:
                self.runtime.projection.apply(tx, deliveries)
        if self.lose_ack:
            self.lose_ack = False
            raise KafkaTimeoutError("no ack in time")
        return deliveries


class Harness:
    def __init__(self, app: FastAPI, clock: Clock) -> None:
        self.app, self.clock, self.http = app, clock, TestClient(app)
        self.runtime: ServiceRuntime[Any] = app.state.runtime
        self.writer = AppliedAtOnce(self.runtime)
        self.runtime.writer = self.writer
        self.runtime._warmed = True

    def register(self) -> LocalAccount:
        member: LocalAccount = Account.create()
        body = {"member": member.address, "nonce": 0,
                "signature": eip712.sign(member, DOMAIN, "RegisterMember", {"member": member.address, "nonce": 0})}
        assert self.http.post("/members", json=body).status_code == 201
        return member

    def next_nonce(self, member: LocalAccount) -> int:
        return int(self.http.get(f"/members/{member.address}", headers=eip712.read_auth(member, DOMAIN))
                   .json()["next_nonce"])

    def grant_body(self, member: LocalAccount, categories: list[str], expires_at: str | None = None,
                   expires_signed: int = 0, purpose: str = "health-research",
                   signer: LocalAccount | None = None, **changed: Any) -> dict[str, Any]:
        cid, nonce = str(uuid.uuid4()), self.next_nonce(member)
        message = {"member": member.address, "consentId": cid, "purpose": purpose, "categories": categories,
                   "expiresAt": expires_signed, "nonce": nonce}
        return {"consent_id": cid, "purpose": purpose, "categories": categories, "expires_at": expires_at,
                "nonce": nonce, "signature": eip712.sign(signer or member, DOMAIN, "GrantConsent", message),
                **changed}

    def grant(self, member: LocalAccount, body: dict[str, Any]) -> Any:
        return self.http.post(f"/members/{member.address}/consents", json=body)

    def revoke_body(self, member: LocalAccount, consent_id: str) -> dict[str, Any]:
        nonce = self.next_nonce(member)
        return {"nonce": nonce, "signature": eip712.sign(member, DOMAIN, "RevokeConsent", {
            "member": member.address, "consentId": consent_id, "nonce": nonce})}

    def revoke(self, member: LocalAccount, consent_id: str, body: dict[str, Any] | None = None) -> Any:
        return self.http.post(f"/members/{member.address}/consents/{consent_id}/revoke",
                              json=body or self.revoke_body(member, consent_id))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    clock = Clock()
    app = build_app(ConsentSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path, dev_secrets=True,
                                    log_json=False), clock=clock)
    yield Harness(app, clock)
    app.state.runtime.store.close()
