"""Payout cost: one Merkle root per epoch versus paying every member by ERC-20 transfer.

Starts its own anvil (infra.local.start_chain), deploys MockStablecoin + DatacoopMarket, and measures
on-chain gas from receipts:

- settle_gas_<n>: gas of `postRoot` for a tree of n accounts (after a warm-up epoch, so every post
  overwrites the previous root, as in production; the first-ever post is settle_gas_first_epoch);
- transfer_gas_<n>: total gas of paying the same n fresh accounts one `transfer` each (the baseline);
- claim_gas: a member's first claim from the 100,000-account tree into an empty wallet (two storage
  slots go from zero to non-zero: the member's claimed record and its token balance);
  claim_gas_repeat: the same member's claim from the next epoch's 100,000-account tree;
  claim_gas_first_funded_wallet: a first claim into a wallet that already holds the stablecoin;
- tree_build_s_100000: wall time of building the 100,000-leaf StandardMerkleTree in Python.
"""

from __future__ import annotations

import random
import time
import uuid

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from datacoop.chain import SETTLER_ROLE, Contracts, order_id_from_uuid, send, send_receipt
from infra.local import start_chain
from services.settlement.merkle import StandardMerkleTree

ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil dev account 0
SIZES = (10, 1_000, 100_000)
TRANSFER_SIZES = (10, 1_000)
ESCROW_UNITS = 10**15


def _accounts(n: int, rng: random.Random) -> list[str]:
    return ["0x" + rng.randbytes(20).hex() for _ in range(n)]


def _transfer_gas(w3: Web3, contracts: Contracts, accounts: list[str]) -> int:
    """Pay each account 1 unit with its own transfer; sends are pipelined, gas summed from receipts."""
    admin = Account.from_key(ADMIN_KEY).address
    nonce = w3.eth.get_transaction_count(admin, "pending")
    hashes = [
        send(w3, contracts.stablecoin.functions.transfer(Web3.to_checksum_address(a), 1), ADMIN_KEY,
             gas=100_000, nonce=nonce + i, wait=False)
        for i, a in enumerate(accounts)
    ]
    return sum(int(w3.eth.wait_for_transaction_receipt(h, timeout=60)["gasUsed"]) for h in hashes)


def _claim_gas(w3: Web3, contracts: Contracts, tree: StandardMerkleTree, account: str) -> int:
    """Claim for `account` (sent by the admin: anyone may claim for a member, the member is paid)."""
    fn = contracts.market.functions.claim(Web3.to_checksum_address(account), tree.cumulative_of(account),
                                          tree.proof(account))
    return int(send_receipt(w3, fn, ADMIN_KEY)["gasUsed"])


def run() -> dict[str, object]:
    rng = random.Random(31337)
    member = Account.from_key(keccak(b"datacoop benchmark member"))
    chain = start_chain()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.url))
        contracts = Contracts.deploy_local(w3, ADMIN_KEY)
        admin = Account.from_key(ADMIN_KEY).address
        contracts.grant(SETTLER_ROLE, admin, ADMIN_KEY)
        send(w3, contracts.stablecoin.functions.mint(admin, 2 * ESCROW_UNITS), ADMIN_KEY)
        send(w3, contracts.stablecoin.functions.approve(contracts.market.address, ESCROW_UNITS), ADMIN_KEY)
        escrow_order = order_id_from_uuid(uuid.uuid4())
        send(w3, contracts.market.functions.purchase(escrow_order, ESCROW_UNITS), ADMIN_KEY)

        def post(epoch: int, tree: StandardMerkleTree) -> int:
            fn = contracts.market.functions.postRoot(epoch, tree.root, tree.total_units, 0)  # nothing refunded
            return int(send_receipt(w3, fn, ADMIN_KEY)["gasUsed"])

        figures: dict[str, object] = {}
        figures["settle_gas_first_epoch"] = post(1, StandardMerkleTree.of([(member.address, 1)]))
        accounts = _accounts(max(SIZES) - 1, rng)
        trees: dict[int, StandardMerkleTree] = {}
        for epoch, n in enumerate(SIZES, start=2):
            leaves = [(member.address, 1_000 * n)] + [(a, 1_000 * n) for a in accounts[: n - 1]]
            started = time.perf_counter()
            trees[n] = StandardMerkleTree.of(leaves)
            if n == max(SIZES):
                figures["tree_build_s_100000"] = round(time.perf_counter() - started, 3)
            figures[f"settle_gas_{n}"] = post(epoch, trees[n])
        settle = [int(str(figures[f"settle_gas_{n}"])) for n in SIZES]
        figures["settle_gas_spread_pct"] = round(100 * (max(settle) - min(settle)) / min(settle), 2)

        big_leaves = [(member.address, 1_000 * max(SIZES))] + [(a, 1_000 * max(SIZES)) for a in accounts]
        figures["claim_gas"] = _claim_gas(w3, contracts, trees[max(SIZES)], member.address)
        next_epoch = StandardMerkleTree.of([(member.address, big_leaves[0][1] + 500), *big_leaves[1:]])
        post(len(SIZES) + 2, next_epoch)
        figures["claim_gas_repeat"] = _claim_gas(w3, contracts, next_epoch, member.address)

        for n in TRANSFER_SIZES:
            figures[f"transfer_gas_{n}"] = _transfer_gas(w3, contracts, [member.address, *accounts[: n - 1]])
        # accounts[0] got 1 unit by transfer above and has never claimed: a first claim, funded wallet
        figures["claim_gas_first_funded_wallet"] = _claim_gas(w3, contracts, next_epoch, accounts[0])
        return figures
    finally:
        chain.stop()
