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


NUMBERS = {"day": "string", "steps": "int64"}


def test_compute_is_not_sold_on_a_version_with_fewer_rows_than_any_result_may_rest_on() -> None:
    """The jobs service refuses every job on a version with fewer rows than the workers' minimum group size
    (default 10): compute on it would be paid for nothing, so it is not sold there."""
    from services.marketplace.settings import MarketplaceSettings
    from services.worker.analytics import JobRefused
    from services.worker.analytics.disclosure import DEFAULT_MIN_GROUP_SIZE

    assert MarketplaceSettings().compute_min_rows == DEFAULT_MIN_GROUP_SIZE == 10, "one minimum, not two"
    with pytest.raises(JobRefused, match="has 9 rows, fewer than the 10"):
        validate_job("describe", {"columns": ["steps"]}, NUMBERS, 9)
    offers = Offers({"defaults": DEFAULTS})
    tiny = offers.for_version("fitness", 3, NUMBERS, rows=3)
    assert sold(tiny.as_list()) == ["download", "query"]
    with pytest.raises(OfferUnavailable) as refused:
        tiny.terms("compute")
    assert refused.value.status == 422 and refused.value.slug == "offer-unavailable"
    assert refused.value.detail == (
        "fitness v3: compute is not sold on this version: it has 3 rows, fewer than the 10 any analysis result "
        "must rest on (no individual rows are disclosed), so the jobs service would refuse every job on it; "
        "order download or query on it instead, or compute on a version with numeric columns and at least 10 "
        "rows (see `datacoop catalog`)")
    assert sold(offers.for_version("fitness", 4, NUMBERS, rows=10).as_list()) == ["download", "query", "compute"]
    stricter = Offers({"defaults": DEFAULTS}, compute_min_rows=50)
    assert "compute" not in sold(stricter.for_version("fitness", 4, NUMBERS, rows=49).as_list())
    assert stricter.for_version("fitness", 4, NUMBERS, rows=50).terms("compute").price_units == 2


def test_a_version_without_rows_sells_nothing_and_says_so() -> None:
    empty = Offers({"defaults": DEFAULTS}).for_version("fitness", 5, NUMBERS, rows=0)
    assert empty.as_list() == []
    for offer, why in (("download", "the download would be an empty file"),
                       ("query", "every answer would be noise alone"), ("compute", "no analysis can run on it")):
        with pytest.raises(OfferUnavailable) as refused:
            empty.terms(offer)  # type: ignore[arg-type]
        assert refused.value.detail.startswith(f"fitness v5: {offer} is not sold on this version: it has no rows, "
                                               f"so {why}; nothing is sold on it"), refused.value.detail
        assert "(see `datacoop catalog`)" in refused.value.detail


def test_a_query_offer_on_a_version_too_small_for_any_group_by_cell_says_so_in_the_catalog() -> None:
    """A group-by cell shows only above the partition-selection threshold: on a version with fewer rows in
    all, grouped answers show (almost surely) nothing; the offer is still sold (ungrouped answers are
    whole) but says so before anyone pays."""
    offers = Offers({"defaults": DEFAULTS})
    small = offers.for_version("survey", 1, NUMBERS, rows=12, query_cell_rows=15.1)
    [query] = [o for o in small.as_list() if o["offer"] == "query"]
    assert query["note"].startswith("group-by answers on this version will show few or no cells: a cell is shown "
                                    "only when its noisy count passes about 15 rows")
    assert "the version has 12 rows in all" in query["note"] and "ungrouped aggregates" in query["note"]
    assert all("note" not in o for o in small.as_list() if o["offer"] != "query")
    large = offers.for_version("survey", 2, NUMBERS, rows=300, query_cell_rows=15.1)
    assert all("note" not in o for o in large.as_list())
    assert all("note" not in o for o in offers.for_version("survey", 3, NUMBERS, rows=12).as_list()), \
        "no group-by on the version: nothing to warn about"
