"""The settlement chapter of the demo: members' earnings, an epoch, a claim on chain.

    from services.settlement.demo import show_earnings_and_claim
    show_earnings_and_claim(settlement_url, rpc_url, member_keys, console)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from eth_account import Account
from rich.console import Console
from rich.table import Table
from web3 import Web3

from datacoop.chain import Contracts
from datacoop.cli.settlement import claim_with_key, fetch_payout
from datacoop.kit.settings import DEV_OPERATOR_TOKEN

USD = 1_000_000


def _usd(units: int) -> str:
    return f"{units // USD:,}.{units % USD:06d}"


def show_earnings_and_claim(settlement_url: str, rpc_url: str, member_keys: Sequence[str], console: Console,
                            *, claimers: int = 1, operator_token: str = DEV_OPERATOR_TOKEN) -> dict[str, Any]:
    """Post an epoch if there is something new (as the operator: a local stack's development token by
    default), show every member's earnings and what they can claim, then claim for the first `claimers`
    members (signed with their keys) and show their token balance.
    Returns {"epoch": …, "earnings": {address: units}, "claims": [claim results]}."""
    resp = httpx.post(f"{settlement_url}/epochs", headers={"Authorization": f"Bearer {operator_token}"}, timeout=60)
    if resp.status_code not in (200, 409):
        raise RuntimeError(f"settlement could not post an epoch: {resp.text}")
    table = Table(title="members' earnings (stablecoin base units; USD shown for reading)")
    for col in ("member", "earned", "claimable (cumulative)", "epoch", "USD"):
        table.add_column(col)
    earnings: dict[str, int] = {}
    info: dict[str, Any] = {}
    for key in member_keys:
        info = fetch_payout(settlement_url, Account.from_key(key).address)
        earnings[info["account"]] = int(info["earned_units"])
        table.add_row(info["account"], f"{int(info['earned_units']):,}", f"{int(info['cumulative_units'] or 0):,}",
                      str(info["epoch"]), _usd(int(info["earned_units"])))
    console.print(table)
    claims = []
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    for key in member_keys[:claimers]:
        result = claim_with_key(key, settlement_url, rpc_url)
        claims.append(result)
        contracts = Contracts.at(w3, info["token_address"], info["market_address"])
        balance = int(contracts.stablecoin.functions.balanceOf(result["account"]).call())
        console.print(f"{result['account']} claimed {int(result['claimed_units']):,} units on chain "
                      f"(tx {result['tx_hash']}); wallet now holds {balance:,} units ({_usd(balance)} USD)")
    return {"epoch": info.get("epoch"), "earnings": earnings, "claims": claims}
