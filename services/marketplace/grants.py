"""Signed access grants and receipts (Ed25519, the marketplace's own key).

A grant is `<payload>.<signature>`, both base64url without padding; the payload is canonical JSON
`{"grant_id", "order_id", "researcher_id", "dataset_id", "version", "expires_at"}` (unix seconds).
It opens the download of exactly that version, for exactly that researcher, until it expires.
Receipts are JSON documents with a `proof` over their canonical JSON, verifiable offline.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from datacoop.keys import canonical, document_problem
from datacoop.keys import sign_document as sign_document  # re-exported: the API signs order receipts with it


class GrantRefused(Exception):
    """A grant that does not open this download; the message says why (for the 403)."""


@dataclass(frozen=True)
class Grant:
    grant_id: str
    order_id: str
    researcher_id: str
    dataset_id: str
    version: int
    expires_at: int

    def payload(self) -> dict[str, Any]:
        return {"grant_id": self.grant_id, "order_id": self.order_id, "researcher_id": self.researcher_id,
                "dataset_id": self.dataset_id, "version": self.version, "expires_at": self.expires_at}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_grant(grant: Grant, key: Ed25519PrivateKey) -> str:
    body = canonical(grant.payload())
    return f"{_b64(body)}.{_b64(key.sign(body))}"


def verify_grant(token: str, key: Ed25519PublicKey, *, researcher_id: str, dataset_id: str, version: int,
                 now: datetime) -> Grant:
    """The grant in `token` if it is ours, unexpired, and for this researcher and version."""
    try:
        body_b64, sig_b64 = token.split(".")
        body, sig = _unb64(body_b64), _unb64(sig_b64)
        key.verify(sig, body)
        grant = Grant(**json.loads(body))
    except InvalidSignature as exc:
        raise GrantRefused("the grant's signature does not verify: it was altered or not issued by this "
                           "marketplace; ask for a new one with POST /orders/{order_id}/grants") from exc
    except (ValueError, TypeError) as exc:
        raise GrantRefused("the grant is malformed; pass the token POST /orders/{order_id}/grants returned") \
            from exc
    if grant.researcher_id != researcher_id:
        raise GrantRefused(f"grant {grant.grant_id} was issued to another researcher")
    if (grant.dataset_id, grant.version) != (dataset_id, version):
        raise GrantRefused(f"grant {grant.grant_id} opens {grant.dataset_id} v{grant.version}, not "
                           f"{dataset_id} v{version}")
    if grant.expires_at <= int(now.timestamp()):
        expired = datetime.fromtimestamp(grant.expires_at, UTC).isoformat()
        raise GrantRefused(f"grant {grant.grant_id} expired at {expired}; ask for a new one with "
                           f"POST /orders/{grant.order_id}/grants")
    return grant


def verify_document(document: dict[str, Any], trusted_public_key_b64: str) -> bool:
    """Whether `document` (an order receipt) was signed by the marketplace's key, `trusted_public_key_b64`
    (GET /grant-key, or pinned); the key named in the proof is never trusted alone."""
    return document_problem(document, trusted_public_key_b64, key_source="GET /grant-key") is None
