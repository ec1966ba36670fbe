"""Consent receipts: ISO/IEC TS 27560-style consent records, signed with the cooperative's Ed25519 key.

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of the receipt without its
`proof`. Anyone can verify a receipt offline with the public key (`datacoop receipt verify FILE`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datacoop.keys import document_problem, load_or_create_key, public_key_b64, sign_document

__all__ = ["ReceiptInvalid", "build_receipt", "evidence_signer", "grant_message", "load_or_create_key",
           "public_key_b64", "sign_receipt", "verify_receipt"]
from services.consent.catalog import Catalog
from services.consent.domain import Consent, Member, effective_status
from services.consent.eip712 import Domain, digest, recover

RECEIPT_SCHEMA = "datacoop-consent-receipt/1 (ISO/IEC TS 27560 fields)"
CONTROLLER = {"name": "datacoop cooperative", "role": "controller",
              "contact": "privacy@datacoop.example", "jurisdiction": "EU"}


class ReceiptInvalid(ValueError):
    """The receipt is malformed, or its signature does not verify with the given key."""


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def build_receipt(member: Member, consent: Consent, catalog: Catalog, now: datetime,
                  eip712_domain: Domain | None = None) -> dict[str, Any]:
    """The receipt of `consent`. Its `evidence` is the member's own GrantConsent signature, checkable offline
    against the receipt's fields (`grant_message`, `evidence_signer`): the categories are in the order signed."""
    evidence: dict[str, Any] = {"type": "EIP-712", "primary_type": "GrantConsent", "nonce": consent.nonce,
                                "signature": consent.signature}
    if eip712_domain is not None:
        evidence["domain"] = eip712_domain.as_dict()
    state = effective_status(consent, now)
    history = [{"state": h.state, "at": _iso(h.at), "reason": h.reason} for h in consent.history]
    if state == "expired" and consent.status == "active":  # past its expiry, the sweeper's event not read yet:
        history.append({"state": "expired", "at": _iso(consent.expires_at), "reason": "expiry reached"})  # as evolve
    granted_under = catalog.at(consent.catalog_version)  # the wording the member agreed to
    return {
        "schema": RECEIPT_SCHEMA,
        "record_id": consent.consent_id,
        "data_subject": {"id": member.address, "id_type": "ethereum-address"},
        "controller": CONTROLLER,
        "purposes": [{"purpose": consent.purpose, "description": granted_under.purposes.get(consent.purpose, ""),
                      "legal_basis": "consent (GDPR Art. 6(1)(a) / 9(2)(a))"}],
        "data_categories": [{"category": c, "description": granted_under.categories.get(c, "")}
                            for c in consent.categories],
        "catalog_version": consent.catalog_version,
        "time_of_consent": _iso(consent.granted_at),
        "expiry": _iso(consent.expires_at),
        "withdrawal_method": ("sign a RevokeConsent EIP-712 message with your wallet and send it to "
                              f"POST /members/{member.address}/consents/{consent.consent_id}/revoke "
                              f"(or run `datacoop consent revoke {consent.consent_id}`)"),
        "state": state,
        "state_history": history,
        "evidence": evidence,
        "issued_at": now.isoformat(),
    }


def grant_message(receipt: dict[str, Any]) -> dict[str, Any]:
    """The GrantConsent message the member signed, rebuilt from a receipt's own fields (KeyError, TypeError or
    ValueError for a receipt that lacks them)."""
    expiry = receipt["expiry"]
    return {"member": receipt["data_subject"]["id"], "consentId": receipt["record_id"],
            "purpose": receipt["purposes"][0]["purpose"],
            "categories": [c["category"] for c in receipt["data_categories"]],
            "expiresAt": int(datetime.fromisoformat(expiry).timestamp()) if expiry else 0,
            "nonce": receipt["evidence"]["nonce"]}


def evidence_signer(receipt: dict[str, Any], eip712_domain: Domain | None = None) -> str:
    """The address the receipt's evidence signature recovers to over the receipt's own fields, in the domain
    the receipt names (else `eip712_domain`, from GET /eip712): the data subject when the receipt is true."""
    named = receipt["evidence"].get("domain")
    if named is not None:
        eip712_domain = Domain(named["name"], named["version"], named["chainId"], named.get("verifyingContract"))
    if eip712_domain is None:
        raise ValueError("the receipt names no EIP-712 domain; pass the one GET /eip712 serves")
    return recover(digest(eip712_domain, "GrantConsent", grant_message(receipt)), receipt["evidence"]["signature"])


def sign_receipt(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_document(receipt, key)


def verify_receipt(document: dict[str, Any], trusted_public_key_b64: str) -> None:
    """Raise ReceiptInvalid unless the proof verifies with the cooperative's key, `trusted_public_key_b64`
    (from GET /receipt-key, or pinned); the key written in the receipt's proof is never trusted alone."""
    problem = document_problem(document, trusted_public_key_b64, key_source="GET /receipt-key")
    if problem is not None:
        raise ReceiptInvalid(problem)
