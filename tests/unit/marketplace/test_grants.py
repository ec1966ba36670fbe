"""Signed grants open exactly one version for one researcher until they expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datacoop.keys import public_key_b64
from services.marketplace.grants import Grant, GrantRefused, sign_document, sign_grant, verify_document, verify_grant

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
GRANT = Grant("g1", "o1", "r1", "adult", 2, int((NOW + timedelta(minutes=5)).timestamp()))


def check(token: str, researcher: str = "r1", version: int = 2, now: datetime = NOW,
          key: Ed25519PrivateKey = KEY) -> Grant:
    return verify_grant(token, key.public_key(), researcher_id=researcher, dataset_id="adult", version=version,
                        now=now)


def test_a_grant_opens_its_version_for_its_researcher() -> None:
    assert check(sign_grant(GRANT, KEY)) == GRANT


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"version": 3}, "opens adult v2, not adult v3"),
    ({"researcher": "r2"}, "another researcher"),
    ({"now": NOW + timedelta(minutes=5)}, "expired"),
    ({"key": Ed25519PrivateKey.generate()}, "does not verify"),
])
def test_a_wrong_foreign_or_expired_grant_is_refused_with_why(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(GrantRefused, match=why):
        check(sign_grant(GRANT, KEY), **kwargs)  # type: ignore[arg-type]


def test_an_altered_grant_is_refused() -> None:
    token = sign_grant(GRANT, KEY)
    other = sign_grant(Grant("g1", "o1", "r1", "adult", 3, GRANT.expires_at), KEY)
    with pytest.raises(GrantRefused, match="does not verify"):
        check(other.split(".")[0] + "." + token.split(".")[1], version=3)
    with pytest.raises(GrantRefused, match="malformed"):
        check("not-a-grant")


def test_receipts_verify_under_the_marketplace_key_alone_and_an_edit_breaks_them() -> None:
    doc = sign_document({"order_id": "o1", "price_units": 5}, KEY)
    trusted = public_key_b64(KEY)
    assert verify_document(doc, trusted)
    assert not verify_document({**doc, "price_units": 4}, trusted)
    forged = sign_document({"order_id": "o1", "price_units": 0}, Ed25519PrivateKey.generate())  # names its own key
    assert not verify_document(forged, trusted)
    assert not verify_document({**forged, "proof": {**forged["proof"], "public_key": trusted}}, trusted)
    assert not verify_document(doc, "not base64 of a key")
