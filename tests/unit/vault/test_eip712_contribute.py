"""ContributeRecords (with its bytes32 contentHash) hashes as eth-account does, so wallets can sign it."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from services.consent import eip712

DOMAIN = eip712.Domain(chain_id=31337)


@settings(max_examples=30, deadline=None)
@given(content=st.binary(max_size=200), category=st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True),
       issued=st.integers(0, 2**40))
def test_contribute_digest_matches_eth_account(content: bytes, category: str, issued: int) -> None:
    acct = Account.from_key("0x" + "22" * 32)
    message = {"member": acct.address, "category": category,
               "contentHash": "0x" + hashlib.sha256(content).hexdigest(), "issuedAt": issued}
    reference = _hash_eip191_message(encode_typed_data(full_message=eip712.typed_data(DOMAIN, "ContributeRecords",
                                                                                     message)))
    assert eip712.digest(DOMAIN, "ContributeRecords", message) == reference
    as_bytes = {**message, "contentHash": hashlib.sha256(content).digest()}
    assert eip712.digest(DOMAIN, "ContributeRecords", as_bytes) == reference


def test_a_content_hash_that_is_not_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        eip712.digest(DOMAIN, "ContributeRecords", {"member": "0x" + "00" * 20, "category": "health",
                                                    "contentHash": "0x1234", "issuedAt": 1})
