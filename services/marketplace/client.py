"""A researcher's side: call the marketplace with an API key, pay orders on chain, stream downloads."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from datacoop.http import ApiError, check, segment

__all__ = ["ApiError", "ResearcherClient", "register_researcher"]


def register_researcher(base_url: str, name: str, wallet: str, organisation: str = "") -> dict[str, Any]:
    """POST /researchers; the answer holds the API key (shown once)."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        return dict(check(http.post("/researchers", json={"name": name, "organisation": organisation,
                                                         "wallet": wallet})))


class ResearcherClient:
    def __init__(self, base_url: str, api_key: str, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=60)
        self.http.headers["authorization"] = f"Bearer {api_key}"

    def catalog(self) -> dict[str, Any]:
        return dict(check(self.http.get("/catalog")))

    def order(self, dataset_id: str, version: int, offer: str) -> dict[str, Any]:
        return dict(check(self.http.post("/orders", json={"dataset_id": dataset_id, "version": version,
                                                          "offer": offer})))

    def current_version(self, dataset_id: str) -> int:
        """The version of `dataset_id` on sale now (the newest not superseded); LookupError if none."""
        current = [v["version"] for v in self.catalog()["versions"]
                   if v["dataset_id"] == dataset_id and v["status"] == "current"]
        if not current:
            raise LookupError(f"dataset {dataset_id} has no version on sale; see `datacoop catalog` (GET /catalog)")
        return int(max(current))

    def order_current(self, dataset_id: str, offer: str, attempts: int = 3) -> dict[str, Any]:
        """An order of the version on sale now: a version replaced between reading the catalog and placing
        the order (410) is followed to its successor."""
        for _ in range(attempts - 1):
            try:
                return self.order(dataset_id, self.current_version(dataset_id), offer)
            except ApiError as exc:
                if exc.status != 410:
                    raise
        return self.order(dataset_id, self.current_version(dataset_id), offer)

    def get_order(self, order_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/orders/{segment(order_id)}")))

    def orders(self) -> list[dict[str, Any]]:
        return list(check(self.http.get("/orders")))

    def grant(self, order_id: str, ttl_s: float | None = None) -> dict[str, Any]:
        return dict(check(self.http.post(f"/orders/{segment(order_id)}/grants", json={"ttl_s": ttl_s})))

    def revoke_grant(self, order_id: str, grant_id: str, reason: str = "") -> dict[str, Any]:
        return dict(check(self.http.post(f"/orders/{segment(order_id)}/grants/{segment(grant_id)}/revoke",
                                         json={"reason": reason})))

    def query(self, order_id: str, query: dict[str, Any]) -> dict[str, Any]:
        return dict(check(self.http.post(f"/orders/{segment(order_id)}/queries", json=query)))

    def receipt(self, order_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/orders/{segment(order_id)}/receipt")))

    def download(self, order_id: str, out: Path, on_progress: Callable[[int, int], None] | None = None,
                 grant: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask a grant, stream the Parquet to `out` (via a .part file), check its sha256."""
        grant = grant or self.grant(order_id)
        part = out.with_name(out.name + ".part")
        digest = hashlib.sha256()
        with self.http.stream("GET", grant["download"], headers={"x-access-grant": grant["grant"]}) as resp:
            if resp.status_code >= 400:
                resp.read()
                check(resp)
            total = int(resp.headers.get("content-length", 0))
            done = 0
            with part.open("wb") as fh:
                for chunk in resp.iter_bytes(1 << 16):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
            expected = resp.headers.get("x-sha256", "")
        if expected and digest.hexdigest() != expected:
            part.unlink(missing_ok=True)
            raise ApiError(502, {"detail": "the download's sha256 differs from the published one; try again"})
        part.replace(out)
        return {"path": str(out), "bytes": done, "sha256": digest.hexdigest()}


_CHAIN_STATUS = {0: "unpaid", 1: "paid", 2: "refunded"}  # DatacoopMarket.OrderStatus


def chain_order(contracts: Any, order_id: str) -> tuple[str, int, str]:
    """The market contract's record of `order_id`: (unpaid | paid | refunded, units paid, buyer)."""
    from datacoop.chain import order_id_from_uuid

    buyer, status, _seq, amount = contracts.market.functions.orders(order_id_from_uuid(uuid.UUID(order_id))).call()
    return _CHAIN_STATUS.get(int(status), f"status {status}"), int(amount), str(buyer)


def already_on_chain(order_id: str, state: str, amount: int, buyer: str, price_units: int) -> str:
    """The sentence for an order the contract already holds a payment (or refund) of: paying it again
    reverts (OrderAlreadyPaid), whoever sends it."""
    if state == "refunded":
        return (f"order {order_id} was paid on chain and refunded ({amount:,} units to {buyer}); the contract takes "
                "one payment per order: place a new order (`datacoop order`)")
    if amount < price_units:
        return (f"order {order_id} is already paid on chain ({amount:,} units from {buyer}, short of its price "
                f"{price_units:,}); the contract takes one payment per order, so it cannot be topped up: ask the "
                "operator to refund it and place a new order (`datacoop order`)")
    return (f"order {order_id} is already paid on chain ({amount:,} units from {buyer}); do not pay again: access "
            "opens once settlement confirms it (see `datacoop orders`)")


_REVERTS = {
    "ZeroAmount": "the amount to pay is 0; the order's price must be above 0 (ask the operator)",
    "AmountTooLarge": "the amount is larger than the market contract accepts; ask the operator",
    "EnforcedPause": "the market contract is paused by its operator; try again later",
    "ERC20InsufficientBalance": "the paying wallet holds too few stablecoin units; top it up first",
    "ERC20InsufficientAllowance": "the market's allowance was spent by another transaction; run `datacoop buy` again",
}


def pay(rpc_url: str, token: str, market: str, buyer_key: str, order_id: str, price_units: int) -> str:
    """Approve the market for the price and purchase the order; returns the purchase tx hash. Reads the
    order's record on chain first (an order paid there already is refused before anything is sent) and
    words a revert as a sentence; ChainError says what happened and what to do."""
    from web3 import Web3

    from datacoop.chain import ChainError, Contracts, TxReverted, pay_order

    contracts = Contracts.at(Web3(Web3.HTTPProvider(rpc_url)), token, market)
    state, amount, buyer = chain_order(contracts, order_id)
    if state != "unpaid":
        raise ChainError(already_on_chain(order_id, state, amount, buyer, price_units))
    try:
        receipt = pay_order(contracts, buyer_key, uuid.UUID(order_id), price_units)
    except TxReverted as exc:
        state, amount, buyer = chain_order(contracts, order_id)
        if state != "unpaid":  # another payment of it got in first (two `buy` at once, say)
            raise ChainError(already_on_chain(order_id, state, amount, buyer, price_units)) from exc
        raise ChainError(_REVERTS.get(exc.error, f"the market contract refused the payment ({exc})")) from exc
    return "0x" + bytes(receipt["transactionHash"]).hex()


def refund(rpc_url: str, token: str, market: str, operator_key: str, order_id: str) -> tuple[str, int, str]:
    """Return order `order_id`'s payment to the wallet that paid it (`refund(orderId)`, OPERATOR_ROLE); returns
    (tx hash, units, buyer). The contract's record is read first, so an order with nothing to refund, refunded
    already or settled by a posted epoch is refused in words before anything is sent; ChainError says why."""
    from eth_account import Account
    from web3 import Web3

    from datacoop.chain import OPERATOR_ROLE, ChainError, Contracts, TxReverted, order_id_from_uuid, send_receipt

    contracts = Contracts.at(Web3(Web3.HTTPProvider(rpc_url)), token, market)
    oid = order_id_from_uuid(uuid.UUID(order_id))
    state, amount, buyer = chain_order(contracts, order_id)
    if state == "unpaid":
        raise ChainError(f"order {order_id} has no payment on the market contract {market}: nothing to refund")
    if state == "refunded":
        raise ChainError(f"order {order_id} was refunded already ({amount:,} units to {buyer}); nothing to do")
    if contracts.market.functions.isSettled(oid).call():
        raise ChainError(f"order {order_id} is settled: a payout epoch posted after its payment counts its "
                         f"{amount:,} units, and the contract refunds no settled order (they are members' "
                         "earnings now)")
    operator = Account.from_key(operator_key).address
    if not contracts.market.functions.hasRole(OPERATOR_ROLE, operator).call():
        raise ChainError(f"{operator} does not hold OPERATOR_ROLE on the market contract {market}, so the contract "
                         "would refuse it; use the refund operator's key (on the local stack, the one `datacoop "
                         "up` granted: leave out --key-file)")
    try:
        receipt = send_receipt(contracts.w3, contracts.market.functions.refund(oid), operator_key)
    except TxReverted as exc:
        state, amount, buyer = chain_order(contracts, order_id)
        if state == "refunded":  # another refund of it got in first
            raise ChainError(f"order {order_id} was refunded already ({amount:,} units to {buyer})") from exc
        if exc.error == "OrderAlreadySettled":  # an epoch was posted meanwhile
            raise ChainError(f"order {order_id} was settled by a payout epoch posted just now; the contract "
                             "refunds no settled order") from exc
        raise ChainError(f"the market contract refused the refund ({exc})") from exc
    return "0x" + bytes(receipt["transactionHash"]).hex(), amount, buyer


def member_orders(base_url: str, private_key: str) -> list[dict[str, Any]]:
    """The paid orders of versions holding the key's member's records (`GET /members/{member}/orders`), signed as a
    read of the member's own data against the marketplace's EIP-712 domain (its `GET /eip712`)."""
    from eth_account import Account

    from services.consent import eip712

    account = Account.from_key(private_key)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        domain = eip712.fetch_domain(http)
        return list(check(http.get(f"/members/{account.address}/orders", headers=eip712.read_auth(account, domain))))
