"""Describe, aggregate, histogram and correlation match NumPy / pandas / SciPy on the same data."""

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from services.worker.analytics import run_analysis

RTOL = 1e-10


def test_describe_matches_numpy_and_skips_nulls(mixed_table: pa.Table) -> None:
    result = run_analysis("describe", {"columns": ["a", "c", "flag"]}, mixed_table).result
    a = mixed_table.column("a").drop_null().to_numpy()
    stats_a = result["columns"]["a"]
    assert stats_a["count"] == 397 and stats_a["nulls"] == 3
    assert stats_a["mean"] == pytest.approx(a.mean(), rel=RTOL)
    assert stats_a["std"] == pytest.approx(a.std(ddof=1), rel=RTOL)
    assert [stats_a[q] for q in ("q25", "median", "q75")] == pytest.approx(
        np.quantile(a, [0.25, 0.5, 0.75]), rel=RTOL)
    k = result["min_group_size"]  # min and max: the means of the k most extreme values, no one row's value
    assert [stats_a["min"], stats_a["max"]] == pytest.approx([np.sort(a)[:k].mean(), np.sort(a)[-k:].mean()],
                                                             rel=RTOL)
    assert result["columns"]["flag"]["mean"] == pytest.approx(mixed_table.column("flag").to_numpy().mean())
    json.dumps(result, allow_nan=False)


def test_grouped_aggregates_match_pandas(mixed_table: pa.Table) -> None:
    functions = ["count", "sum", "mean", "min", "max", "std"]
    params = {"group_by": ["region", "flag"], "aggregates": {"a": functions, "c": ["mean"]}}
    result = run_analysis("aggregate", params, mixed_table).result
    frame = mixed_table.to_pandas()
    k = result["min_group_size"]
    expected = frame.groupby(["region", "flag"])["a"].agg(["count", "sum", "mean", "std"])
    grouped = frame.groupby(["region", "flag"])["a"]
    expected["min"] = grouped.apply(lambda v: v.dropna().nsmallest(k).mean())  # the k most extreme, averaged
    expected["max"] = grouped.apply(lambda v: v.dropna().nlargest(k).mean())
    assert len(result["keys"]) == len(expected)
    for i, key in enumerate(result["keys"]):
        row = expected.loc[tuple(key)]
        for function in ("count", "sum", "mean", "min", "max", "std"):
            assert result["aggregates"]["a"][function][i] == pytest.approx(row[function], rel=RTOL)
        assert result["aggregates"]["c"]["mean"][i] == pytest.approx(
            frame.groupby(["region", "flag"])["c"].mean().loc[tuple(key)], rel=RTOL)


def test_a_group_without_values_reports_zero_count_and_none() -> None:
    table = pa.table({"g": ["x", "x", "y"], "v": pa.array([1.0, 3.0, None])})
    params = {"group_by": ["g"], "aggregates": {"v": ["count", "min", "max", "std"]}}
    result = run_analysis("aggregate", params, table, min_group_size=1).result
    assert result["keys"] == [["x"], ["y"]]
    assert result["aggregates"]["v"] == {"count": [2, 0], "min": [1.0, None], "max": [3.0, None],
                                         "std": [pytest.approx(np.sqrt(2.0)), None]}


def test_null_group_keys_form_their_own_group() -> None:
    table = pa.table({"g": pa.array(["x", None, "x", None]), "v": [1.0, 2.0, 3.0, 4.0]})
    result = run_analysis("aggregate", {"group_by": ["g"], "aggregates": {"v": ["sum"]}}, table,
                          min_group_size=1).result
    assert dict(zip([k[0] for k in result["keys"]], result["aggregates"]["v"]["sum"], strict=True)) == {
        "x": 4.0, None: 6.0}


def test_histogram_matches_numpy_and_draws_a_png(mixed_table: pa.Table) -> None:
    outcome = run_analysis("histogram", {"column": "b", "bins": 12}, mixed_table, min_group_size=1)
    counts, edges = np.histogram(mixed_table.column("b").to_numpy(), bins=12)
    assert outcome.result["counts"] == counts.tolist()
    assert outcome.result["edges"] == pytest.approx(edges.tolist(), rel=RTOL)
    assert outcome.plot_png is not None and outcome.plot_png.startswith(b"\x89PNG")


def test_histogram_with_edges_counts_what_falls_outside() -> None:
    table = pa.table({"v": pa.array([0.5, 1.5, 2.0, 9.0, None])})
    result = run_analysis("histogram", {"column": "v", "bins": [0, 1, 2]}, table, min_group_size=1).result
    assert result["counts"] == [1, 2] and result["outside"] == 1 and result["nulls"] == 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=60),
       st.integers(1, 20))
def test_histogram_accounts_for_every_row(values: list[float | None], bins: int) -> None:
    table = pa.table({"v": pa.array(values, type=pa.float64())})
    result = run_analysis("histogram", {"column": "v", "bins": bins, "range": [-1e5, 1e5]}, table,
                          min_group_size=1).result
    assert sum(result["counts"]) + result["outside"] + result["nulls"] == len(values)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_matches_scipy(mixed_table: pa.Table, method: str) -> None:
    result = run_analysis("correlation", {"columns": ["a", "b", "c"], "method": method}, mixed_table).result
    frame = mixed_table.select(["a", "b", "c"]).to_pandas().dropna()
    assert result["rows_used"] == len(frame) and result["rows_dropped"] == 3
    reference = stats.pearsonr if method == "pearson" else stats.spearmanr
    for i, u in enumerate("abc"):
        for j, v in enumerate("abc"):
            expected = 1.0 if u == v else reference(frame[u], frame[v]).statistic
            assert result["matrix"][i][j] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_spearman_ranks_ties_by_their_average() -> None:
    table = pa.table({"u": [1, 2, 2, 3, 3, 3], "v": [6.0, 5.0, 5.0, 1.0, 2.0, 2.0]})
    result = run_analysis("correlation", {"columns": ["u", "v"], "method": "spearman"}, table,
                          min_group_size=1).result
    assert result["matrix"][0][1] == pytest.approx(stats.spearmanr([1, 2, 2, 3, 3, 3],
                                                                   [6, 5, 5, 1, 2, 2]).statistic, rel=1e-12)


def test_constant_column_has_undefined_correlation() -> None:
    table = pa.table({"u": [1.0, 2.0, 3.0], "k": [5.0, 5.0, 5.0]})
    result = run_analysis("correlation", {"columns": ["u", "k"]}, table, min_group_size=1).result
    assert result["matrix"] == [[1.0, None], [None, None]]
