"""Events of the orders topic (writer: the marketplace service).

Subjects: an order's events use the order id (a UUID; on chain the bytes32 of its bytes left-aligned);
a researcher's registration uses the researcher id. Privacy budgets are integers in micro-epsilon
(1 epsilon = 1,000,000) so a sequence of spends adds up exactly and a budget is spent to the last unit.
No event here carries query results or personal data: a spend states what was asked and what it cost.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, Sha256, Slug, UtcTime
from datacoop.topics import ORDERS

Offer = Literal["download", "query", "compute"]
MICRO_EPSILON = 1_000_000


@event("datacoop.marketplace.researcher_registered", 1, topic=ORDERS)
class ResearcherRegistered(Event):
    """A buyer account. The API key itself is shown once to the researcher and never stored: only its
    SHA-256 (the key has 256 bits of entropy, so a fast hash cannot be brute-forced)."""

    researcher_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=200)
    organisation: str = Field("", max_length=200)
    wallet: Address
    api_key_sha256: Sha256
    registered_at: UtcTime


@event("datacoop.marketplace.order_placed", 1, topic=ORDERS)
class OrderPlaced(Event):
    order_id: str = Field(min_length=1, description="UUID; on-chain as bytes32 (uuid bytes left-aligned)")
    researcher_id: str
    buyer: Address
    dataset_id: Slug
    version: int = Field(ge=1)
    offer: Offer
    price_units: int = Field(gt=0, description="stablecoin base units (6 decimals)")
    placed_at: UtcTime
    expires_at: UtcTime
    query_budget_micro: int | None = Field(None, ge=1, description="query offers: the privacy budget, "
                                                                     "micro-epsilon")


@event("datacoop.marketplace.order_paid", 1, topic=ORDERS)
class OrderPaid(Event):
    """Reaction to the settlement's PaymentConfirmed (id derived from it): access may be granted."""

    order_id: str = Field(min_length=1)
    payment_event_id: str = Field(min_length=1, description="id of the PaymentConfirmed that caused it")
    amount_units: int = Field(gt=0)
    tx_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    paid_at: UtcTime


@event("datacoop.marketplace.order_expired", 1, topic=ORDERS)
class OrderExpired(Event):
    """An order left unpaid past its expiry, as far as the marketplace knew then. A payment made later (in a
    block stamped at or after the expiry) is refused (PaymentRefused), opens nothing and is to be refunded;
    one made in time but confirmed after this event still pays the order."""

    order_id: str = Field(min_length=1)
    expired_at: UtcTime


@event("datacoop.marketplace.payment_refused", 1, topic=ORDERS)
class PaymentRefused(Event):
    """A confirmed payment that pays nothing: its order had expired or its version was superseded.
    Reaction to the PaymentConfirmed (id derived from it) when the order had expired, or its version
    was no longer on sale, as the payment arrived. No access follows; the payment is to be refunded
    to the paying wallet (see docs/marketplace.md)."""

    order_id: str = Field(min_length=1)
    payment_event_id: str = Field(min_length=1, description="id of the PaymentConfirmed that caused it")
    amount_units: int = Field(gt=0)
    tx_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    reason: Literal["order-expired", "version-superseded"]
    detail: str = Field(max_length=1000, description="what happened and what to do, for the buyer and the operator")
    refused_at: UtcTime


@event("datacoop.marketplace.access_granted", 1, topic=ORDERS)
class AccessGranted(Event):
    """A signed download grant was issued (the grant itself is a bearer token and is not logged)."""

    order_id: str = Field(min_length=1)
    grant_id: str = Field(min_length=1)
    researcher_id: str
    dataset_id: Slug
    version: int = Field(ge=1)
    granted_at: UtcTime
    expires_at: UtcTime


@event("datacoop.marketplace.access_revoked", 1, topic=ORDERS)
class AccessRevoked(Event):
    """A download grant was revoked before it expired (by its researcher or an operator): it opens
    nothing from then on."""

    order_id: str = Field(min_length=1)
    grant_id: str = Field(min_length=1)
    reason: str = Field("", max_length=500)
    revoked_at: UtcTime


@event("datacoop.marketplace.query_answered", 1, topic=ORDERS)
class QueryAnswered(Event):
    """A differentially private answer was released: `epsilon_micro` is spent from the order's budget.
    The query's shape is recorded (for audit); its answer is not."""

    order_id: str = Field(min_length=1)
    query_id: str = Field(min_length=1)
    aggregate: Literal["count", "sum", "mean", "histogram"]
    column: str | None = None
    group_by: list[str] = Field(default_factory=list)
    filters: int = Field(ge=0, description="how many filters the query had")
    mechanism: Literal["laplace"] = "laplace"
    epsilon_micro: int = Field(ge=1)
    spent_micro: int = Field(ge=1, description="the order's total spent after this answer")
    answered_at: UtcTime
