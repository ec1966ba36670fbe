"""DatacoopMarket and MockStablecoin on a real anvil chain, driven through datacoop.chain."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass

import pytest
from eth_account import Account
from web3 import Web3

from datacoop.chain import (
    OPERATOR_ROLE,
    REPO_ROOT,
    SETTLER_ROLE,
    Artifact,
    Contracts,
    TxReverted,
    deploy,
    load_artifact,
    order_id_from_uuid,
    order_paid_logs,
    send,
    send_receipt,
    uuid_from_order_id,
)
from infra.local import Chain
from services.settlement.merkle import StandardMerkleTree

MNEMONIC = "test test test test test test test test test test test junk"
USD = 1_000_000  # 6 decimals

Account.enable_unaudited_hdwallet_features()


def dev_key(index: int) -> str:
    """Private key of anvil's standard dev account `index`."""
    return "0x" + Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key.hex()


ADMIN, OPERATOR, SETTLER, BUYER, MEMBER_A, MEMBER_B, STRANGER = (dev_key(i) for i in range(7))


def address(key: str) -> str:
    return str(Account.from_key(key).address)


@dataclass
class Market:
    w3: Web3
    c: Contracts

    def balance(self, key_or_address: str) -> int:
        who = address(key_or_address) if len(key_or_address) == 66 else key_or_address
        return int(self.c.stablecoin.functions.balanceOf(who).call())

    def pay(self, amount_units: int, order: uuid.UUID | None = None) -> bytes:
        order_id = order_id_from_uuid(order or uuid.uuid4())
        send(self.w3, self.c.market.functions.purchase(order_id, amount_units), BUYER)
        return order_id

    def post(self, epoch: int, tree: StandardMerkleTree, total_units: int | None = None) -> None:
        total = tree.total_units if total_units is None else total_units
        refunded = self.c.market.functions.totalRefunded().call()
        send(self.w3, self.c.market.functions.postRoot(epoch, tree.root, total, refunded), SETTLER)

    def claim(self, tree: StandardMerkleTree, account: str, caller_key: str) -> int:
        """Claim for `account`, sent by `caller_key`; returns what `account` received."""
        before = self.balance(account)
        fn = self.c.market.functions.claim(account, tree.cumulative_of(account), tree.proof(account))
        send(self.w3, fn, caller_key)
        return self.balance(account) - before


@pytest.fixture(scope="module")
def w3(chain: Chain) -> Web3:
    return Web3(Web3.HTTPProvider(chain.url))


@pytest.fixture
def m(w3: Web3) -> Market:
    """Fresh contracts per test; the buyer holds 1,000 USD and has approved the market."""
    c = Contracts.deploy_local(w3, ADMIN)
    c.grant(OPERATOR_ROLE, address(OPERATOR), ADMIN)
    c.grant(SETTLER_ROLE, address(SETTLER), ADMIN)
    send(w3, c.stablecoin.functions.mint(address(BUYER), 1_000 * USD), ADMIN)
    send(w3, c.stablecoin.functions.approve(c.market.address, 2**256 - 1), BUYER)
    return Market(w3, c)


def earnings(**units: int) -> StandardMerkleTree:
    keys = {"a": MEMBER_A, "b": MEMBER_B, "stranger": STRANGER}
    return StandardMerkleTree.of([(address(keys[name]), amount) for name, amount in units.items()])


def test_stablecoin_has_six_decimals(m: Market) -> None:
    assert m.c.stablecoin.functions.decimals().call() == 6


def test_purchase_moves_payment_into_escrow_and_emits_order_paid(m: Market) -> None:
    start = m.w3.eth.block_number
    order = uuid.uuid4()
    order_id = m.pay(25 * USD, order)
    assert m.balance(m.c.market.address) == 25 * USD
    assert m.balance(BUYER) == 975 * USD
    [log] = order_paid_logs(m.c.market, start + 1)
    assert (log.order_id, log.buyer, log.amount_units) == (order_id, address(BUYER), 25 * USD)
    assert uuid_from_order_id(log.order_id) == order


def test_order_paid_logs_are_limited_to_the_block_range(m: Market) -> None:
    first = m.pay(1 * USD)
    between = m.w3.eth.block_number
    second = m.pay(2 * USD)
    assert [p.order_id for p in order_paid_logs(m.c.market, 0, between)] == [first]
    assert [p.order_id for p in order_paid_logs(m.c.market, between + 1)] == [second]


def test_order_id_is_the_uuid_left_aligned_and_round_trips() -> None:
    order = uuid.uuid4()
    assert order_id_from_uuid(order) == order.bytes + bytes(16)
    assert uuid_from_order_id(order_id_from_uuid(order)) == order
    with pytest.raises(ValueError, match="not a UUID id"):
        uuid_from_order_id(b"\x01" * 32)


def test_an_order_can_be_paid_only_once(m: Market) -> None:
    order = uuid.uuid4()
    m.pay(5 * USD, order)
    with pytest.raises(TxReverted) as refused:
        m.pay(5 * USD, order)
    assert refused.value.error == "OrderAlreadyPaid"
    assert m.balance(m.c.market.address) == 5 * USD


def test_zero_amount_purchase_is_refused(m: Market) -> None:
    with pytest.raises(TxReverted) as refused:
        m.pay(0)
    assert refused.value.error == "ZeroAmount"


FEE_TOKEN_SOL = """
pragma solidity ^0.8.24;
contract FeeOnTransferToken {  // keeps 1 % of every transfer, as a stablecoin with its fee switched on would
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    function mint(address to, uint256 v) external { balanceOf[to] += v; }
    function approve(address s, uint256 v) external returns (bool) { allowance[msg.sender][s] = v; return true; }
    function transfer(address to, uint256 v) external returns (bool) { _move(msg.sender, to, v); return true; }
    function transferFrom(address f, address to, uint256 v) external returns (bool) {
        allowance[f][msg.sender] -= v; _move(f, to, v); return true;
    }
    function _move(address f, address to, uint256 v) private { balanceOf[f] -= v; balanceOf[to] += v - v / 100; }
}
"""


def compile_test_token() -> Artifact:
    """FeeOnTransferToken with the repo's pinned solc-js (a test double: no artifact of it is shipped)."""
    script = """
const solc = require("solc");
const input = {language: "Solidity", sources: {"t.sol": {content: process.argv[1]}},
               settings: {outputSelection: {"*": {"*": ["abi", "evm.bytecode.object"]}}}};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const c = out.contracts["t.sol"].FeeOnTransferToken;
process.stdout.write(JSON.stringify({abi: c.abi, bytecode: "0x" + c.evm.bytecode.object}));
"""
    done = subprocess.run(["node", "-e", script, FEE_TOKEN_SOL], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True, timeout=120)
    compiled = json.loads(done.stdout)
    return Artifact("FeeOnTransferToken", compiled["abi"], compiled["bytecode"])


def test_a_token_that_delivers_less_than_the_amount_is_refused(w3: Web3) -> None:
    """Escrow counts what `purchase` was asked for: were 1 % kept by the token, every root would promise 1 %
    more than the contract holds and the last claims would fail."""
    fee_token = deploy(w3, compile_test_token(), ADMIN)
    market = deploy(w3, load_artifact("DatacoopMarket"), ADMIN, fee_token.address, address(ADMIN))
    send(w3, fee_token.functions.mint(address(BUYER), 100 * USD), ADMIN)
    send(w3, fee_token.functions.approve(market.address, 100 * USD), BUYER)
    with pytest.raises(TxReverted) as refused:
        send(w3, market.functions.purchase(order_id_from_uuid(uuid.uuid4()), 100 * USD), BUYER)
    assert refused.value.error == "TransferAmountMismatch"
    assert refused.value.error_args == (100 * USD, 99 * USD)
    assert market.functions.totalPaid().call() == 0


def test_purchase_with_permit_needs_no_prior_approval(m: Market) -> None:
    payer = STRANGER
    send(m.w3, m.c.stablecoin.functions.mint(address(payer), 10 * USD), ADMIN)
    assert m.c.stablecoin.functions.allowance(address(payer), m.c.market.address).call() == 0
    deadline = m.c.default_deadline()
    v, r, s = m.c.sign_permit(payer, 10 * USD, deadline)
    order_id = order_id_from_uuid(uuid.uuid4())
    send(m.w3, m.c.market.functions.purchaseWithPermit(order_id, 10 * USD, deadline, v, r, s), payer)
    assert m.balance(payer) == 0
    assert m.balance(m.c.market.address) == 10 * USD
    buyer, status, _seq, amount = m.c.market.functions.orders(order_id).call()
    assert (buyer, status, amount) == (address(payer), 1, 10 * USD)


def test_purchase_with_a_permit_for_another_amount_is_refused(m: Market) -> None:
    payer = STRANGER
    send(m.w3, m.c.stablecoin.functions.mint(address(payer), 10 * USD), ADMIN)
    deadline = m.c.default_deadline()
    v, r, s = m.c.sign_permit(payer, 1 * USD, deadline)
    order_id = order_id_from_uuid(uuid.uuid4())
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.purchaseWithPermit(order_id, 10 * USD, deadline, v, r, s), payer)
    assert refused.value.error == "ERC20InsufficientAllowance"


def test_operator_refunds_an_unsettled_order(m: Market) -> None:
    order_id = m.pay(40 * USD)
    send(m.w3, m.c.market.functions.refund(order_id), OPERATOR)
    assert m.balance(BUYER) == 1_000 * USD
    assert m.balance(m.c.market.address) == 0
    with pytest.raises(TxReverted) as twice:
        send(m.w3, m.c.market.functions.refund(order_id), OPERATOR)
    assert twice.value.error == "OrderNotPaid"


def test_a_refunded_order_id_cannot_be_paid_again(m: Market) -> None:
    order = uuid.uuid4()
    order_id = m.pay(3 * USD, order)
    send(m.w3, m.c.market.functions.refund(order_id), OPERATOR)
    with pytest.raises(TxReverted) as refused:
        m.pay(3 * USD, order)
    assert refused.value.error == "OrderAlreadyPaid"


def test_only_an_operator_can_refund(m: Market) -> None:
    order_id = m.pay(40 * USD)
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.refund(order_id), BUYER)
    assert refused.value.error == "AccessControlUnauthorizedAccount"


def test_an_order_settled_by_a_posted_root_cannot_be_refunded(m: Market) -> None:
    settled = m.pay(10 * USD)
    m.post(1, earnings(a=6 * USD, b=4 * USD))
    later = m.pay(5 * USD)
    assert m.c.market.functions.isSettled(settled).call()
    assert not m.c.market.functions.isSettled(later).call()
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.refund(settled), OPERATOR)
    assert refused.value.error == "OrderAlreadySettled"
    send(m.w3, m.c.market.functions.refund(later), OPERATOR)
    assert m.balance(m.c.market.address) == 10 * USD


def test_member_claims_their_cumulative_earnings(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree)
    assert m.claim(tree, address(MEMBER_A), MEMBER_A) == 6 * USD
    assert m.balance(MEMBER_A) == 6 * USD
    assert m.c.market.functions.claimed(address(MEMBER_A)).call() == 6 * USD


def test_second_claim_of_the_same_cumulative_amount_pays_nothing(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree)
    m.claim(tree, address(MEMBER_A), MEMBER_A)
    assert m.claim(tree, address(MEMBER_A), MEMBER_A) == 0
    assert m.balance(MEMBER_A) == 6 * USD
    assert m.balance(m.c.market.address) == 4 * USD


def test_a_later_epoch_pays_only_the_difference(m: Market) -> None:
    m.pay(10 * USD)
    first = earnings(a=6 * USD, b=3 * USD)
    m.post(1, first)
    m.claim(first, address(MEMBER_A), MEMBER_A)
    m.pay(10 * USD)
    second = earnings(a=13 * USD, b=5 * USD)
    m.post(2, second)
    assert m.claim(second, address(MEMBER_A), MEMBER_A) == 7 * USD
    assert m.claim(second, address(MEMBER_B), MEMBER_B) == 5 * USD
    assert m.balance(MEMBER_A) == 13 * USD


def test_a_proof_for_another_amount_is_refused(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree)
    forged = m.c.market.functions.claim(address(MEMBER_A), 9 * USD, tree.proof(address(MEMBER_A)))
    with pytest.raises(TxReverted) as refused:
        send(m.w3, forged, MEMBER_A)
    assert refused.value.error == "InvalidProof"


def test_another_accounts_proof_is_refused(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree)
    stolen = m.c.market.functions.claim(address(STRANGER), 3 * USD, tree.proof(address(MEMBER_B)))
    with pytest.raises(TxReverted) as refused:
        send(m.w3, stolen, STRANGER)
    assert refused.value.error == "InvalidProof"
    assert m.balance(STRANGER) == 0


@pytest.mark.parametrize("n_accounts", [1, 2, 3, 5, 8, 13])
def test_the_contract_accepts_every_proof_of_a_standard_merkle_tree(m: Market, n_accounts: int) -> None:
    """The contract's hand-written proof check agrees with StandardMerkleTree (hence OpenZeppelin's) for
    every leaf position of trees of every shape, the single-leaf tree's empty proof included."""
    leaves = [(f"0x{7 * i + 1:040x}", 1_000 + i) for i in range(n_accounts)]
    tree = StandardMerkleTree.of(leaves)
    m.pay(tree.total_units)
    m.post(1, tree)
    for account, units in leaves:
        fn = m.c.market.functions.claim(Web3.to_checksum_address(account), units, tree.proof(account))
        assert fn.call({"from": address(STRANGER)}) == units


def test_a_tampered_proof_is_refused(m: Market) -> None:
    leaves = [(f"0x{7 * i + 1:040x}", 1_000 + i) for i in range(13)]
    tree = StandardMerkleTree.of(leaves)
    m.pay(tree.total_units)
    m.post(1, tree)
    account, units = leaves[4]
    proof = tree.proof(account)
    flipped = [[*proof[:i], bytes([proof[i][0] ^ 1]) + proof[i][1:], *proof[i + 1:]] for i in range(len(proof))]
    for bad in [*flipped, proof[:-1], [*proof, proof[-1]], proof[::-1], []]:
        fn = m.c.market.functions.claim(Web3.to_checksum_address(account), units, bad)
        with pytest.raises(TxReverted) as refused:
            send(m.w3, fn, STRANGER)
        assert refused.value.error == "InvalidProof"


def test_a_claim_made_by_someone_else_pays_the_member_only(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree)
    assert m.claim(tree, address(MEMBER_B), STRANGER) == 3 * USD
    assert m.balance(MEMBER_B) == 3 * USD
    assert m.balance(STRANGER) == 0


def test_claims_cannot_exceed_the_declared_total_of_the_root(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD, b=3 * USD)
    m.post(1, tree, total_units=7 * USD)  # a settler bug: leaves add up to 9 USD
    m.claim(tree, address(MEMBER_A), MEMBER_A)
    with pytest.raises(TxReverted) as refused:
        m.claim(tree, address(MEMBER_B), MEMBER_B)
    assert refused.value.error == "ClaimExceedsRootTotal"


def test_only_a_settler_can_post_a_root(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD)
    for key in (ADMIN, STRANGER):
        with pytest.raises(TxReverted) as refused:
            send(m.w3, m.c.market.functions.postRoot(1, tree.root, tree.total_units, 0), key)
        assert refused.value.error == "AccessControlUnauthorizedAccount"


def test_a_root_promising_more_than_escrow_holds_is_refused(m: Market) -> None:
    m.pay(10 * USD)
    with pytest.raises(TxReverted) as refused:
        m.post(1, earnings(a=6 * USD, b=5 * USD))
    assert refused.value.error == "RootExceedsEscrow"


def test_refunds_lower_what_a_root_may_promise(m: Market) -> None:
    m.pay(10 * USD)
    refunded = m.pay(5 * USD)
    send(m.w3, m.c.market.functions.refund(refunded), OPERATOR)
    with pytest.raises(TxReverted) as refused:
        m.post(1, earnings(a=11 * USD))
    assert refused.value.error == "RootExceedsEscrow"
    m.post(1, earnings(a=10 * USD))


def test_a_refund_that_lands_after_the_settlers_check_fails_the_post(m: Market) -> None:
    """The settler checks that no order its root allocates was refunded, reading `totalRefunded`, then posts.
    A refund landing in between must fail the post: escrow holding other money (a compute reserve, a payment
    not allocated yet) would otherwise let the root pay out an order whose buyer already got it back."""
    m.pay(10 * USD)  # in escrow, not in the root
    allocated = m.pay(5 * USD)
    tree = earnings(a=3 * USD, b=2 * USD)  # the split of `allocated`
    checked = m.c.market.functions.totalRefunded().call()
    send(m.w3, m.c.market.functions.refund(allocated), OPERATOR)
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.postRoot(1, tree.root, tree.total_units, checked), SETTLER)
    assert refused.value.error == "RefundsChanged"
    assert refused.value.error_args == (5 * USD, 0)
    assert m.c.market.functions.currentEpoch().call() == 0
    fresh = m.c.market.functions.totalRefunded().call()
    send(m.w3, m.c.market.functions.postRoot(1, earnings(a=6 * USD).root, 6 * USD, fresh), SETTLER)
    assert m.c.market.functions.currentEpoch().call() == 1


def test_only_a_settler_can_post_a_checked_root(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD)
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.postRoot(1, tree.root, tree.total_units, 0), STRANGER)
    assert refused.value.error == "AccessControlUnauthorizedAccount"


def test_epochs_only_move_forward(m: Market) -> None:
    m.pay(10 * USD)
    m.post(5, earnings(a=1 * USD))
    for stale in (5, 4):
        with pytest.raises(TxReverted) as refused:
            m.post(stale, earnings(a=2 * USD))
        assert refused.value.error == "EpochNotIncreasing"
    m.post(6, earnings(a=2 * USD))
    assert m.c.market.functions.currentEpoch().call() == 6


def test_the_total_promised_never_decreases(m: Market) -> None:
    m.pay(10 * USD)
    m.post(1, earnings(a=5 * USD))
    with pytest.raises(TxReverted) as refused:
        m.post(2, earnings(a=4 * USD))
    assert refused.value.error == "TotalDecreased"


def test_pause_blocks_claims_until_unpaused(m: Market) -> None:
    m.pay(10 * USD)
    tree = earnings(a=6 * USD)
    m.post(1, tree)
    send(m.w3, m.c.market.functions.pause(), ADMIN)
    with pytest.raises(TxReverted) as refused:
        m.claim(tree, address(MEMBER_A), MEMBER_A)
    assert refused.value.error == "EnforcedPause"
    with pytest.raises(TxReverted):
        m.pay(1 * USD)
    send(m.w3, m.c.market.functions.unpause(), ADMIN)
    assert m.claim(tree, address(MEMBER_A), MEMBER_A) == 6 * USD


def test_only_a_pauser_can_pause(m: Market) -> None:
    with pytest.raises(TxReverted) as refused:
        send(m.w3, m.c.market.functions.pause(), SETTLER)
    assert refused.value.error == "AccessControlUnauthorizedAccount"


def test_claim_gas_stays_within_budget_for_a_1000_member_tree(m: Market) -> None:
    """First claim into an empty wallet pays two fresh storage slots (claimed record, token balance,
    22,100 gas each) on top of the 21,000 base; a member's later claims reuse both (10-hash proofs here).
    The bounds leave room for compiler or token changes; a failure prints the gas used."""
    m.pay(100 * USD)
    others = [(f"0x{i:040x}", 1) for i in range(1, 1000)]
    first = StandardMerkleTree.of([(address(MEMBER_A), 6 * USD), *others])
    m.post(1, first)
    fn = m.c.market.functions.claim(address(MEMBER_A), 6 * USD, first.proof(address(MEMBER_A)))
    used = send_receipt(m.w3, fn, MEMBER_A)["gasUsed"]
    assert used < 95_000, f"first claim used {used:,} gas"
    second = StandardMerkleTree.of([(address(MEMBER_A), 9 * USD), *others])
    m.post(2, second)
    fn = m.c.market.functions.claim(address(MEMBER_A), 9 * USD, second.proof(address(MEMBER_A)))
    used = send_receipt(m.w3, fn, MEMBER_A)["gasUsed"]
    assert used < 61_000, f"repeat claim used {used:,} gas"
