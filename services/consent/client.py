"""A member's side: sign actions with the wallet key (eth-account, as any wallet would) and call the API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from eth_account import Account

from datacoop.http import ApiError, check, segment
from services.consent import eip712

__all__ = ["ApiError", "MemberWallet", "check"]


class MemberWallet:
    """Signs EIP-712 member actions with a private key and sends them to the consent service."""

    def __init__(self, private_key: str, base_url: str, domain: eip712.Domain | None = None,
                 http: httpx.Client | None = None) -> None:
        self.account = Account.from_key(private_key)
        self.address: str = self.account.address
        self.http = http or httpx.Client(base_url=base_url, timeout=30)
        self.domain = domain or eip712.fetch_domain(self.http)

    def sign(self, primary_type: str, message: dict[str, Any]) -> str:
        return eip712.sign(self.account, self.domain, primary_type, message)

    def read_headers(self) -> dict[str, str]:
        """What reading this member's own data takes (a fresh ReadMemberData signature)."""
        return eip712.read_auth(self.account, self.domain)

    def state(self) -> dict[str, Any]:
        """The member's state: registration, next nonce, consents with their history."""
        return dict(check(self.http.get(f"/members/{self.address}", headers=self.read_headers())))

    def next_nonce(self) -> int:
        resp = self.http.get(f"/members/{self.address}", headers=self.read_headers())
        return 0 if resp.status_code == 404 else int(check(resp)["next_nonce"])

    def register(self) -> dict[str, Any]:
        sig = self.sign("RegisterMember", {"member": self.address, "nonce": 0})
        return dict(check(self.http.post("/members", json={"member": self.address, "nonce": 0, "signature": sig})))

    def grant_body(self, purpose: str, categories: list[str], expires_at: datetime | None = None,
                   consent_id: str | None = None, nonce: int | None = None,
                   on_behalf_of: str | None = None) -> dict[str, Any]:
        """The signed body of a grant; `on_behalf_of` signs for another member (which the service refuses)."""
        consent_id = consent_id or str(uuid.uuid4())
        nonce = self.next_nonce() if nonce is None else nonce
        message = {"member": on_behalf_of or self.address, "consentId": consent_id, "purpose": purpose,
                   "categories": categories, "expiresAt": int(expires_at.timestamp()) if expires_at else 0,
                   "nonce": nonce}
        return {"consent_id": consent_id, "purpose": purpose, "categories": categories,
                "expires_at": expires_at.isoformat() if expires_at else None, "nonce": nonce,
                "signature": self.sign("GrantConsent", message)}

    def grant(self, purpose: str, categories: list[str], expires_at: datetime | None = None,
              consent_id: str | None = None) -> dict[str, Any]:
        """Grant; give `consent_id` to retry a grant whose answer was lost: a second consent with that id is
        refused (409), so it is never recorded twice."""
        body = self.grant_body(purpose, categories, expires_at, consent_id)
        return dict(check(self.http.post(f"/members/{self.address}/consents", json=body)))

    def revoke(self, consent_id: str) -> dict[str, Any]:
        nonce = self.next_nonce()
        sig = self.sign("RevokeConsent", {"member": self.address, "consentId": consent_id, "nonce": nonce})
        return dict(check(self.http.post(f"/members/{self.address}/consents/{segment(consent_id)}/revoke",
                                         json={"nonce": nonce, "signature": sig})))

    def erase(self) -> dict[str, Any]:
        nonce = self.next_nonce()
        sig = self.sign("RequestErasure", {"member": self.address, "nonce": nonce})
        return dict(check(self.http.post(f"/members/{self.address}/erasure", json={"nonce": nonce, "signature": sig})))

    def consents(self) -> list[dict[str, Any]]:
        return list(check(self.http.get(f"/members/{self.address}/consents", headers=self.read_headers())))

    def receipt(self, consent_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/members/{self.address}/consents/{segment(consent_id)}/receipt",
                                        headers=self.read_headers())))

