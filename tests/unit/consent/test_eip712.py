"""The fast EIP-712 hashing must equal eth-account's generic encoder, or wallets' signatures fail."""

from __future__ import annotations

import re

import coincurve
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from datacoop.kit.problems import Unauthorized
from services.consent import eip712

DOMAINS = [eip712.Domain(chain_id=31337),
           eip712.Domain(chain_id=1, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")]
slug = st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(domain=st.sampled_from(DOMAINS), purpose=slug, cats=st.lists(slug, min_size=1, max_size=4),
       cid=st.text(min_size=1, max_size=30), expires=st.integers(0, 2**40), nonce=st.integers(0, 2**64))
def test_grant_digest_matches_eth_account(domain: eip712.Domain, purpose: str, cats: list[str], cid: str,
                                          expires: int, nonce: int) -> None:
    acct = Account.from_key("0x" + "11" * 32)
    message = {"member": acct.address, "consentId": cid, "purpose": purpose, "categories": cats,
               "expiresAt": expires, "nonce": nonce}
    reference = _hash_eip191_message(encode_typed_data(full_message=eip712.typed_data(domain, "GrantConsent",
                                                                                     message)))
    assert eip712.digest(domain, "GrantConsent", message) == reference


@pytest.mark.parametrize("primary", ["RegisterMember", "RevokeConsent", "RequestErasure"])
def test_every_type_signed_by_a_wallet_recovers_its_address(primary: str) -> None:
    acct = Account.create()
    message = {"member": acct.address, "nonce": 3, "consentId": "c-1"}
    message = {k: v for k, v in message.items() if k in dict(eip712.TYPES[primary])}
    signable = encode_typed_data(full_message=eip712.typed_data(DOMAINS[1], primary, message))
    signature = "0x" + bytes(acct.sign_message(signable).signature).hex().removeprefix("0x")
    assert eip712.recover(eip712.digest(DOMAINS[1], primary, message), signature) == acct.address
    other_domain = eip712.digest(DOMAINS[0], primary, message)
    assert eip712.recover(other_domain, signature) != acct.address


def test_malformed_signatures_are_refused_with_why() -> None:
    digest = eip712.digest(DOMAINS[0], "RegisterMember", {"member": "0x" + "00" * 20, "nonce": 0})
    with pytest.raises(eip712.SignatureInvalid, match="65 bytes"):
        eip712.recover(digest, "0x1234")
    with pytest.raises(eip712.SignatureInvalid, match="recovery id"):
        eip712.recover(digest, "0x" + "11" * 64 + "05")
    with pytest.raises(eip712.SignatureInvalid, match="hex"):
        eip712.recover(digest, "0xzz")


def test_only_the_low_s_form_of_a_signature_is_accepted() -> None:
    """(r, n - s, v ^ 1) recovers the same signer: accepting it gave one signed command two signatures, so a
    retry check comparing them called a wallet's own retry a replay. Wallets sign low-s (EIP-2)."""
    acct = Account.create()
    message = {"member": acct.address, "nonce": 0}
    digest = eip712.digest(DOMAINS[0], "RegisterMember", message)
    signature = eip712.sign(acct, DOMAINS[0], "RegisterMember", message)
    raw = bytes.fromhex(signature.removeprefix("0x"))
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(raw[32:64])
    assert s <= n // 2 and eip712.recover(digest, signature) == acct.address
    v = raw[64] - 27 if raw[64] >= 27 else raw[64]
    twin = raw[:32] + (n - s).to_bytes(32) + bytes([27 + (v ^ 1)])
    same = coincurve.PublicKey.from_signature_and_message(twin[:64] + bytes([v ^ 1]), digest, hasher=None)
    assert same == coincurve.PublicKey.from_signature_and_message(raw[:64] + bytes([v]), digest, hasher=None)
    with pytest.raises(eip712.SignatureInvalid, match="upper half of the curve order"):
        eip712.recover(digest, "0x" + twin.hex())


def test_checksum_matches_eth_utils() -> None:
    from eth_utils import to_checksum_address

    for _ in range(20):
        address = Account.create().address.lower()
        assert eip712.to_checksum(address) == to_checksum_address(address)


def test_a_read_is_allowed_with_a_fresh_signature_by_the_member_alone() -> None:
    member, other = Account.create(), Account.create()
    domain = DOMAINS[1]
    header = eip712.read_auth(member, domain, issued_at=1_800_000_000)[eip712.READ_HEADER]
    # what a wallet's eth_signTypedData_v4 makes of the same message verifies too
    signable = encode_typed_data(full_message=eip712.typed_data(
        domain, "ReadMemberData", {"member": member.address, "issuedAt": 1_800_000_000}))
    wallet_sig = "0x" + bytes(member.sign_message(signable).signature).hex().removeprefix("0x")
    eip712.check_read(domain, member.address, header, now=1_800_000_100)
    eip712.check_read(domain, member.address.lower(), f"1800000000.{wallet_sig}", now=1_800_000_000)
    refusals = [
        (member.address, None, 1_800_000_000, "readable by that member only"),
        (member.address, "garbage", 1_800_000_000, "<issuedAt>.<signature>"),
        (member.address, header, 1_800_000_000 + eip712.READ_FRESHNESS_S + 1, "sign a fresh one"),
        (other.address, header, 1_800_000_000, f"not by member {other.address}"),
        (member.address, header.replace("1800000000.", "1800000001."), 1_800_000_000, "not by member"),
        (member.address, "1800000000.0x1234", 1_800_000_000, "bad X-Member-Auth signature"),
        (member.address, "9" * 5000 + ".0x12", 1_800_000_000, "<issuedAt>.<signature>"),  # no int() of it
    ]
    for who, header_value, now, said in refusals:
        with pytest.raises(eip712.ReadRefused, match=re.escape(said)):
            eip712.check_read(domain, who, header_value, now=now)
    with pytest.raises(eip712.ReadRefused):  # signed for another domain (another deployment)
        eip712.check_read(DOMAINS[0], member.address, header, now=1_800_000_000)


@pytest.mark.parametrize("issued_at", ["\u00b2", "1\u00b2", "\uff11\uff18", "\u0661\u0668"])
def test_an_issued_at_of_digits_other_than_ascii_is_refused_as_unsigned(issued_at: str) -> None:
    """'²' (the latin-1 byte 0xB2 of a header) is a digit to str.isdigit() and not to int(): a 401 saying how
    to sign, not a 500. Full-width and Arabic-Indic digits, which int() reads, are not unix seconds either."""
    member = Account.create()
    header_value = f"{issued_at}.0x{'11' * 65}"
    with pytest.raises(eip712.ReadRefused, match=re.escape("<issuedAt>.<signature>")):
        eip712.check_read(DOMAINS[0], member.address, header_value, now=1_800_000_000)
    with pytest.raises(Unauthorized) as refused:
        eip712.require_read(DOMAINS[0], member.address, header_value)
    assert (refused.value.status, refused.value.slug) == (401, "member-signature-required")
