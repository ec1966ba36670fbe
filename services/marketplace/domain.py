"""Orders, their payment, access grants and privacy budgets: the rules, pure (decide / evolve), no I/O.

An order is for one offer (download, query, compute) on one dataset version, at the price the offers
file states when it is placed. It turns paid when settlement confirms a payment of at least its
price; only a paid order opens a download grant or spends its query budget. A payment made after
its order expired, or that arrives when the order's version is no longer on sale (superseded, e.g.
after a member's revocation or erasure), pays nothing: it is refused (PaymentRefused), the order shows
it as `refund-due`, and the money is to be refunded. When a payment was made is its block's timestamp
(PaymentConfirmed.paid_at), not when the marketplace gets to it: a payment made in time pays its order
however late settlement confirms it, even after the sweeper expired the order (see `payment_late`).
Once the operator refunds the payment on chain (`refund(orderId)`; settlement records the contract's log
as PaymentRefunded), the order is `refunded` for good: the contract takes no second payment of an order
id, so it can never be paid, and a refund of a paid order closes its access too.
An order paid before its version was superseded keeps its access (versions already sold stay with
their buyers). Budgets are integers in micro-epsilon, so spends add up exactly: a query whose cost
exceeds what is left is refused whole.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from datacoop.errors import Refused
from datacoop.events.orders import (
    AccessGranted,
    AccessRevoked,
    Offer,
    OrderExpired,
    OrderPaid,
    OrderPlaced,
    PaymentRefused,
    QueryAnswered,
)
from datacoop.events.payouts import PaymentRefunded
from datacoop.events.registry import Event

OrderStatus = Literal["placed", "paid", "expired", "refund-due", "refunded"]


class OrderRefused(Refused):
    """A command the order rules refuse; `kind` maps to the API status, the message says what to do."""


@dataclass(frozen=True)
class RefusedPayment:
    """A payment that paid nothing and is to be refunded; `detail` says why and what to do."""

    payment_event_id: str
    amount_units: int
    tx_hash: str
    reason: Literal["order-expired", "version-superseded"]
    detail: str
    refused_at: datetime


@dataclass(frozen=True)
class Order:
    order_id: str
    researcher_id: str
    buyer: str
    dataset_id: str
    version: int
    offer: Offer
    price_units: int
    placed_at: datetime
    expires_at: datetime
    status: OrderStatus = "placed"
    budget_micro: int | None = None
    spent_micro: int = 0
    queries: int = 0
    grants: int = 0
    grant_ids: tuple[str, ...] = ()
    revoked_grants: tuple[str, ...] = ()
    paid_at: datetime | None = None
    paid_units: int = 0
    tx_hash: str | None = None
    expired_at: datetime | None = None
    refused_payments: tuple[RefusedPayment, ...] = ()
    refunded_at: datetime | None = None
    refunded_units: int = 0
    refunded_to: str | None = None
    refund_tx_hash: str | None = None

    @property
    def remaining_micro(self) -> int:
        return max((self.budget_micro or 0) - self.spent_micro, 0)


@dataclass(frozen=True)
class VersionInfo:
    """What the rules need to know about a dataset version."""

    dataset_id: str
    version: int
    superseded: bool


# -- commands ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaceOrder:
    researcher_id: str
    buyer: str
    offer: Offer
    price_units: int
    ttl_s: float
    budget_micro: int | None = None
    order_id: str = ""


@dataclass(frozen=True)
class ConfirmPayment:
    """A confirmed on-chain payment for the order; `version_superseded` says whether the order's version
    is no longer on sale now (the handler reads it from the projection); `paid_at` is the timestamp of
    the block holding the payment (None for a PaymentConfirmed written before settlement recorded it)."""

    order_id: str
    payment_event_id: str
    amount_units: int
    tx_hash: str
    version_superseded: bool = False
    paid_at: datetime | None = None


@dataclass(frozen=True)
class ExpireDue:
    order_id: str


@dataclass(frozen=True)
class GrantAccess:
    order_id: str
    researcher_id: str
    dataset_id: str
    version: int
    ttl_s: float
    grant_id: str


@dataclass(frozen=True)
class RevokeGrant:
    order_id: str
    researcher_id: str
    grant_id: str
    reason: str = ""


@dataclass(frozen=True)
class SpendBudget:
    order_id: str
    researcher_id: str
    query_id: str
    aggregate: Literal["count", "sum", "mean", "histogram"]
    column: str | None
    group_by: tuple[str, ...]
    filters: int
    epsilon_micro: int


def place(cmd: PlaceOrder, version: VersionInfo | None, dataset_id: str, version_no: int,
          now: datetime) -> list[Event]:
    if version is None:
        raise OrderRefused("not_found", f"dataset {dataset_id} has no published version {version_no}; "
                                        "see `datacoop catalog` (GET /catalog) for what is on sale")
    if version.superseded:
        raise OrderRefused("gone", f"{dataset_id} v{version_no} was superseded; new sales use the newest "
                                   "version (see `datacoop catalog`, GET /catalog)")
    if cmd.price_units <= 0:
        raise OrderRefused("unprocessable", f"the {cmd.offer} offer has no price; ask the operator")
    if cmd.offer == "query" and (cmd.budget_micro is None or cmd.budget_micro <= 0):
        raise OrderRefused("unprocessable", "a query order needs a positive privacy budget")
    order_id = cmd.order_id or str(uuid.uuid4())
    return [OrderPlaced(order_id=order_id, researcher_id=cmd.researcher_id, buyer=cmd.buyer,
                        dataset_id=dataset_id, version=version_no, offer=cmd.offer, price_units=cmd.price_units,
                        placed_at=now, expires_at=now + timedelta(seconds=cmd.ttl_s),
                        query_budget_micro=cmd.budget_micro if cmd.offer == "query" else None)]


def second_up(t: datetime) -> datetime:
    """`t` rounded up to the whole second: a grant signs its expiry in whole unix seconds, and the expiry told
    and stored must be that one, never a fraction after it."""
    return t if t.microsecond == 0 else t.replace(microsecond=0) + timedelta(seconds=1)


def decide(cmd: ConfirmPayment | ExpireDue | GrantAccess | RevokeGrant | SpendBudget, order: Order | None,
           now: datetime) -> list[Event]:
    """The events `cmd` causes on `order`, or OrderRefused saying why not."""
    if order is None:
        if isinstance(cmd, ConfirmPayment | ExpireDue):
            return []
        raise OrderRefused("not_found", f"no order {cmd.order_id}; list yours with `datacoop orders` (GET /orders)")
    if isinstance(cmd, ConfirmPayment):
        return _confirm_payment(cmd, order, now)
    if isinstance(cmd, ExpireDue):
        if order.status != "placed" or order.expires_at > now:
            return []
        return [OrderExpired(order_id=order.order_id, expired_at=now)]
    if cmd.researcher_id != order.researcher_id:
        raise OrderRefused("forbidden", f"order {order.order_id} belongs to another researcher")
    if isinstance(cmd, RevokeGrant):
        if cmd.grant_id not in order.grant_ids:
            raise OrderRefused("not_found", f"order {order.order_id} has no grant {cmd.grant_id}; "
                                            f"GET /orders/{order.order_id} lists its grants")
        if cmd.grant_id in order.revoked_grants:
            raise OrderRefused("conflict", f"grant {cmd.grant_id} is already revoked")
        return [AccessRevoked(order_id=order.order_id, grant_id=cmd.grant_id, reason=cmd.reason, revoked_at=now)]
    _require_paid(order)
    if isinstance(cmd, GrantAccess):
        if order.offer != "download":
            raise OrderRefused("forbidden", f"order {order.order_id} is a {order.offer} order; downloads need a "
                                            "download order")
        if (cmd.dataset_id, cmd.version) != (order.dataset_id, order.version):
            raise OrderRefused("forbidden", f"order {order.order_id} is for {order.dataset_id} v{order.version}, "
                                            f"not {cmd.dataset_id} v{cmd.version}")
        return [AccessGranted(order_id=order.order_id, grant_id=cmd.grant_id, researcher_id=order.researcher_id,
                              dataset_id=order.dataset_id, version=order.version, granted_at=now,
                              expires_at=second_up(now + timedelta(seconds=cmd.ttl_s)))]
    if order.offer != "query":
        raise OrderRefused("forbidden", f"order {order.order_id} is a {order.offer} order; queries need a "
                                        "query order")
    check_budget(order, cmd.epsilon_micro)
    return [QueryAnswered(order_id=order.order_id, query_id=cmd.query_id, aggregate=cmd.aggregate,
                          column=cmd.column, group_by=list(cmd.group_by), filters=cmd.filters,
                          epsilon_micro=cmd.epsilon_micro, spent_micro=order.spent_micro + cmd.epsilon_micro,
                          answered_at=now)]


def _confirm_payment(cmd: ConfirmPayment, order: Order, now: datetime) -> list[Event]:
    """OrderPaid, or PaymentRefused when the payment was late (`payment_late`) or its version is off sale;
    nothing for a payment already decided or short of the price (listed as unmatched). The events' own
    times (`paid_at` of OrderPaid, `refused_at`) are `now`, when the marketplace decided: access opens
    then; when the payment was made is the PaymentConfirmed's `paid_at`."""
    decided = {p.payment_event_id for p in order.refused_payments}
    if order.status in ("paid", "refunded") or cmd.payment_event_id in decided or cmd.amount_units < order.price_units:
        return []
    what = f"{order.dataset_id} v{order.version}"
    refund = (f"the payment of {cmd.amount_units} units (tx {cmd.tx_hash}) opens nothing and is to be refunded "
              "to the paying wallet by the operator")
    earlier = order.refused_payments[-1] if order.refused_payments else None
    withdrawn = order.status == "refund-due" and earlier is not None and earlier.reason == "version-superseded"
    reason: Literal["order-expired", "version-superseded"]
    if not withdrawn and payment_late(order, cmd.paid_at, now):
        reason = "order-expired"
        when = (" before its payment arrived" if cmd.paid_at is None else
                f"; its payment is in a block stamped {cmd.paid_at.isoformat()}, too late for it")
        detail = (f"order {order.order_id} expired at {order.expires_at.isoformat()}{when}; "
                  f"{refund}; place a new order for the version on sale (`datacoop order {order.dataset_id}:"
                  f"{order.offer}`, see `datacoop catalog`)")
    elif withdrawn or cmd.version_superseded:
        reason = "version-superseded"
        detail = (f"{what} was superseded (withdrawn from sale) before the payment for order {order.order_id} "
                  f"arrived; {refund}; order the current version instead (`datacoop order {order.dataset_id}:"
                  f"{order.offer}`, see `datacoop catalog`)")
    else:
        return [OrderPaid(order_id=order.order_id, payment_event_id=cmd.payment_event_id,
                          amount_units=cmd.amount_units, tx_hash=cmd.tx_hash, paid_at=now)]
    return [PaymentRefused(order_id=order.order_id, payment_event_id=cmd.payment_event_id,
                           amount_units=cmd.amount_units, tx_hash=cmd.tx_hash, reason=reason, detail=detail,
                           refused_at=now)]


def payment_late(order: Order, paid_at: datetime | None, now: datetime) -> bool:
    """Whether a payment came after its order expired.

    `paid_at` is the timestamp of the payment's block (the chain's clock), `now` the marketplace's clock
    as it handles the payment. Late takes both: the order has expired by the marketplace's clock (or was
    expired, or refused a late payment, already), and the block is stamped at or after the expiry. So a
    payment made in time is paid however long settlement or the marketplace took to get to it, and no
    payment is refused that the marketplace's clock alone would have let through (a chain whose clock runs
    ahead refuses nothing early). Block timestamps are whole seconds: the block must be stamped before
    the second the order expires in (a payment in a block of 11:59:59 is in time for an expiry at
    12:00:00.4; one of 12:00:00 is late), so a payment counted in time certainly was. A confirmation
    without `paid_at` (written before settlement recorded it) is judged by the marketplace's clock alone,
    as it always was. The chain's clock is trusted: a chain whose clock runs behind lets a payment through
    late by as much (block producers may stamp a block some seconds off; anvil stamps real time)."""
    expired = order.status in ("expired", "refund-due") or order.expires_at <= now
    if not expired or paid_at is None:
        return expired
    return paid_at >= order.expires_at.replace(microsecond=0)


def _require_paid(order: Order) -> None:
    if order.status == "refunded":
        raise OrderRefused("payment_required", refund_note(order))
    if order.refused_payments and order.status != "paid":
        raise OrderRefused("payment_required", order.refused_payments[-1].detail)
    if order.status != "paid":
        raise OrderRefused("payment_required", f"order {order.order_id} is {order.status}, not paid; pay it with "
                                               f"`datacoop buy {order.order_id}` and wait for the confirmation")


def refunded(order: Order, refunded_at: datetime, units: int, to: str, tx_hash: str) -> Order:
    """`order` once its payment went back on chain: `refunded` is final (the contract takes no second payment
    of an order id). The projection also calls it for a refund read before its OrderPlaced (the two come on
    different topics, so a rebuild may read the refund first)."""
    return replace(order, status="refunded", refunded_at=refunded_at, refunded_units=units, refunded_to=to,
                   refund_tx_hash=tx_hash)


def refund_note(order: Order) -> str:
    """What a refunded order says to its researcher."""
    return (f"the payment of order {order.order_id} ({order.refunded_units} units) was refunded to {order.refunded_to} "
            f"in tx {order.refund_tx_hash} at {order.refunded_at.isoformat() if order.refunded_at else '?'}; "
            "the order opens nothing and cannot be paid again: place a new order "
            f"(`datacoop order {order.dataset_id}:{order.offer}`, see `datacoop catalog`)")


def check_budget(order: Order, epsilon_micro: int) -> None:
    """Refuse a spend that is not positive or exceeds what is left (called before a query runs, too)."""
    if epsilon_micro <= 0:
        raise OrderRefused("unprocessable", "a query must spend a positive epsilon")
    if epsilon_micro > order.remaining_micro:
        raise OrderRefused("forbidden", f"query asks epsilon {epsilon_micro / 1e6:g} but order {order.order_id} "
                                        f"has {order.remaining_micro / 1e6:g} left of "
                                        f"{(order.budget_micro or 0) / 1e6:g}; ask with a smaller epsilon or "
                                        "place a new order")


def evolve(order: Order | None, event: Event) -> Order | None:
    """The order after `event`. Total: an event that doesn't apply leaves the order as it is."""
    if isinstance(event, OrderPlaced):
        return order or Order(event.order_id, event.researcher_id, event.buyer, event.dataset_id, event.version,
                              event.offer, event.price_units, event.placed_at, event.expires_at,
                              budget_micro=event.query_budget_micro)
    if order is None:
        return None
    if isinstance(event, PaymentRefunded):
        return refunded(order, event.refunded_at, event.amount_units, event.buyer, event.tx_hash)
    if isinstance(event, OrderPaid):  # one decided before its payment's refund reached the marketplace opens nothing
        # (the payment is still recorded, so a rebuild that reads the refund first ends in the same state)
        return replace(order, status="refunded" if order.status == "refunded" else "paid", paid_at=event.paid_at,
                       paid_units=event.amount_units, tx_hash=event.tx_hash)
    if isinstance(event, PaymentRefused):
        if any(p.payment_event_id == event.payment_event_id for p in order.refused_payments):
            return order
        refused = RefusedPayment(event.payment_event_id, event.amount_units, event.tx_hash, event.reason,
                                 event.detail, event.refused_at)
        return replace(order, status=order.status if order.status in ("paid", "refunded") else "refund-due",
                       refused_payments=(*order.refused_payments, refused))
    if isinstance(event, OrderExpired):
        return replace(order, status="expired" if order.status == "placed" else order.status,
                       expired_at=event.expired_at)
    if isinstance(event, AccessGranted):
        return replace(order, grants=order.grants + 1, grant_ids=(*order.grant_ids, event.grant_id))
    if isinstance(event, AccessRevoked):
        return replace(order, revoked_grants=(*order.revoked_grants, event.grant_id))
    if isinstance(event, QueryAnswered):
        return replace(order, spent_micro=max(order.spent_micro, event.spent_micro), queries=order.queries + 1)
    return order
