"""Events of the orders topic (writer: the marketplace service)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, Slug, UtcTime
from datacoop.topics import ORDERS

Offer = Literal["download", "query", "compute"]


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
