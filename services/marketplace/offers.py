"""The offers file (offers.yaml beside this file, or DATACOOP_OFFERS_FILE): prices, budgets, order TTL.

Prices are read when an order is placed and written into its OrderPlaced, so a later change of the
file never changes what an existing order costs or what budget it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datacoop.events.orders import MICRO_EPSILON, Offer

OFFERS_FILE = Path(__file__).with_name("offers.yaml")
OFFER_KINDS: tuple[Offer, ...] = ("download", "query", "compute")


class OfferTerms(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    price_units: int = Field(gt=0)
    budget_epsilon: float | None = Field(None, gt=0, le=100)


class DatasetOffers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_ttl_s: float = Field(gt=0)
    download: OfferTerms
    query: OfferTerms
    compute: OfferTerms

    def terms(self, offer: Offer) -> OfferTerms:
        terms: OfferTerms = getattr(self, offer)
        return terms

    def budget_micro(self) -> int:
        return round((self.query.budget_epsilon or 1.0) * MICRO_EPSILON)

    def as_list(self) -> list[dict[str, Any]]:
        out = []
        for kind in OFFER_KINDS:
            t = self.terms(kind)
            entry: dict[str, Any] = {"offer": kind, "price_units": t.price_units, "order_ttl_s": self.order_ttl_s}
            if kind == "query":
                entry["budget_epsilon"] = self.budget_micro() / MICRO_EPSILON
            out.append(entry)
        return out


class OffersError(ValueError):
    """The offers file is malformed; the message says where."""


class Offers:
    def __init__(self, raw: dict[str, Any]) -> None:
        defaults = raw.get("defaults") or {}
        self._raw_defaults = defaults
        try:
            self.defaults = DatasetOffers.model_validate(defaults)
            self.datasets = {ds: DatasetOffers.model_validate(_merge(defaults, over or {}))
                             for ds, over in (raw.get("datasets") or {}).items()}
        except ValidationError as exc:
            raise OffersError(f"offers file is invalid: {exc}") from exc

    def for_dataset(self, dataset_id: str) -> DatasetOffers:
        return self.datasets.get(dataset_id, self.defaults)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def load_offers(path: Path | None = None) -> Offers:
    path = path or OFFERS_FILE
    if not path.exists():
        raise OffersError(f"offers file {path} does not exist")
    return Offers(yaml.safe_load(path.read_text()) or {})
