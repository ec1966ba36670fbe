"""The offers file (offers.yaml beside this file, or DATACOOP_OFFERS_FILE): prices, budgets, order TTL.

Prices are read when an order is placed and written into its OrderPlaced, so a later change of the
file never changes what an existing order costs or what budget it holds.

What a version sells depends on the file and on the version itself: an offer set to
`{not_sold: "why"}` for a dataset is not sold on it; `compute` is sold only on a version with at
least one numeric column and at least `compute_min_rows` rows (services.worker.column_types: every
analysis computes on numbers, and the workers refuse a version with fewer rows than any result may
rest on, DATACOOP_WORKER_MIN_GROUP_SIZE, default 10); a version with no rows sells nothing (the
download would be an empty file, every query answer noise alone). An offer that isn't sold is left
out of the catalog, and ordering it is refused (422 `offer-unavailable`) saying why and what to order
instead. An offer that is sold but will give less than a researcher may expect carries a `note` in
the catalog (a query offer on a version too small for any group-by cell to show, see `query_note`).
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
from services.worker.column_types import DEFAULT_MIN_GROUP_SIZE, numeric_columns

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

    def unavailable(self, offer: Offer, columns: Mapping[str, str] | None = None, rows: int | None = None,
                    compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE) -> str | None:
        """Why `offer` is not sold on a version with these `columns` and `rows` (None: unknown, not
        checked), or None when it is."""
        terms = getattr(self, offer)
        if isinstance(terms, NotSold):
            return f"{offer} is not sold on this dataset: {terms.not_sold}"
        if rows is not None and rows < 1:
            what = {"download": "the download would be an empty file",
                    "query": "every answer would be noise alone",
                    "compute": "no analysis can run on it"}[offer]
            return f"{offer} is not sold on this version: it has no rows, so {what}"
        if offer == "compute" and columns is not None and not numeric_columns(columns):
            shown = ", ".join(f"{c} ({t})" for c, t in sorted(columns.items())[:12]) or "none"
            return (f"compute is not sold on this version: it has no numeric column for an analysis to run on "
                    f"(its columns: {shown})")
        if offer == "compute" and rows is not None and rows < compute_min_rows:
            return (f"compute is not sold on this version: it has {rows:,} rows, fewer than the {compute_min_rows:,} "
                    "any analysis result must rest on (no individual rows are disclosed), so the jobs service "
                    "would refuse every job on it")
        return None

    def sold(self, columns: Mapping[str, str] | None = None, rows: int | None = None,
             compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE) -> list[Offer]:
        return [kind for kind in OFFER_KINDS if self.unavailable(kind, columns, rows, compute_min_rows) is None]

    def terms(self, offer: Offer, columns: Mapping[str, str] | None = None, rows: int | None = None,
              compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE) -> OfferTerms:
        """The terms of `offer`; OfferUnavailable (422) when it isn't sold here, saying why and what to do."""
        why = self.unavailable(offer, columns, rows, compute_min_rows)
        if why is not None:
            others = [kind for kind in self.sold(columns, rows, compute_min_rows) if kind != offer]
            instead = (f"order {' or '.join(others)} on it instead" if others else "nothing is sold on it") + \
                (f", or compute on a version with numeric columns and at least {compute_min_rows:,} rows (see "
                 "`datacoop catalog`)" if offer == "compute" else
                 ", or choose a version with rows (see `datacoop catalog`)" if rows is not None and rows < 1
                 else "")
            raise OfferUnavailable(f"{why}; {instead}")
        terms: OfferTerms = getattr(self, offer)
        return terms

    def budget_micro(self) -> int:
        epsilon = self.query.budget_epsilon if isinstance(self.query, OfferTerms) else None
        return round((epsilon or 1.0) * MICRO_EPSILON)

    def as_list(self, columns: Mapping[str, str] | None = None, rows: int | None = None,
                compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE,
                notes: Mapping[Offer, str] | None = None) -> list[dict[str, Any]]:
        """The offers sold on a version with these `columns` and `rows` (None: not checked), each with its
        `note` from `notes` where there is one."""
        out = []
        for kind in self.sold(columns, rows, compute_min_rows):
            entry: dict[str, Any] = {"offer": kind, "price_units": self.terms(kind).price_units,
                                     "order_ttl_s": self.order_ttl_s}
            if kind == "query":
                entry["budget_epsilon"] = self.budget_micro() / MICRO_EPSILON
            if notes and kind in notes:
                entry["note"] = notes[kind]
            out.append(entry)
        return out


def query_note(rows: int, cell_rows: float) -> str | None:
    """What a query order on a version of `rows` rows buys when a group-by cell shows only once its noisy
    count passes `cell_rows` (the partition-selection threshold of a query spending the whole budget, the
    lowest any query of the order meets): None when the version may have cells that large. Below it no
    cell can hold that many rows, so a grouped answer shows almost surely none; ungrouped ones are whole."""
    if rows >= cell_rows:
        return None
    return (f"group-by answers on this version will show few or no cells: a cell is shown only when its noisy "
            f"count passes about {cell_rows:,.0f} rows (a query spending the whole budget; more for a smaller "
            f"epsilon) and the version has {rows:,} rows in all; ungrouped aggregates (no group_by) are always "
            "answered whole")


@dataclass(frozen=True)
class VersionOffers:
    """What one published version sells: its dataset's terms checked against its `columns` and `rows`
    (None: unknown), with `compute_min_rows` the fewest rows compute is sold on and `query_cell_rows` the
    noisy count a group-by cell must pass to show (None: no group-by on it, or not known). Has what the
    marketplace API reads from DatasetOffers (`as_list`, `terms`, `order_ttl_s`, `budget_micro`)."""

    dataset_id: str
    version: int
    columns: Mapping[str, str] | None
    dataset: DatasetOffers
    rows: int | None = None
    compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE
    query_cell_rows: float | None = None

    @property
    def order_ttl_s(self) -> float:
        return self.dataset.order_ttl_s

    def budget_micro(self) -> int:
        return self.dataset.budget_micro()

    def notes(self) -> dict[Offer, str]:
        """What an offer sold here gives less of than a researcher may expect, said before they pay."""
        out: dict[Offer, str] = {}
        if self.rows is not None and self.query_cell_rows is not None:
            note = query_note(self.rows, self.query_cell_rows)
            if note is not None:
                out["query"] = note
        return out

    def as_list(self) -> list[dict[str, Any]]:
        return self.dataset.as_list(self.columns, self.rows, self.compute_min_rows, self.notes())

    def unavailable(self, offer: Offer) -> str | None:
        return self.dataset.unavailable(offer, self.columns, self.rows, self.compute_min_rows)

    def terms(self, offer: Offer) -> OfferTerms:
        try:
            return self.dataset.terms(offer, self.columns, self.rows, self.compute_min_rows)
        except OfferUnavailable as exc:
            raise OfferUnavailable(f"{self.dataset_id} v{self.version}: {exc.detail}") from None


class OffersError(ValueError):
    """The offers file is malformed; the message says where."""


class Offers:
    """The file's terms; `compute_min_rows` is the fewest rows a version needs for compute to be sold on it
    (DATACOOP_COMPUTE_MIN_ROWS, default the workers' DATACOOP_WORKER_MIN_GROUP_SIZE default)."""

    def __init__(self, raw: dict[str, Any], compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE) -> None:
        self.compute_min_rows = compute_min_rows
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

    def for_version(self, dataset_id: str, version: int, columns: Mapping[str, str] | None,
                    rows: int | None = None, query_cell_rows: float | None = None) -> VersionOffers:
        """What `dataset_id` v`version` sells, given its published `columns` and `rows` (None when the
        version is not known: then only the file decides); `query_cell_rows` as VersionOffers says."""
        return VersionOffers(dataset_id, version, columns, self.for_dataset(dataset_id), rows, self.compute_min_rows,
                             query_cell_rows)


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


def load_offers(path: Path | None = None, compute_min_rows: int = DEFAULT_MIN_GROUP_SIZE) -> Offers:
    path = path or OFFERS_FILE
    if not path.exists():
        raise OffersError(f"offers file {path} does not exist")
    return Offers(yaml.safe_load(path.read_text()) or {}, compute_min_rows)
