"""Receipt signatures: only the cooperative's key makes a receipt valid."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.consent.receipts import ReceiptInvalid, public_key_b64, sign_receipt, verify_receipt

BODY = {"schema": "datacoop-consent-receipt/1", "record_id": "c-1", "data_subject": {"id": "0x" + "11" * 20},
        "state": "active", "purposes": [{"purpose": "health-research"}]}


def test_a_receipt_signed_by_the_cooperative_verifies_and_a_changed_field_does_not() -> None:
    coop = Ed25519PrivateKey.generate()
    receipt = sign_receipt(BODY, coop)
    verify_receipt(receipt, public_key_b64(coop))
    with pytest.raises(ReceiptInvalid, match="altered"):
        verify_receipt({**receipt, "state": "revoked"}, public_key_b64(coop))


def test_a_forged_receipt_naming_its_own_key_is_refused() -> None:
    coop, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = sign_receipt({**BODY, "purposes": [{"purpose": "anything"}]}, forger)  # self-consistent
    with pytest.raises(ReceiptInvalid, match="different key"):
        verify_receipt(forged, public_key_b64(coop))
    # the proof's key swapped for the cooperative's: the signature no longer matches
    with pytest.raises(ReceiptInvalid, match="altered or signed by another key"):
        verify_receipt({**forged, "proof": {**forged["proof"], "public_key": public_key_b64(coop)}},
                       public_key_b64(coop))


def test_a_trusted_key_is_required() -> None:
    receipt = sign_receipt(BODY, Ed25519PrivateKey.generate())
    with pytest.raises(TypeError):
        verify_receipt(receipt)  # type: ignore[call-arg]
    with pytest.raises(ReceiptInvalid, match="not an Ed25519 public key"):
        verify_receipt(receipt, "AAAA")
