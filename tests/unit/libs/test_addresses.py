"""Wallet addresses at the API edge: a worded refusal for a bad shape, EIP-55 checked when mixed-case."""

from __future__ import annotations

import random
from typing import Annotated, Any

import pytest
from eth_utils import to_checksum_address
from fastapi import FastAPI, Path
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from datacoop.events.types import Address, WalletAddress, to_checksum
from datacoop.kit import problems

CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # an EIP-55 test vector
MISTYPED = "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # one letter's case flipped
SHAPE = "must be a wallet address: 0x followed by 40 hex digits"

wallet = TypeAdapter(WalletAddress)


@pytest.mark.parametrize("address", [CHECKSUMMED, CHECKSUMMED.lower(), "0x" + CHECKSUMMED[2:].upper()])
def test_checksummed_and_single_case_addresses_are_accepted_as_sent(address: str) -> None:
    assert wallet.validate_python(address) == address


def test_a_mixed_case_address_with_a_wrong_checksum_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        wallet.validate_python(MISTYPED)
    error = caught.value.errors()[0]
    assert error["type"] == "wallet_address_checksum"
    assert "EIP-55 checksum" in error["msg"] and "copy the address" in error["msg"]


@pytest.mark.parametrize("address", ["notanaddress", CHECKSUMMED[:-1], CHECKSUMMED + "0", CHECKSUMMED + "\n",
                                     "0x" + "g" * 40])
def test_a_malformed_address_is_refused_in_words_not_as_a_regex(address: str) -> None:
    with pytest.raises(ValidationError) as caught:
        wallet.validate_python(address)
    assert caught.value.errors()[0]["msg"] == SHAPE


def test_the_published_schema_keeps_the_address_pattern() -> None:
    assert wallet.json_schema()["pattern"] == TypeAdapter(Address).json_schema()["pattern"]


def test_checksum_matches_eth_utils() -> None:
    rng = random.Random(55)
    addresses = [CHECKSUMMED.lower(), "0x" + "ab" * 20, "0x" + "0" * 40, "0x" + "f" * 40,
                 *("0x" + rng.randbytes(20).hex() for _ in range(2000))]
    for address in addresses:
        expected = to_checksum_address(address)
        assert to_checksum(address) == expected
        assert to_checksum(address[2:].upper()) == expected  # any case in, with or without 0x


@pytest.mark.parametrize("address", ["0x" + "a" * 39, "0x" + "a" * 41, "0x" + "g" * 40, "0x" + "a" * 39 + " ", ""])
def test_checksum_of_a_non_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not an address of 40 hex digits"):
        to_checksum(address)


class _Register(BaseModel):
    member: WalletAddress


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, problems.validation_error_handler)

    @app.get("/payouts/{address}")
    async def payout(address: Annotated[WalletAddress, Path(description="a wallet address")]) -> dict[str, Any]:
        return {"address": address}

    @app.post("/members")
    async def register(body: _Register) -> dict[str, Any]:
        return {"member": body.member}

    return TestClient(app)


def test_a_malformed_address_in_a_path_gets_the_worded_problem(client: TestClient) -> None:
    resp = client.get("/payouts/notanaddress")
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith(f"path.address: {SHAPE}")
    assert "String should match pattern" not in resp.text
    assert client.get(f"/payouts/{CHECKSUMMED.lower()}").json() == {"address": CHECKSUMMED.lower()}


def test_a_mistyped_address_in_a_body_is_refused_by_its_checksum(client: TestClient) -> None:
    resp = client.post("/members", json={"member": MISTYPED})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "member"
    assert "EIP-55 checksum" in resp.json()["detail"]
    assert client.post("/members", json={"member": CHECKSUMMED}).status_code == 200
