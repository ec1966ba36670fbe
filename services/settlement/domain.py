"""Settlement rules, pure: which events a payment, a paid order, a job fee or an epoch gives.

No I/O here: the service reads the projection and the chain, calls these, and appends what they
return. Every function is deterministic in its inputs, so a restarted service that decides again
on the same facts produces the same events (with ids derived from their causes, duplicates).

Flagged payments (docs/payments.md): a payment short of its order's price pays no order (the contract
takes one payment per order id, so it can never be topped up): it is flagged and held for a refund,
never allocated, exactly like a payment the marketplace refused; allocating it would pay members for
a sale that sold nothing, and its refund would then stop every later root. A payment above the price
does pay its order: it is flagged and allocated on the whole amount paid. A payment whose order id was
not made from a UUID cannot belong to any order: it is flagged and never allocated. Both held kinds
stay in escrow, refundable by the operator until a root settles them. A sale of a version with no
contributor records left (everyone erased) is flagged and goes wholly to the cooperative, so no money
is stranded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from datacoop.errors import Refused
from datacoop.events.payouts import (
    EpochPrepared,
    JobFeeAllocated,
    PaymentConfirmed,
    PaymentFlagged,
    PaymentRefunded,
    RevenueAllocated,
)
from datacoop.events.registry import Event
from services.settlement.allocation import Allocation, split_job_fee, split_order_revenue
from services.settlement.merkle import StandardMerkleTree, keccak256, normalize_address


class SettlementRefused(Refused):
    """An epoch the rules refuse to post (409); the message says what to do, `slug` why."""

    def __init__(self, message: str, slug: str) -> None:
        super().__init__("conflict", message)
        self.slug = slug


@dataclass(frozen=True)
class _ChainLog:
    """A log of the market contract about an order's money, where it lies in the chain."""

    chain_order_id: bytes
    buyer: str
    amount_units: int
    tx_hash: str
    block_number: int
    log_index: int


@dataclass(frozen=True)
class PaidLog(_ChainLog):
    """An OrderPaid log as read from the chain; `paid_at` is its block's timestamp (None: not read)."""

    paid_at: datetime | None = None


@dataclass(frozen=True)
class RefundedLog(_ChainLog):
    """An OrderRefunded log as read from the chain; `refunded_at` is its block's timestamp."""

    refunded_at: datetime


@dataclass(frozen=True)
class Payment:
    order_id: str
    amount_units: int
    allocatable: bool


@dataclass(frozen=True)
class Order:
    order_id: str
    dataset_id: str
    version: int
    price_units: int
    offer: str = "download"


def order_subject(chain_order_id: bytes) -> tuple[str, bool]:
    """(subject, is_uuid): the order UUID string, or the raw 0x hex when the id is not a UUID id."""
    raw = bytes(chain_order_id)
    if len(raw) == 32 and raw[16:] == bytes(16):
        return str(uuid.UUID(bytes=raw[:16])), True
    return "0x" + raw.hex(), False


def confirm_payment(log: PaidLog, already_confirmed: bool, now: datetime) -> list[Event]:
    """PaymentConfirmed for a log not yet confirmed (plus a flag when it can't be an order's): paid at
    its block's time, confirmed `now`."""
    if already_confirmed:
        return []
    subject, is_uuid = order_subject(log.chain_order_id)
    events: list[Event] = [PaymentConfirmed(
        order_id=subject, chain_order_id="0x" + bytes(log.chain_order_id).hex(), buyer=log.buyer,
        amount_units=log.amount_units, tx_hash=log.tx_hash.lower(), block_number=log.block_number,
        log_index=log.log_index, confirmed_at=now, paid_at=log.paid_at)]
    if not is_uuid:
        events.append(PaymentFlagged(
            order_id=subject, reason="not-an-order-id", amount_units=log.amount_units, price_units=None,
            allocated=False,
            detail=f"order id {subject} was not made from a UUID; no order can match it. "
                   "Refund it (OPERATOR_ROLE) before the next epoch settles it"))
    return events


def record_refund(log: RefundedLog, already_recorded: bool) -> list[Event]:
    """PaymentRefunded for a refund log not yet recorded. Recorded whatever the payment's state: an order
    allocated before it was refunded is the case the epoch's refund check refuses to post over."""
    if already_recorded:
        return []
    subject, _ = order_subject(log.chain_order_id)
    return [PaymentRefunded(
        order_id=subject, chain_order_id="0x" + bytes(log.chain_order_id).hex(), buyer=log.buyer,
        amount_units=log.amount_units, tx_hash=log.tx_hash.lower(), block_number=log.block_number,
        log_index=log.log_index, refunded_at=log.refunded_at)]


def hold_short_payment(payment: Payment, order: Order, already_flagged: bool, refunded: bool) -> list[Event]:
    """The flag of a payment short of its order's price (once; none once it is refunded): it pays no order
    and can't be topped up, so it is held for the operator's refund and never allocated."""
    if already_flagged or refunded or not payment.allocatable or payment.amount_units >= order.price_units:
        return []
    return [PaymentFlagged(
        order_id=order.order_id, reason="amount-mismatch", amount_units=payment.amount_units,
        price_units=order.price_units, allocated=False,
        detail=f"paid {payment.amount_units} units for a price of {order.price_units}: short of the price, it pays "
               "no order and can't be topped up (the contract takes one payment per order id). Refund it "
               "(`datacoop refund ORDER`, OPERATOR_ROLE) before the next epoch settles it; it is never allocated")]


def allocate_order(payment: Payment, order: Order, contributor_weights: Mapping[str, int], fee_bps: int,
                   cooperative: str, already_allocated: bool, compute_reserve_bps: int = 0) -> list[Event]:
    """The split of one paid order (once): RevenueAllocated, preceded by a flag on an overpayment. A payment
    short of the price gives nothing here, ever (`hold_short_payment`).

    A compute order holds `compute_reserve_bps` of what was paid back in escrow for the providers of
    its jobs; the rest is split as usual. So job fees are always backed by escrow, and a root never
    promises more than the contract holds."""
    if already_allocated or not payment.allocatable or payment.amount_units < order.price_units:
        return []
    events: list[Event] = []
    if payment.amount_units > order.price_units:
        events.append(PaymentFlagged(
            order_id=order.order_id, reason="amount-mismatch", amount_units=payment.amount_units,
            price_units=order.price_units, allocated=True,
            detail=f"paid {payment.amount_units} units for a price of {order.price_units}; the order is paid and "
                   "the whole amount paid is allocated"))
    reserve_units = payment.amount_units * compute_reserve_bps // 10_000 if order.offer == "compute" else 0
    base_units = payment.amount_units - reserve_units
    fee_units = base_units * fee_bps // 10_000
    if sum(contributor_weights.values()) == 0:
        events.append(PaymentFlagged(
            order_id=order.order_id, reason="no-contributors", amount_units=payment.amount_units,
            price_units=order.price_units, allocated=True,
            detail=f"version {order.version} of {order.dataset_id} has no contributor records; the whole amount "
                   "goes to the cooperative"))
        split = Allocation({}, base_units)
    else:
        split = split_order_revenue(base_units, fee_bps, contributor_weights)
    events.append(RevenueAllocated(
        order_id=order.order_id, dataset_id=order.dataset_id, version=order.version,
        amount_units=payment.amount_units, fee_bps=fee_bps, fee_units=fee_units,
        remainder_units=split.cooperative_units - fee_units, cooperative=cooperative,
        cooperative_units=split.cooperative_units, allocations=dict(split.payee_units),
        compute_reserve_units=reserve_units))
    return events


def allocate_job_fee(job_id: str, provider: str, fee_units: int, already_allocated: bool,
                     order_id: str | None = None, reserve_left_units: int | None = None) -> list[Event]:
    """A job's fee, wholly to its provider (once per job), capped by what its compute order still
    holds in reserve (`reserve_left_units`; None: no cap, for fees funded otherwise)."""
    if already_allocated:
        return []
    if reserve_left_units is not None:
        fee_units = min(fee_units, reserve_left_units)
    if fee_units <= 0:
        return []
    split = split_job_fee(fee_units, provider)
    return [JobFeeAllocated(job_id=job_id, order_id=order_id, provider=provider,
                            fee_units=split.payee_units[provider])]


# -- balances and epochs ---------------------------------------------------------------------------
def credits(event: Event) -> dict[str, int]:
    """What an allocation event adds to each account's cumulative units (lowercase addresses)."""
    out: dict[str, int] = {}

    def add(account: str, units: int) -> None:
        if units:
            key = normalize_address(account)
            out[key] = out.get(key, 0) + units

    if isinstance(event, RevenueAllocated):
        for account, units in event.allocations.items():
            add(account, units)
        add(event.cooperative, event.cooperative_units)
    elif isinstance(event, JobFeeAllocated):
        add(event.provider, event.fee_units)
    return out


def leaves_hash(leaves: Mapping[str, int]) -> str:
    canonical = json.dumps(sorted((normalize_address(a), int(u)) for a, u in leaves.items()), separators=(",", ":"))
    return "0x" + keccak256(canonical.encode()).hex()


@dataclass(frozen=True)
class EpochState:
    """What the service knows about epochs: the last prepared and whether it is on chain."""

    last_epoch: int = 0
    last_posted: bool = True
    last_total_units: int = 0
    last_posted_at: datetime | None = None


def epoch_due(state: EpochState, balances_total: int, now: datetime, since: datetime, interval_s: float,
              threshold_units: int, forced: bool) -> bool:
    """A new epoch is due when there is something new to post and it is asked for, `interval_s` has
    passed `since` (the last post, or the service's start before any), or the unposted units reach
    the threshold (0 = no threshold)."""
    if not state.last_posted or balances_total <= state.last_total_units:
        return False
    if forced:
        return True
    unposted = balances_total - state.last_total_units
    if threshold_units and unposted >= threshold_units:
        return True
    return (now - since).total_seconds() >= interval_s


def prepare_epoch(state: EpochState, balances: Mapping[str, int], now: datetime) -> tuple[EpochPrepared,
                                                                                          StandardMerkleTree]:
    """The next epoch's tree over every account's cumulative units; refuses while one is in flight."""
    if not state.last_posted:
        raise SettlementRefused(f"epoch {state.last_epoch} is prepared but not posted yet; it is posted first",
                                slug="epoch-in-flight")
    leaves = {normalize_address(a): int(u) for a, u in balances.items() if u > 0}
    if not leaves:
        raise SettlementRefused("nobody has earned anything yet; there is no tree to post", slug="nothing-to-post")
    tree = StandardMerkleTree.of(sorted(leaves.items()))
    return EpochPrepared(epoch=state.last_epoch + 1, root=tree.root_hex, total_units=tree.total_units,
                         accounts=len(leaves), leaves_hash=leaves_hash(leaves), leaves=leaves,
                         prepared_at=now), tree
