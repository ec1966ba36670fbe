"""Events of the payouts topic (writer: the settlement service).

Money is int base units of the stablecoin (6 decimals). Accounts are 0x addresses. Every allocation
event states its parts so a reader can check that they add up to what was split, and its model
refuses parts that do not.

Subjects: an order's payment and allocation use the order id (the UUID the marketplace gave it);
a job's fee the job id; an epoch `epoch-<n>`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, Slug, UtcTime
from datacoop.topics import PAYOUTS

HexHash = str
_HASH = r"^0x[0-9a-f]{64}$"


@event("datacoop.settlement.payment_confirmed", 1, topic=PAYOUTS)
class PaymentConfirmed(Event):
    """An `OrderPaid` log of the market contract, `confirmations` blocks deep: the order is paid.

    The marketplace grants access on it (unless a `PaymentFlagged` for the order says otherwise).
    Two times: `paid_at` is when the payment was made (its block's timestamp, the chain's clock), which
    the marketplace judges lateness by; `confirmed_at` is when settlement confirmed it (its own clock,
    later by the confirmations and any delay of the service).
    """

    order_id: str = Field(min_length=1, description="order UUID, or the raw bytes32 hex when not a UUID id")
    chain_order_id: str = Field(pattern=_HASH, description="bytes32 order id as on chain")
    buyer: Address
    amount_units: int = Field(gt=0)
    tx_hash: HexHash = Field(pattern=_HASH)
    block_number: int = Field(ge=0)
    log_index: int = Field(ge=0)
    confirmed_at: UtcTime
    paid_at: UtcTime | None = Field(None, description="timestamp of the block holding the OrderPaid log (when it "
                                                      "was paid, by the chain's clock); absent in events written "
                                                      "before it was recorded")


@event("datacoop.settlement.payment_refunded", 1, topic=PAYOUTS)
class PaymentRefunded(Event):
    """An `OrderRefunded` log of the market contract, `confirmations` blocks deep: the operator sent the
    order's payment back (`refund(orderId)`, OPERATOR_ROLE). Read from the same blocks as the payments,
    in chain order, so it always follows the order's `PaymentConfirmed` on the order's subject.

    The payment can no longer pay anything: the marketplace shows the order `refunded` and no longer
    lists the payment as owed; settlement never allocates it (one allocated before the refund is what
    stops roots from being posted, docs/payments.md "Refunds"). `refunded_at` is the timestamp of the
    block holding the log (the chain's clock)."""

    order_id: str = Field(min_length=1, description="order UUID, or the raw bytes32 hex when not a UUID id")
    chain_order_id: str = Field(pattern=_HASH, description="bytes32 order id as on chain")
    buyer: Address = Field(description="the wallet the units went back to (the one that paid)")
    amount_units: int = Field(gt=0, description="units refunded: the whole payment")
    tx_hash: HexHash = Field(pattern=_HASH, description="the refund's transaction")
    block_number: int = Field(ge=0)
    log_index: int = Field(ge=0)
    refunded_at: UtcTime


@event("datacoop.settlement.payment_flagged", 1, topic=PAYOUTS)
class PaymentFlagged(Event):
    """A payment that needs a person: the amount differs from the order's price, the order id is not
    one the marketplace could have issued, or the version sold has no contributor records left.
    `allocated` says whether it is still split (see docs/payments.md, "Flagged payments")."""

    order_id: str = Field(min_length=1)
    reason: Literal["amount-mismatch", "not-an-order-id", "no-contributors"]
    amount_units: int = Field(gt=0)
    price_units: int | None = Field(None, gt=0)
    allocated: bool
    detail: str


@event("datacoop.settlement.revenue_allocated", 1, topic=PAYOUTS)
class RevenueAllocated(Event):
    """The split of one paid order: members pro rata to their records in the version sold, the
    cooperative the fee plus every rounding remainder. sum(allocations) + cooperative_units ==
    amount_units, exactly."""

    order_id: str = Field(min_length=1)
    dataset_id: Slug
    version: int = Field(ge=1)
    amount_units: int = Field(gt=0, description="what was paid on chain (the split base)")
    fee_bps: int = Field(ge=0, le=10_000)
    fee_units: int = Field(ge=0)
    remainder_units: int = Field(ge=0, description="rounding remainders, added to the cooperative")
    cooperative: Address
    cooperative_units: int = Field(ge=0, description="fee_units + remainder_units")
    allocations: dict[Address, int] = Field(description="member account -> units")
    compute_reserve_units: int = Field(0, ge=0, description="for a compute order: held back in escrow to pay the "
                                                            "providers of its jobs (JobFeeAllocated)")

    @model_validator(mode="after")
    def _sums(self) -> RevenueAllocated:
        if self.cooperative_units != self.fee_units + self.remainder_units:
            raise ValueError("cooperative_units must equal fee_units + remainder_units")
        if any(u < 0 for u in self.allocations.values()):
            raise ValueError("allocations must be >= 0")
        if sum(self.allocations.values()) + self.cooperative_units + self.compute_reserve_units != self.amount_units:
            raise ValueError("allocations + cooperative_units + compute_reserve_units must add up to amount_units")
        return self


@event("datacoop.settlement.job_fee_allocated", 1, topic=PAYOUTS)
class JobFeeAllocated(Event):
    """A job's fee, wholly to the provider that ran it."""

    job_id: str = Field(min_length=1)
    order_id: str | None = Field(None, description="the order that paid for the job, when there is one")
    provider: Address
    fee_units: int = Field(gt=0)


@event("datacoop.settlement.epoch_prepared", 1, topic=PAYOUTS)
class EpochPrepared(Event):
    """Intent, recorded before the root goes on chain: the exact tree of `epoch`.

    `leaves` are every account's cumulative units (the tree is `StandardMerkleTree.of(leaves)`), so a
    restarted service re-sends exactly this root, and anyone can rebuild the tree and its proofs.
    """

    epoch: int = Field(ge=1)
    root: HexHash = Field(pattern=_HASH)
    total_units: int = Field(ge=0)
    accounts: int = Field(ge=1)
    leaves_hash: HexHash = Field(pattern=_HASH, description="keccak256 of the canonical leaves JSON")
    leaves: dict[Address, int]
    prepared_at: UtcTime

    @model_validator(mode="after")
    def _total(self) -> EpochPrepared:
        if sum(self.leaves.values()) != self.total_units or len(self.leaves) != self.accounts:
            raise ValueError("total_units and accounts must match the leaves")
        return self


@event("datacoop.settlement.epoch_posted", 1, topic=PAYOUTS)
class EpochPosted(Event):
    """The root of `epoch` is on chain: members can claim up to their leaf."""

    epoch: int = Field(ge=1)
    root: HexHash = Field(pattern=_HASH)
    total_units: int = Field(ge=0)
    accounts: int = Field(ge=1)
    tx_hash: HexHash = Field(pattern=_HASH)
    block_number: int = Field(ge=0)
    posted_at: UtcTime
