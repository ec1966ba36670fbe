"""No result discloses a row: groups, clusters, bins and columns of fewer than min_group_size rows are
refused or suppressed (and counted), and every parameter that would fail on the worker is refused up front."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from services.worker.analytics import AnalysisFailed, JobRefused, run_analysis, validate_job
from services.worker.analytics.disclosure import configured_min_group_size, min_group_size_for


def _people(n: int = 300, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    return pa.table({"age": age, "income": age * 900.0 + rng.normal(0, 5000, n),
                     "region": rng.choice(["north", "south"], n), "code": np.arange(n)})


def test_grouping_by_a_continuous_column_is_refused() -> None:
    with pytest.raises(JobRefused, match="group_by column 'income' is continuous"):
        run_analysis("aggregate", {"group_by": ["income"], "aggregates": {"age": ["mean"]}}, _people())


def test_groups_of_single_rows_are_never_returned() -> None:
    with pytest.raises(AnalysisFailed, match="every one of the 300 groups of code has fewer than 10 rows"):
        run_analysis("aggregate", {"group_by": ["code"], "aggregates": {"income": ["mean"]}}, _people())


def test_small_groups_are_suppressed_and_counted() -> None:
    age = [20] * 15 + [30] * 12 + [40] * 3 + [50]
    income = pa.array([1.0] * 15 + [2.0] * 3 + [None] * 9 + [7.0, 8.0, 9.0, 10.0])
    table = pa.table({"age": age, "income": income})
    result = run_analysis("aggregate", {"group_by": ["age"], "aggregates": {"income": ["count", "mean"]}},
                          table).result
    assert result["keys"] == [[20], [30]], "the groups of 3 and 1 rows are left out"
    assert result["aggregates"]["income"] == {"count": [15, 3], "mean": [1.0, None]}, \
        "a shown group's column with 3 values shows its count only"
    assert (result["groups_suppressed"], result["rows_suppressed"], result["min_group_size"]) == (2, 4, 10)
    big = run_analysis("aggregate", {"group_by": ["region"], "aggregates": {"income": ["mean"]}}, _people()).result
    assert big["groups_suppressed"] == 0 and len(big["keys"]) == 2


def test_kmeans_with_more_clusters_than_rows_allow_is_refused() -> None:
    with pytest.raises(JobRefused, match=r"k=300 is out of range: use 1 <= k <= 30 \(the dataset has 300 rows"):
        run_analysis("kmeans", {"columns": ["age", "income"], "k": 300}, _people())


def test_small_clusters_are_suppressed() -> None:
    x = np.concatenate([np.zeros(40), np.full(3, 1000.0)])
    table = pa.table({"u": x, "v": x})
    init = [[0.0, 0.0], [1000.0, 1000.0]]
    result = run_analysis("kmeans", {"columns": ["u", "v"], "k": 2, "init": init}, table).result
    assert result["sizes"] == [40] and result["centers"] == [[0.0, 0.0]]
    assert result["clusters_suppressed"] == 1 and result["rows_suppressed"] == 3


def test_histogram_bins_with_few_values_are_suppressed() -> None:
    table = _people()
    outcome = run_analysis("histogram", {"column": "age", "bins": 300}, table)
    result = outcome.result
    ages = np.sort(table.column("age").to_numpy().astype(float))
    low, high = ages[:10].mean(), ages[-10:].mean()  # the edges: no one row's age
    counts, _ = np.histogram(np.clip(ages, low, high), bins=300, range=(low, high))
    assert result["edges"][0] == pytest.approx(low) and result["edges"][-1] == pytest.approx(high)
    assert result["outside"] == 0, "the extremes are counted in the first and last bins"
    assert all(c is None or c == 0 or c >= 10 for c in result["counts"]) and None in result["counts"]
    assert result["bins_suppressed"] == int(((counts > 0) & (counts < 10)).sum())
    assert sum(c or 0 for c in result["counts"]) + result["rows_suppressed"] == table.num_rows
    assert outcome.plot_png is not None


def test_a_version_with_no_rows_or_too_few_is_refused_saying_so() -> None:
    with pytest.raises(JobRefused, match="the dataset version has no rows"):
        validate_job("kmeans", {"columns": ["age"], "k": 1}, {"age": "int"}, n_rows=0)
    with pytest.raises(JobRefused, match="has 5 rows, fewer than the 10"):
        validate_job("describe", {"columns": ["age"]}, {"age": "int"}, n_rows=5)


def test_a_describe_column_with_few_values_shows_counts_only() -> None:
    table = pa.table({"full": np.arange(20.0), "sparse": pa.array([1.0, 2.0] + [None] * 18)})
    result = run_analysis("describe", {"columns": ["full", "sparse"]}, table).result
    assert result["columns"]["sparse"] == {"count": 2, "nulls": 18} and result["columns_suppressed"] == ["sparse"]
    assert result["columns"]["full"]["mean"] == pytest.approx(9.5)


def test_the_minimum_is_the_operators_and_at_least_the_versions_k() -> None:
    assert configured_min_group_size({}) == 10
    assert configured_min_group_size({"DATACOOP_WORKER_MIN_GROUP_SIZE": "25"}) == 25
    with pytest.raises(ValueError, match="DATACOOP_WORKER_MIN_GROUP_SIZE='abc' is not a whole number"):
        configured_min_group_size({"DATACOOP_WORKER_MIN_GROUP_SIZE": "abc"})
    assert min_group_size_for({"k": 20}, 10) == 20 and min_group_size_for({}, 10) == 10


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("histogram", {"column": "age", "bins": 5, "range": [-1e308, 1e308]}, "must lie within"),
    ("histogram", {"column": "age", "bins": [-1e308, 1e308]}, "must lie within"),
    ("histogram", {"column": "age", "bins": 10_000, "range": [1e15, 1e15 + 1]}, "too narrow"),
    ("histogram", {"column": "age", "bins": True}, "bins"),
    ("kmeans", {"columns": ["age"], "k": 2, "tol": float("nan")}, "finite number"),
    ("kmeans", {"columns": ["age"], "k": True}, "k: Input should be a valid integer"),
])
def test_parameters_that_would_fail_on_the_worker_are_refused_up_front(name: str, params: dict,
                                                                        expected: str) -> None:
    with pytest.raises(JobRefused) as refused:
        validate_job(name, params, {"age": "int"}, n_rows=300)
    assert expected in str(refused.value)


def test_values_out_of_range_are_named_not_dropped_or_called_collinear() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=50)
    huge = pa.table({"y": u * 2, "u": np.where(np.arange(50) == 0, 1e308, u), "v": rng.normal(size=50)})
    with pytest.raises(AnalysisFailed, match="column 'u' has values out of range"):
        run_analysis("ols", {"y": "y", "x": ["u", "v"]}, huge)
    with pytest.raises(AnalysisFailed, match="column 'u' has values out of range"):
        run_analysis("kmeans", {"columns": ["u", "v"], "k": 2}, huge)


def test_a_histogram_of_extreme_values_fails_as_the_jobs_fault_and_a_plot_failure_keeps_the_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table({"v": np.array([-1e308] * 10 + [1e308] * 10 + [0.0] * 20)})
    with pytest.raises(AnalysisFailed, match="give a range or bin edges"):
        run_analysis("histogram", {"column": "v", "bins": 5}, table)
    from matplotlib.axes import Axes

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("arange: cannot compute length")

    monkeypatch.setattr(Axes, "stairs", broken)
    outcome = run_analysis("histogram", {"column": "v", "bins": 5, "range": [-1, 1]}, table)
    assert outcome.plot_png is None and outcome.result["counts"][2] == 20
    json.dumps(outcome.result, allow_nan=False)


def test_no_one_rows_value_is_reported_as_an_extreme() -> None:
    """One member's 24,867 steps was printed as describe's max, aggregate's max and a histogram's last edge."""
    steps = np.array([float(v) for v in range(1000, 1030)] + [24_867.0])  # one outlier among 31 rows
    table = pa.table({"steps": steps, "g": ["a"] * 31})
    described = run_analysis("describe", {"columns": ["steps"]}, table).result["columns"]["steps"]
    assert described["max"] == pytest.approx(np.sort(steps)[-10:].mean()) and described["max"] != 24_867.0
    assert described["min"] == pytest.approx(np.sort(steps)[:10].mean()) and described["min"] not in steps
    aggregated = run_analysis("aggregate", {"group_by": ["g"], "aggregates": {"steps": ["min", "max"]}},
                              table).result["aggregates"]["steps"]
    assert aggregated["max"] == [pytest.approx(described["max"])]
    assert aggregated["min"] == [pytest.approx(described["min"])]
    histogram = run_analysis("histogram", {"column": "steps", "bins": 3}, table).result
    assert 24_867.0 not in histogram["edges"] and 1000.0 not in histogram["edges"]
    assert sum(c or 0 for c in histogram["counts"]) + histogram["rows_suppressed"] == 31, "every row counted"
