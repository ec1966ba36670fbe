"""Compute is sold only where an analysis can run: on a version with at least one numeric column
(the marketplace's offers, services/marketplace/offers.py), and the docs' job example runs on the
demo's data."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from services.marketplace.offers import Offers, OffersError, OfferUnavailable, load_offers
from services.worker.analytics import validate_job

REPO = Path(__file__).resolve().parents[3]
DEFAULTS = {"order_ttl_s": 60, "download": {"price_units": 5}, "query": {"price_units": 3, "budget_epsilon": 1.0},
            "compute": {"price_units": 2}}
STRINGS_ONLY = {"age": "string", "sex": "large_string", "education": "dictionary<values=string, indices=int32>"}


def sold(offers: list[dict[str, object]]) -> list[object]:
    return [o["offer"] for o in offers]


def test_compute_is_not_sold_on_a_version_without_numeric_columns() -> None:
    offers = Offers({"defaults": DEFAULTS})
    strings = offers.for_version("census", 2, STRINGS_ONLY)
    assert sold(strings.as_list()) == ["download", "query"]
    with pytest.raises(OfferUnavailable) as refused:
        strings.terms("compute")
    assert refused.value.status == 422 and refused.value.slug == "offer-unavailable"
    assert refused.value.detail.startswith("census v2: compute is not sold on this version: it has no numeric "
                                           "column for an analysis to run on (its columns: age (string), ")
    assert "order download or query on it instead, or compute on a version with numeric columns" in \
        refused.value.detail
    assert strings.terms("download").price_units == 5
    numbers = offers.for_version("fitness", 1, {"day": "string", "steps": "int64"})
    assert sold(numbers.as_list()) == ["download", "query", "compute"]
    assert numbers.terms("compute").price_units == 2
    assert sold(offers.for_version("unknown", 1, None).as_list()) == ["download", "query", "compute"]


def test_a_dataset_may_not_sell_an_offer_and_says_why() -> None:
    offers = Offers({"defaults": DEFAULTS, "datasets": {
        "census": {"compute": {"not_sold": "its columns are all strings"}},
        "other": {"compute": {"price_units": 9}}}})
    assert sold(offers.for_dataset("census").as_list()) == ["download", "query"]
    with pytest.raises(OfferUnavailable, match="compute is not sold on this dataset: its columns are all strings; "
                                               "order download or query on it instead"):
        offers.for_dataset("census").terms("compute")
    assert offers.for_dataset("other").terms("compute").price_units == 9
    back = Offers({"defaults": {**DEFAULTS, "compute": {"not_sold": "not yet"}},
                   "datasets": {"fitness": {"compute": {"price_units": 4}}}})
    assert back.for_dataset("fitness").terms("compute").price_units == 4
    assert sold(back.for_dataset("census").as_list()) == ["download", "query"]
    with pytest.raises(OffersError):
        Offers({"defaults": {**DEFAULTS, "compute": {"not_sold": "x", "price_units": 1}}})


def test_the_shipped_offers_sell_compute_only_on_demo_datasets_with_numbers() -> None:
    offers = load_offers()
    for string_only in ("census-demo", "adult-census", "adult-census-salary"):
        assert "compute" not in sold(offers.for_dataset(string_only).as_list()), string_only
    assert "compute" in sold(offers.for_dataset("fitness-demo").as_list())


def test_the_docs_job_example_runs_on_the_demo_fitness_data() -> None:
    """docs/jobs.md's `datacoop job submit` example names a numeric column of the demo's fitness-demo."""
    from datacoop.cli.demo import FITNESS_DATASET, fitness_definition

    docs = (REPO / "docs" / "jobs.md").read_text()
    example = re.search(r"^datacoop job submit ORDER .*$", docs, re.MULTILINE)
    assert example is not None
    words = shlex.split(example.group(0))
    analysis, params = words[4], json.loads(words[words.index("--params") + 1])
    assert f"datacoop order {FITNESS_DATASET}:compute" in docs
    published = {"integer": "int64", "float": "double"}  # what the anonymizer writes for columns passed through
    columns = fitness_definition()["columns"]
    schema = {name: published.get(spec["type"], "string") for name, spec in columns.items()
              if name not in fitness_definition()["quasi_identifiers"]}
    validate_job(analysis, params, schema, 100)
