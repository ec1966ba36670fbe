"""Small web3.py helpers for the payment contracts (MockStablecoin / a real stablecoin, DatacoopMarket).

- Artifacts come from `infra/contracts/artifacts/<Contract>.json` (built by `node infra/contracts/build.mjs`).
- Transactions are signed locally with a private key (eth-account; eth-keys uses its coincurve backend
  when coincurve is installed, which it is) and sent raw, so no node-side accounts are needed.
- A revert surfaces as `TxReverted` carrying the contract's custom error name and arguments.
- Order ids: a UUID becomes the bytes32 `uuid.bytes + 16 zero bytes` (left-aligned, reversible), so the
  order id in `OrderPaid` can be mapped back to the order without a lookup table.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "infra" / "contracts" / "artifacts"

OPERATOR_ROLE = keccak(text="OPERATOR_ROLE")
SETTLER_ROLE = keccak(text="SETTLER_ROLE")
PAUSER_ROLE = keccak(text="PAUSER_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")


class ChainError(RuntimeError):
    """A chain interaction failed; the message says what and what to do."""


LOCAL_CHAIN_ID = 31337  # anvil's (infra.local.start_chain's default)


class InsufficientFunds(ChainError):
    """The sender can't pay for gas (or the value sent)."""


LOCAL_FUND_HINT = "on the local stack, `datacoop wallet fund --key-file <key>` gives a wallet test ETH and stablecoin"


def _rpc_refusal(w3: Web3, sender: str, exc: Web3RPCError) -> ChainError:
    """A node's refusal of a transaction as a ChainError; 'insufficient funds' names the account and
    what it holds."""
    text = str(exc.message if getattr(exc, "message", None) else exc)
    if "insufficient funds" not in text.lower():
        return ChainError(f"the chain refused a transaction from {sender}: {text}")
    balance = w3.eth.get_balance(Web3.to_checksum_address(sender))
    return InsufficientFunds(f"{sender} holds {balance / 10**18:.6f} ETH, not enough to pay for gas; send it "
                             f"some ETH ({LOCAL_FUND_HINT})")


class TxReverted(ChainError):
    """A transaction (or its gas estimate) reverted; `error` is the custom error name when known."""

    def __init__(self, error: str, args: tuple[Any, ...] = (), detail: str = "") -> None:
        self.error = error
        self.error_args = args
        shown = f"{error}{args if args else ''}{' ' + detail if detail else ''}"
        super().__init__(f"transaction reverted with {shown}")


def market_mismatch(chain_url: str, market_address: str, token_address: str, timeout_s: float = 5) -> str | None:
    """What is wrong with a service's DATACOOP_MARKET_ADDRESS / DATACOOP_TOKEN_ADDRESS on the chain at
    `chain_url`, in a sentence naming the setting and the fix; None when the market contract is there and
    takes that token, or when the chain does not answer (a service starts before its chain and waits for it).
    A wrong address would otherwise show only later: payments never seen, researchers approving another token.
    An install without the contract artifacts (a copy of the code away from the repository) is said to be that,
    chain or no chain: it can't check any address, and blaming the address sent operators after the wrong thing."""
    try:
        market_abi = load_artifact("DatacoopMarket", ARTIFACTS_DIR).abi
    except ChainError:
        return (f"the contract artifact {ARTIFACTS_DIR / 'DatacoopMarket.json'} is missing: this install can't "
                "check DATACOOP_MARKET_ADDRESS or talk to the market; run `make contracts` in the repository and run "
                "the code from there (an editable install, as infra/docker/Dockerfile makes), not a copy in "
                "site-packages")
    w3 = Web3(Web3.HTTPProvider(chain_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None))
    market = Web3.to_checksum_address(market_address)
    try:
        code = w3.eth.get_code(market)
    except Exception:  # not up yet (or not reachable from here): the service's own calls will say so
        return None
    if not code:
        return (f"DATACOOP_MARKET_ADDRESS {market}: no contract there on the chain at {chain_url} (chain id "
                f"{w3.eth.chain_id}); set the address the market contract was deployed at, or DATACOOP_CHAIN_URL "
                "to the chain it was deployed on")
    try:
        takes = str(w3.eth.contract(address=market, abi=market_abi).functions.token().call())
    except Exception as exc:
        return (f"DATACOOP_MARKET_ADDRESS {market}: the contract there is not a DatacoopMarket (token() failed: "
                f"{type(exc).__name__}); set the market contract's address")
    if takes.lower() != token_address.lower():
        return (f"DATACOOP_TOKEN_ADDRESS {Web3.to_checksum_address(token_address)} is not the token of the market "
                f"at {market}, which takes {takes}; set DATACOOP_TOKEN_ADDRESS={takes}")
    return None


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def load_artifact(name: str, artifacts_dir: Path = ARTIFACTS_DIR) -> Artifact:
    path = artifacts_dir / f"{name}.json"
    if not path.exists():
        raise ChainError(f"artifact {path} is missing; run `node infra/contracts/build.mjs`")
    data = json.loads(path.read_text())
    return Artifact(name, data["abi"], data["bytecode"])


# ---------------------------------------------------------------- order ids


def order_id_from_uuid(order: uuid.UUID) -> bytes:
    """bytes32 order id: the 16 UUID bytes left-aligned, then 16 zero bytes."""
    return order.bytes + bytes(16)


def uuid_from_order_id(order_id: bytes) -> uuid.UUID:
    """Inverse of `order_id_from_uuid`; ValueError for an id that was not made from a UUID."""
    raw = bytes(order_id)
    if len(raw) != 32 or raw[16:] != bytes(16):
        raise ValueError(f"order id 0x{raw.hex()} is not a UUID id (16 trailing zero bytes expected)")
    return uuid.UUID(bytes=raw[:16])


# ---------------------------------------------------------------- sending


@functools.cache
def _known_errors() -> tuple[dict[str, Any], ...]:
    """Custom errors of every shipped artifact: a market call can revert inside the token."""
    paths = sorted(ARTIFACTS_DIR.glob("*.json"))
    return tuple(item for p in paths for item in json.loads(p.read_text())["abi"] if item["type"] == "error")


def _decode_revert(abi: Sequence[Any], data: str | bytes | None) -> TxReverted:
    raw = HexBytes(data) if data else HexBytes(b"")
    for item in [*abi, *_known_errors()]:
        if item.get("type") != "error":
            continue
        types = [i["type"] for i in item["inputs"]]
        if keccak(text=f"{item['name']}({','.join(types)})")[:4] == raw[:4]:
            return TxReverted(item["name"], tuple(abi_decode(types, bytes(raw[4:]))))
    return TxReverted("unknown error", (), f"data=0x{raw.hex()}")


def send(w3: Web3, fn: ContractFunction, key: str, *, gas: int | None = None, nonce: int | None = None,
         value: int = 0, wait: bool = True) -> TxReceipt | HexBytes:
    """Sign `fn` with `key`, send it, and (by default) wait for a successful receipt.

    Raises TxReverted (with the custom error decoded from the contract's ABI) when the call would revert
    or the mined transaction failed. Pass `gas` and `nonce` to skip the estimate and nonce look-up (bulk
    sends); with `wait=False` the transaction hash is returned instead of the receipt.
    """
    sender = Account.from_key(key).address
    params: TxParams = {"from": sender, "value": Wei(value), "chainId": w3.eth.chain_id}
    params["nonce"] = Nonce(nonce) if nonce is not None else w3.eth.get_transaction_count(sender, "pending")
    abi = fn.contract_abi
    try:
        params["gas"] = gas if gas is not None else int(fn.estimate_gas(params) * 12 // 10)
        tx = fn.build_transaction(params)
    except ContractCustomError as exc:
        raise _decode_revert(abi, exc.data if isinstance(exc.data, str) else None) from exc
    except ContractLogicError as exc:
        raise TxReverted(str(exc.message or "revert"), (), "") from exc
    except Web3RPCError as exc:
        raise _rpc_refusal(w3, sender, exc) from exc
    signed = Account.sign_transaction(tx, key)
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    except Web3RPCError as exc:
        raise _rpc_refusal(w3, sender, exc) from exc
    if not wait:
        return tx_hash
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1:
        raise TxReverted("reverted on chain", (), f"tx=0x{bytes(tx_hash).hex()}")
    return receipt


def send_receipt(w3: Web3, fn: ContractFunction, key: str, **kwargs: Any) -> TxReceipt:
    """`send` that always waits and returns the receipt (typed for callers)."""
    kwargs.pop("wait", None)
    receipt = send(w3, fn, key, wait=True, **kwargs)
    assert not isinstance(receipt, HexBytes | bytes)
    return receipt


def deploy(w3: Web3, artifact: Artifact, key: str, *args: Any) -> Contract:
    """Deploy `artifact` with constructor `args`, signed by `key`; returns the bound contract."""
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    sender = Account.from_key(key).address
    tx = factory.constructor(*args).build_transaction(
        {"from": sender, "nonce": w3.eth.get_transaction_count(sender, "pending"), "chainId": w3.eth.chain_id}
    )
    signed = Account.sign_transaction(tx, key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise ChainError(f"deploying {artifact.name} failed (tx 0x{bytes(receipt['transactionHash']).hex()})")
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


# ---------------------------------------------------------------- the pair of contracts


@dataclass(frozen=True)
class Contracts:
    """The stablecoin and the market, bound to one Web3."""

    w3: Web3
    stablecoin: Contract
    market: Contract

    @classmethod
    def deploy_local(cls, w3: Web3, admin_key: str) -> Contracts:
        """Deploy MockStablecoin and DatacoopMarket, `admin_key`'s account admin of both (local only)."""
        admin = Account.from_key(admin_key).address
        stablecoin = deploy(w3, load_artifact("MockStablecoin"), admin_key, admin)
        market = deploy(w3, load_artifact("DatacoopMarket"), admin_key, stablecoin.address, admin)
        return cls(w3, stablecoin, market)

    @classmethod
    def at(cls, w3: Web3, stablecoin_address: str, market_address: str) -> Contracts:
        """Bind to already deployed contracts (production: a real stablecoin's address)."""
        return cls(
            w3,
            w3.eth.contract(address=Web3.to_checksum_address(stablecoin_address),
                            abi=load_artifact("MockStablecoin").abi),
            w3.eth.contract(address=Web3.to_checksum_address(market_address),
                            abi=load_artifact("DatacoopMarket").abi),
        )

    def grant(self, role: bytes, account: str, admin_key: str) -> TxReceipt:
        """Grant a market role (OPERATOR_ROLE, SETTLER_ROLE, PAUSER_ROLE) to `account`."""
        return send_receipt(self.w3, self.market.functions.grantRole(role, account), admin_key)

    def sign_permit(self, owner_key: str, value_units: int, deadline: int) -> tuple[int, bytes, bytes]:
        """EIP-2612 signature letting the market pull `value_units` from the key's account; (v, r, s)."""
        owner = Account.from_key(owner_key).address
        _, name, version, chain_id, verifying_contract, _, _ = self.stablecoin.functions.eip712Domain().call()
        typed = {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "Permit",
            "domain": {"name": name, "version": version, "chainId": chain_id,
                       "verifyingContract": verifying_contract},
            "message": {"owner": owner, "spender": self.market.address, "value": value_units,
                        "nonce": self.stablecoin.functions.nonces(owner).call(), "deadline": deadline},
        }
        signed = Account.sign_message(encode_typed_data(full_message=typed), owner_key)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

    def default_deadline(self, valid_s: int = 3600) -> int:
        return int(time.time()) + valid_s


# ---------------------------------------------------------------- reading payments


@dataclass(frozen=True)
class OrderLog:
    """One log of the market contract about an order's money: its order id, the wallet, the units."""

    order_id: bytes
    buyer: str
    amount_units: int
    block_number: int
    tx_hash: str
    log_index: int


class OrderPaid(OrderLog):
    """One `OrderPaid` log: `buyer` paid `amount_units` into escrow."""


class OrderRefunded(OrderLog):
    """One `OrderRefunded` log: `amount_units` went back to `buyer`."""


_L = TypeVar("_L", bound=OrderLog)


def _order_logs(event: Any, kind: type[_L], from_block: int, to_block: int | str) -> list[_L]:
    logs = event().get_logs(from_block=from_block, to_block=to_block)
    found = [kind(bytes(log["args"]["orderId"]), log["args"]["buyer"], int(log["args"]["amount"]),
                  int(log["blockNumber"]), "0x" + bytes(log["transactionHash"]).hex(), int(log["logIndex"]))
             for log in logs]
    return sorted(found, key=lambda p: (p.block_number, p.log_index))


def order_paid_logs(market: Contract, from_block: int, to_block: int | str = "latest") -> list[OrderPaid]:
    """OrderPaid events with from_block <= block <= to_block, in chain order."""
    return _order_logs(market.events.OrderPaid, OrderPaid, from_block, to_block)


def order_refunded_logs(market: Contract, from_block: int, to_block: int | str = "latest") -> list[OrderRefunded]:
    """OrderRefunded events with from_block <= block <= to_block, in chain order."""
    return _order_logs(market.events.OrderRefunded, OrderRefunded, from_block, to_block)


# ---------------------------------------------------------------- the payout side


@dataclass(frozen=True)
class RootPostedLog:
    epoch: int
    root: bytes
    total_units: int
    tx_hash: str
    block_number: int


def root_posted_log(market: Contract, epoch: int, from_block: int = 0) -> RootPostedLog | None:
    """The `RootPosted` log of `epoch` (topic-filtered), or None when that epoch was never posted."""
    logs = market.events.RootPosted().get_logs(from_block=from_block, to_block="latest",
                                               argument_filters={"epoch": epoch})
    if not logs:
        return None
    log = logs[-1]
    return RootPostedLog(int(log["args"]["epoch"]), bytes(log["args"]["root"]), int(log["args"]["totalCumulative"]),
                         "0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"]))


# ---------------------------------------------------------------- a local chain for `datacoop up`

# anvil's standard dev accounts (mnemonic "test test … junk"); public knowledge, local chains only.
ANVIL_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
ADMIN_KEY, SETTLER_KEY, COOP_KEY, OPERATOR_KEY = ANVIL_KEYS[0], ANVIL_KEYS[1], ANVIL_KEYS[2], ANVIL_KEYS[3]


def deploy_local_stack(rpc_url: str, *, admin_key: str = ADMIN_KEY, settler_key: str = SETTLER_KEY,
                       coop_key: str = COOP_KEY, operator_key: str = OPERATOR_KEY) -> dict[str, str]:
    """Deploy MockStablecoin + DatacoopMarket on a fresh local chain and grant the roles.

    Account 0 deploys and administers (and mints the mock stablecoin), account 1 settles (SETTLER_ROLE),
    account 2 is the cooperative's payout account, account 3 handles refunds (OPERATOR_ROLE).
    Returns the environment every service reads (`DATACOOP_CHAIN_URL`, `DATACOOP_MARKET_ADDRESS`,
    `DATACOOP_TOKEN_ADDRESS`, `DATACOOP_SETTLER_KEY`, `DATACOOP_COOP_ADDRESS`, `DATACOOP_CHAIN_ID`,
    `DATACOOP_START_BLOCK` (the market's deployment block: no earlier log can concern it), plus
    `DATACOOP_ADMIN_KEY` / `DATACOOP_OPERATOR_KEY` for the demo and operators).
    """
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    if not w3.is_connected():
        raise ChainError(f"no chain answers at {rpc_url}; start anvil first")
    contracts = Contracts.deploy_local(w3, admin_key)
    deployed_at = w3.eth.block_number
    contracts.grant(SETTLER_ROLE, Account.from_key(settler_key).address, admin_key)
    contracts.grant(OPERATOR_ROLE, Account.from_key(operator_key).address, admin_key)
    return {
        "DATACOOP_CHAIN_URL": rpc_url,
        "DATACOOP_CHAIN_ID": str(w3.eth.chain_id),
        "DATACOOP_MARKET_ADDRESS": contracts.market.address,
        "DATACOOP_TOKEN_ADDRESS": contracts.stablecoin.address,
        "DATACOOP_SETTLER_KEY": settler_key,
        "DATACOOP_COOP_ADDRESS": Account.from_key(coop_key).address,
        "DATACOOP_START_BLOCK": str(deployed_at),
        "DATACOOP_ADMIN_KEY": admin_key,
        "DATACOOP_OPERATOR_KEY": operator_key,
    }


def fund_local(rpc_url: str, token: str, address: str, *, eth_wei: int, units: int,
               admin_key: str = ADMIN_KEY) -> dict[str, int]:
    """Give `address` test ETH (from the admin account) and mint it MockStablecoin units: local chains
    only (anvil's chain id, LOCAL_CHAIN_ID), where account 0 holds ETH and may mint. Returns the new balances."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    if not w3.is_connected():
        raise ChainError(f"no chain answers at {rpc_url}; is the stack up (`datacoop up`)?")
    if w3.eth.chain_id != LOCAL_CHAIN_ID:
        raise ChainError(f"chain {w3.eth.chain_id} is not a local anvil chain ({LOCAL_CHAIN_ID}): test funds "
                         "exist only there; on a real chain, buy the stablecoin and ETH for gas")
    to = Web3.to_checksum_address(address)
    admin = Account.from_key(admin_key)
    if eth_wei:
        tx = {"to": to, "value": Wei(eth_wei), "gas": 21_000, "chainId": LOCAL_CHAIN_ID, "gasPrice": w3.eth.gas_price,
              "nonce": w3.eth.get_transaction_count(admin.address, "pending")}
        tx_hash = w3.eth.send_raw_transaction(Account.sign_transaction(tx, admin_key).raw_transaction)
        if w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] != 1:
            raise ChainError(f"sending {eth_wei} wei to {to} failed on chain")
    stablecoin = w3.eth.contract(address=Web3.to_checksum_address(token), abi=load_artifact("MockStablecoin").abi)
    if units:
        send_receipt(w3, stablecoin.functions.mint(to, units), admin_key)
    return {"eth_wei": int(w3.eth.get_balance(to)), "units": int(stablecoin.functions.balanceOf(to).call())}


def pay_order(contracts: Contracts, buyer_key: str, order: uuid.UUID, amount_units: int,
              *, minter_key: str | None = None) -> TxReceipt:
    """Buy `order` for `amount_units` with `buyer_key` (mints the mock stablecoin first when
    `minter_key` is given; local chains). Approve + purchase; returns the purchase receipt. A buyer
    holding less than the price is refused before anything is sent, saying what it holds."""
    buyer = Account.from_key(buyer_key).address
    if minter_key is not None:
        send_receipt(contracts.w3, contracts.stablecoin.functions.mint(buyer, amount_units), minter_key)
    else:
        held = int(contracts.stablecoin.functions.balanceOf(buyer).call())
        if held < amount_units:
            raise ChainError(f"{buyer} holds {held:,} stablecoin units and the order costs {amount_units:,}: top "
                             f"the wallet up first ({LOCAL_FUND_HINT})")
    send_receipt(contracts.w3, contracts.stablecoin.functions.approve(contracts.market.address, amount_units),
                 buyer_key)
    return send_receipt(contracts.w3, contracts.market.functions.purchase(order_id_from_uuid(order), amount_units),
                        buyer_key)
