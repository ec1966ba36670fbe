"""The offers file (offers.yaml beside this file, or DATACOOP_OFFERS_FILE): prices, budgets, order TTL.

Prices are read when an order is placed and written into its OrderPlaced, so a later change of the
file never changes what an existing order costs or what budget it holds.

What a version sells depends on the file and on the version itself: an offer set to
`{not_sold: "why"}` for a dataset is not sold on it, and `compute` is sold only on a version with at
least one numeric column (services.worker.column_types), since every analysis in the jobs catalog
computes on numbers. An offer that isn't sold is left out of the catalog, and ordering it is refused
(422 `offer-unavailable`) saying why and what to order instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datacoop.errors import DomainError
from datacoop.events.orders import MICRO_EPSILON, Offer
from services.worker.column_types import numeric_columns

OFFERS_FILE = Path(__file__).with_name("offers.yaml")
OFFER_KINDS: tuple[Offer, ...] = ("download", "query", "compute")


class OfferUnavailable(DomainError):
    """An order for an offer the version doesn't sell; the detail says why and what to order instead."""

    status, slug = 422, "offer-unavailable"


class OfferTerms(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    price_units: int = Field(gt=0)
    budget_epsilon: float | None = Field(None, gt=0, le=100)


class NotSold(BaseModel):
    """An offer a dataset does not sell, and why (the catalog and the refused order say it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    not_sold: str = Field(min_length=1)


class DatasetOffers(BaseModel):
    """A dataset's terms from the file; an offer set to NotSold is not sold on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order_ttl_s: float = Field(gt=0)
    download: OfferTerms | NotSold
    query: OfferTerms | NotSold
    compute: OfferTerms | NotSold

    def unavailable(self, offer: Offer, columns: Mapping[str, str] | None = None) -> str | None:
        """Why `offer` is not sold on a version with these `columns` (None: unknown, not checked), or
        None when it is."""
        terms = getattr(self, offer)
        if isinstance(terms, NotSold):
            return f"{offer} is not sold on this dataset: {terms.not_sold}"
        if offer == "compute" and columns is not None and not numeric_columns(columns):
            shown = ", ".join(f"{c} ({t})" for c, t in sorted(columns.items())[:12]) or "none"
            return (f"compute is not sold on this version: it has no numeric column for an analysis to run on "
                    f"(its columns: {shown})")
        return None

    def sold(self, columns: Mapping[str, str] | None = None) -> list[Offer]:
        return [kind for kind in OFFER_KINDS if self.unavailable(kind, columns) is None]

    def terms(self, offer: Offer, columns: Mapping[str, str] | None = None) -> OfferTerms:
        """The terms of `offer`; OfferUnavailable (422) when it isn't sold here."""
        why = self.unavailable(offer, columns)
        if why is not None:
            others = [kind for kind in self.sold(columns) if kind != offer]
            instead = (f"order {' or '.join(others)} on it instead" if others else "nothing is sold on it") + \
                (", or compute on a version with numeric columns (see `datacoop catalog`)" if offer == "compute"
                 else "")
            raise OfferUnavailable(f"{why}; {instead}")
        terms: OfferTerms = getattr(self, offer)
        return terms

    def budget_micro(self) -> int:
        epsilon = self.query.budget_epsilon if isinstance(self.query, OfferTerms) else None
        return round((epsilon or 1.0) * MICRO_EPSILON)

    def as_list(self, columns: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The offers sold on a version with these `columns` (None: not checked against columns)."""
        out = []
        for kind in self.sold(columns):
            entry: dict[str, Any] = {"offer": kind, "price_units": self.terms(kind).price_units,
                                     "order_ttl_s": self.order_ttl_s}
            if kind == "query":
                entry["budget_epsilon"] = self.budget_micro() / MICRO_EPSILON
            out.append(entry)
        return out


@dataclass(frozen=True)
class VersionOffers:
    """What one published version sells: its dataset's terms checked against its `columns`. Has what
    the marketplace API reads from DatasetOffers (`as_list`, `terms`, `order_ttl_s`, `budget_micro`)."""

    dataset_id: str
    version: int
    columns: Mapping[str, str] | None
    dataset: DatasetOffers

    @property
    def order_ttl_s(self) -> float:
        return self.dataset.order_ttl_s

    def budget_micro(self) -> int:
        return self.dataset.budget_micro()

    def as_list(self) -> list[dict[str, Any]]:
        return self.dataset.as_list(self.columns)

    def terms(self, offer: Offer) -> OfferTerms:
        try:
            return self.dataset.terms(offer, self.columns)
        except OfferUnavailable as exc:
            raise OfferUnavailable(f"{self.dataset_id} v{self.version}: {exc.detail}") from None


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

    def for_version(self, dataset_id: str, version: int, columns: Mapping[str, str] | None) -> VersionOffers:
        """What `dataset_id` v`version` sells, given its published `columns` (None when the version is
        not known: then only the file decides)."""
        return VersionOffers(dataset_id, version, columns, self.for_dataset(dataset_id))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`, an offer's terms field by field; a `not_sold` on either side replaces the other."""
    out = dict(base)
    for key, value in over.items():
        below = base.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and "not_sold" not in value and "not_sold" not in below:
            out[key] = {**below, **value}
        else:
            out[key] = value
    return out


def load_offers(path: Path | None = None) -> Offers:
    path = path or OFFERS_FILE
    if not path.exists():
        raise OffersError(f"offers file {path} does not exist")
    return Offers(yaml.safe_load(path.read_text()) or {})
