"""Local test funds (`datacoop wallet fund`) and what a wallet without them is told, on a real anvil."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from datacoop.chain import ADMIN_KEY, ChainError, Contracts, InsufficientFunds, fund_local, send_receipt
from infra.local import REPO_ROOT, Chain
from services.marketplace.client import pay

USD = 1_000_000


@pytest.fixture(scope="module")
def contracts(chain: Chain) -> Contracts:
    return Contracts.deploy_local(Web3(Web3.HTTPProvider(chain.url)), ADMIN_KEY)


def test_a_funded_new_wallet_can_pay_an_order(chain: Chain, contracts: Contracts) -> None:
    buyer = Account.create()
    got = fund_local(chain.url, contracts.stablecoin.address, buyer.address, eth_wei=10**18, units=30 * USD)
    assert got == {"eth_wei": 10**18, "units": 30 * USD}
    escrow_before = contracts.stablecoin.functions.balanceOf(contracts.market.address).call()
    tx = pay(chain.url, contracts.stablecoin.address, contracts.market.address, buyer.key.hex(),
             str(uuid.uuid4()), 25 * USD)
    assert tx.startswith("0x")
    assert contracts.stablecoin.functions.balanceOf(buyer.address).call() == 5 * USD
    assert contracts.stablecoin.functions.balanceOf(contracts.market.address).call() == escrow_before + 25 * USD


def test_a_wallet_without_stablecoin_is_told_what_it_holds_and_how_to_fund_it(
        chain: Chain, contracts: Contracts) -> None:
    buyer = Account.create()
    with pytest.raises(ChainError) as caught:
        pay(chain.url, contracts.stablecoin.address, contracts.market.address, buyer.key.hex(),
            str(uuid.uuid4()), 25 * USD)
    message = str(caught.value)
    assert buyer.address in message and "holds 0 stablecoin units" in message and "25,000,000" in message
    assert "datacoop wallet fund" in message


def test_a_wallet_without_eth_for_gas_is_named_not_shown_a_raw_rpc_error(chain: Chain, contracts: Contracts) -> None:
    buyer = Account.create()
    fund_local(chain.url, contracts.stablecoin.address, buyer.address, eth_wei=0, units=5 * USD)
    with pytest.raises(InsufficientFunds) as caught:
        send_receipt(contracts.w3, contracts.stablecoin.functions.approve(contracts.market.address, USD),
                     buyer.key.hex())
    message = str(caught.value)
    assert buyer.address in message and "0.000000 ETH" in message and "datacoop wallet fund" in message


def _datacoop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from datacoop.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "COLUMNS": "200"})


def test_wallet_fund_command_funds_a_key_file_and_refuses_a_bad_address(
        chain: Chain, contracts: Contracts, tmp_path: Path) -> None:
    key_file = tmp_path / "w.key"
    made = _datacoop("wallet", "new", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    address = Account.from_key(key_file.read_text().strip()).address
    funded = _datacoop("wallet", "fund", "--key-file", str(key_file), "--units", "7000000", "--eth", "2",
                       "--rpc", chain.url, "--token", contracts.stablecoin.address)
    assert funded.returncode == 0, funded.stdout + funded.stderr
    assert f"{address} now holds 2.0000 ETH and 7,000,000 stablecoin units (7.00 USD)" in funded.stdout
    assert contracts.stablecoin.functions.balanceOf(address).call() == 7 * USD
    bad = _datacoop("wallet", "fund", "--address", "0x1234", "--rpc", chain.url,
                    "--token", contracts.stablecoin.address)
    assert bad.returncode != 0 and "not a wallet address" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_wallet_fund_refuses_a_mixed_case_address_whose_checksum_is_wrong(chain: Chain, contracts: Contracts) -> None:
    good = Account.create().address
    flipped = good[:2] + "".join(c.swapcase() if c.isalpha() else c for c in good[2:])  # every letter's case
    bad = _datacoop("wallet", "fund", "--address", flipped, "--rpc", chain.url, "--token", contracts.stablecoin.address)
    assert bad.returncode != 0 and "EIP-55 checksum" in bad.stdout + bad.stderr
