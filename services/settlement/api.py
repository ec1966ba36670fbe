"""HTTP routes of the settlement service: payouts with proofs, epochs (and posting one on demand),
orders' payment and allocation state."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Path
from web3 import Web3

from datacoop.events.types import WalletAddress
from datacoop.kit.problems import Conflict, NotFound, NotReady, require_bearer

if TYPE_CHECKING:
    from services.settlement.service import SettlementService

AddressPath = Annotated[WalletAddress, Path(description="a wallet address")]
log = logging.getLogger("datacoop.settlement")


def _epoch_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "leaves"}


def build_router(ctx: SettlementService) -> APIRouter:
    """`ctx` is the SettlementService (projection, contracts, run_epoch, tree)."""
    router = APIRouter(tags=["payouts"])

    def ready() -> None:
        if not ctx.ready:
            raise NotReady("the settlement service is still catching up with the log; retry in a moment")

    @router.get("/payouts/{address}")
    async def payout(address: AddressPath) -> dict[str, Any]:
        """What `address` can claim: its cumulative amount in the latest posted root and the proof for
        `DatacoopMarket.claim(account, cumulative_units, proof)`; plus what it earned since (unposted)."""
        ready()
        account = Web3.to_checksum_address(address)
        key = account.lower()
        latest = ctx.projection.epoch(posted_only=True)
        cumulative, proof, epoch, root = 0, [], None, None
        if latest is not None:
            epoch, root = latest["epoch"], latest["root"]
            if key in latest["leaves"]:
                tree = ctx.tree(epoch)
                assert tree is not None
                cumulative = tree.cumulative_of(key)
                proof = ["0x" + p.hex() for p in tree.proof(key)]
        earned = ctx.projection.balance(key)
        claimed = await _claimed(account) if epoch is not None else 0  # nothing can be claimed before a root
        return {"account": account, "epoch": epoch, "root": root, "cumulative_units": cumulative, "proof": proof,
                "claimed_units": claimed,
                "claimable_units": None if claimed is None else max(0, cumulative - claimed),
                "earned_units": earned, "unposted_units": earned - cumulative,
                "market_address": ctx.contracts.market.address, "token_address": ctx.contracts.stablecoin.address}

    async def _claimed(account: str) -> int | None:
        """What `account` has claimed on chain so far (the contract's `claimed`); None when the chain does not
        answer (the rest of the payout view does not depend on it)."""
        try:
            return int(await asyncio.to_thread(ctx.quick_market.functions.claimed(account).call))
        except Exception as exc:  # a node that is down or slow: say so in the log, answer the rest
            log.warning("cannot read claimed(%s) from the market contract: %s", account, exc)
            return None

    @router.get("/epochs/latest", tags=["epochs"])
    async def latest_epoch() -> dict[str, Any]:
        """The latest epoch (prepared or posted), without its leaves."""
        row = ctx.projection.epoch()
        if row is None:
            raise NotFound("no epoch yet; one is posted when due, or ask with POST /epochs")
        return _epoch_view(row)

    @router.get("/epochs/{epoch}/tree", tags=["epochs"])
    async def epoch_tree(epoch: int) -> dict[str, Any]:
        """The epoch's tree as OpenZeppelin `StandardMerkleTree.dump()` JSON: load it with standard tooling."""
        tree = ctx.tree(epoch)
        if tree is None:
            raise NotFound(f"no epoch {epoch}; see GET /epochs/latest")
        return tree.dump()

    @router.post("/epochs", tags=["epochs"])
    async def post_epoch(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Build and post a new epoch now (or finish one in flight; operator token). 409 when nothing is
        new to post."""
        require_bearer(authorization, ctx.operator_token, what="an operator token",
                       setting="DATACOOP_SETTLEMENT_OPERATOR_TOKEN", slug="bad-operator-token")
        ready()
        row = await ctx.run_epoch(forced=True)  # a SettlementRefused is a 409 with its own slug
        if row is None:
            since = ("since the latest epoch" if ctx.projection.epoch() is not None
                     else "yet: no paid order has been allocated to members (an epoch is posted once one has)")
            raise Conflict(f"nothing new to post {since}", slug="nothing-to-post")
        return _epoch_view(row)

    @router.get("/orders/{order_id}", tags=["orders"])
    async def order(order_id: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """An order's payment, flags and allocation as settlement sees them (operator token): the allocation
        names each member of the version sold and their share, which would link wallets to pseudonyms."""
        require_bearer(authorization, ctx.operator_token, what="an operator token",
                       setting="DATACOOP_SETTLEMENT_OPERATOR_TOKEN", slug="bad-operator-token")
        ready()  # a projection still catching up would say "not allocated" of an allocated order
        view = ctx.projection.order_view(order_id)
        if view is None:
            raise NotFound(f"settlement knows nothing of order {order_id} yet (no OrderPlaced, no payment)")
        return view

    @router.get("/payments/waiting", tags=["orders"])
    async def waiting() -> list[dict[str, Any]]:
        """Payments confirmed but not allocated: their order or version is not known yet, the marketplace's
        call is awaited, or they are held for a refund (refused, short of the price, not an order id): each
        with `marketplace` saying which. A refunded payment (PaymentRefunded) is not listed: nothing of it
        is held any more."""
        return ctx.projection.waiting_payments()

    @router.get("/balances", tags=["payouts"])
    async def balances() -> dict[str, int]:
        """Every account's cumulative earnings so far (posted or not), base units."""
        return ctx.projection.balances()

    return router
